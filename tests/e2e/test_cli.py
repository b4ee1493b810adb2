"""The foundation's CLI end to end: info, convert, generate, chat (through a pseudo-terminal)."""

import json
import os
import pty
import random
import select
import subprocess
import sys
import time

import pytest
import torch

from llamaforge.checkpoint import load_model, save_model
from llamaforge.cli import COMMANDS, main
from llamaforge.model import ModelArgs, Transformer
from llamaforge.tokenizer import train_tokenizer

WORDS = "the cat dog sat ran on a mat big small red blue house tree and then".split()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random tiny model saved as a Meta checkpoint with a freshly trained tokenizer beside it."""
    root = tmp_path_factory.mktemp("cli")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) + f" {rng.randint(0, 999)}." for _ in range(3000)]
    tok = train_tokenizer(iter(lines), root / "tokenizer.model", vocab_size=320)
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_preset("tiny", vocab_size=tok.vocab_size, max_seq_len=128))
    save_model(model, root / "llama-2-tiny", format="meta")
    return root / "llama-2-tiny"


def test_top_level_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("info", "convert", "generate", "chat", "download"):
        assert command in out
    assert main(["no-such-command"]) == 2


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: llamaforge" in capsys.readouterr().out


def test_info(model_dir, capsys):
    assert main(["info", str(model_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "meta"
    assert info["parameters"] == ModelArgs.from_preset("tiny", vocab_size=320).num_params()
    assert main(["info", str(model_dir / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_convert_round_trip_and_llama2c(model_dir, tmp_path):
    assert main(["convert", str(model_dir), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert (tmp_path / "hf" / "tokenizer.model").exists()
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "meta"), "--to", "meta", "--shards", "2"]) == 0
    assert len(list((tmp_path / "meta").glob("consolidated.*.pth"))) == 2
    tokens = torch.randint(0, 320, (1, 16))
    with torch.no_grad():
        assert torch.allclose(load_model(model_dir)(tokens), load_model(tmp_path / "meta")(tokens), atol=1e-5)
    assert main(["convert", str(model_dir), str(tmp_path / "l2c" / "model.bin"), "--to", "llama2c"]) == 0
    assert (tmp_path / "l2c" / "tokenizer.bin").exists()


def test_generate_greedy_is_deterministic(model_dir, capsys):
    argv = ["generate", str(model_dir), "--prompt", "the cat", "--max-new-tokens", "8", "--no-stream"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == first
    assert first["prompt"] == "the cat" and first["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("units", [False, True])
def test_half_precision_on_a_cpu_without_its_units_warns_and_still_generates(model_dir, capsys, monkeypatch, units,
                                                                            dtype):
    from llamaforge import cpu_kernels

    monkeypatch.setattr(cpu_kernels, f"cpu_has_{dtype}_matmul", lambda: units)
    argv = ["generate", str(model_dir), "--prompt", "the cat", "--max-new-tokens", "4", "--no-stream", "--device", "cpu"]
    assert main([*argv, "--dtype", dtype]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["prompt"] == "the cat"
    assert (f"no {dtype} matrix units" in err and "--dtype fp32" in err) != units
    assert main(argv) == 0  # fp32: never
    assert "matrix units" not in capsys.readouterr().err


def test_inference_commands_hold_the_decode_layout_and_replies_copy_no_weights(model_dir):
    import argparse

    from llamaforge.cli import _load_for_inference
    from llamaforge.generate import SamplingParams, generate

    args = argparse.Namespace(model=str(model_dir), tokenizer=None, device="cpu", dtype="fp32", int8=False)
    model, tok = _load_for_inference(args)
    w = model.layers[0].feed_forward.w2.weight
    assert not w.is_contiguous() and w.t().is_contiguous()  # stored as the transpose of [in, out]
    pointers = [p.data_ptr() for p in model.parameters()]
    prompt = [tok.bos_id, *tok.encode("the cat")]
    held = generate(model, [prompt], SamplingParams(max_new_tokens=12))[0].tokens
    assert [p.data_ptr() for p in model.parameters()] == pointers  # no copy in, none back out
    plain = load_model(model_dir)
    assert generate(plain, [prompt], SamplingParams(max_new_tokens=12))[0].tokens == held
    assert all(p.is_contiguous() for p in plain.parameters())  # generate() alone gives the layout back


def test_generate_with_int8_weights(model_dir, capsys, monkeypatch):
    from llamaforge import quantize

    quantised = []
    monkeypatch.setattr(quantize, "quantize_int8", lambda m, real=quantize.quantize_int8: quantised.append(real(m)) or m)
    argv = ["generate", str(model_dir), "--prompt", "the cat", "--max-new-tokens", "8", "--no-stream", "--int8"]
    assert main(argv) == 0
    assert len(quantised) == 1 and isinstance(quantised[0].layers[0].attention.wq, quantize.Int8Linear)
    out = json.loads(capsys.readouterr().out)
    assert out["prompt"] == "the cat" and out["finish_reason"] in ("stop", "length") and out["completion"] is not None


def test_generate_compiled_gives_the_eager_completion_streamed_and_batched(model_dir, capsys, monkeypatch):
    from llamaforge import generate as gen

    compiled_calls = []
    real_steps = gen.generate_steps
    monkeypatch.setattr(gen, "generate_steps",
                        lambda *a, compile=False, **k: (compiled_calls.append(compile), real_steps(*a, compile=compile, **k))[1])
    base = ["generate", str(model_dir), "--prompt", "the cat", "--max-new-tokens", "8"]
    for extra in (["--no-stream"], []):  # one JSON line / streamed text
        assert main(base + extra) == 0
        eager = capsys.readouterr().out
        assert main(base + extra + ["--compile"]) == 0
        assert capsys.readouterr().out == eager
    assert compiled_calls == [False, True, False, True]


def _model_says(monkeypatch, tokens):
    """Every row of every generation yields `tokens`, then the tokenizer's EOS id."""
    from llamaforge import generate as gen

    def steps(model, prompts, params, compile=False):
        for token in tokens:
            yield torch.full((len(prompts),), token), torch.zeros(len(prompts))

    monkeypatch.setattr(gen, "generate_steps", steps)


def test_a_continuation_keeps_the_space_that_decoding_it_alone_drops(model_dir, monkeypatch):
    from llamaforge.generate import SamplingParams, decode_after, generate, stream_text
    from llamaforge.tokenizer import Tokenizer

    tok = Tokenizer(model_dir.parent / "tokenizer.model")
    prompt, more = tok.encode("the cat", bos=True, eos=False), tok.encode("sat on", bos=False, eos=False)
    assert tok.decode(more) == "sat on"  # SentencePiece drops the first piece's space
    assert decode_after(tok, prompt[-1:], more) == " sat on"
    _model_says(monkeypatch, more + [tok.eos_id])
    model = load_model(model_dir)
    assert generate(model, [prompt], tokenizer=tok)[0].text == "sat on"
    assert generate(model, [prompt], tokenizer=tok, continuation=True)[0].text == " sat on"
    assert "".join(stream_text(model, tok, prompt, continuation=True)) == " sat on"
    # Stop strings are looked for in the text returned: with its leading space when it continues.
    stop = SamplingParams(stop_strings=[" sat"])
    assert generate(model, [prompt], stop, tokenizer=tok)[0].text == "sat on"
    cut = generate(model, [prompt], stop, tokenizer=tok, continuation=True)[0]
    assert cut.text == "" and cut.finish_reason == "stop"
    assert "".join(stream_text(model, tok, prompt, stop, continuation=True)) == ""


def test_stop_strings_cut_long_batched_text_where_the_whole_decode_would(model_dir, monkeypatch):
    """generate() looks for stop strings incrementally (TextStream): the text it returns is the
    whole decode cut at the first stop string, also past the stream's settling length, across
    split UTF-8 characters and with or without the continuation's leading space."""
    from llamaforge.generate import SamplingParams, decode_after, generate
    from llamaforge.tokenizer import Tokenizer

    tok = Tokenizer(model_dir.parent / "tokenizer.model")
    said = tok.encode(" ".join(["the cat sat 日本"] * 20) + " on the mat. the dog", bos=False, eos=False)
    assert len(said) > 100
    _model_says(monkeypatch, said + [tok.eos_id])
    model, prompts = load_model(model_dir), [tok.encode("a", bos=True, eos=False), tok.encode("the big", bos=True, eos=False)]
    for continuation in (False, True):
        for stop in (["mat."], [" dog", "on the"], ["本 the"], ["never said"]):
            outs = generate(model, prompts, SamplingParams(max_new_tokens=len(said) + 1, stop_strings=stop), tokenizer=tok,
                            continuation=continuation)
            for prompt, out in zip(prompts, outs):
                whole = decode_after(tok, prompt[-1:] if continuation else [], said)
                hits = [whole.find(s) for s in stop if s in whole]
                assert out.text == (whole[: min(hits)] if hits else whole), (stop, continuation)
                assert out.finish_reason == "stop"


def test_streaming_releases_characters_split_over_several_byte_tokens(model_dir, monkeypatch):
    from llamaforge.generate import stream_text
    from llamaforge.tokenizer import Tokenizer

    tok = Tokenizer(model_dir.parent / "tokenizer.model")
    said = tok.encode("sat 日本 on", bos=False, eos=False)  # 3 byte tokens a character: not in this vocabulary
    assert len(said) > 6 and tok.decode(said[:3]).endswith("\ufffd")
    _model_says(monkeypatch, said + [tok.eos_id])
    pieces = list(stream_text(load_model(model_dir), tok, tok.encode("the cat", bos=True, eos=False), continuation=True))
    assert "".join(pieces) == " sat 日本 on" and not any("\ufffd" in p for p in pieces)


def test_generate_prints_prompt_and_completion_as_one_text(model_dir, capsys, monkeypatch):
    from llamaforge.tokenizer import Tokenizer

    tok = Tokenizer(model_dir.parent / "tokenizer.model")
    _model_says(monkeypatch, tok.encode("sat on", bos=False, eos=False) + [tok.eos_id])
    argv = ["generate", str(model_dir), "--prompt", "the cat", "--max-new-tokens", "8"]
    assert main(argv + ["--no-stream"]) == 0
    assert json.loads(capsys.readouterr().out)["completion"] == " sat on"
    assert main(argv) == 0
    assert capsys.readouterr().out == "the cat sat on\n"
    assert main(argv + ["--chat", "--no-stream"]) == 0  # a chat reply starts its own text
    assert json.loads(capsys.readouterr().out)["completion"] == "sat on"


def test_generate_rejects_chat_tags(model_dir, capsys):
    assert main(["generate", str(model_dir), "--chat", "--prompt", "hi [INST] there"]) == 1
    assert "[INST]" in capsys.readouterr().err


def _read_until(fd, marker: bytes, timeout: float = 60.0) -> bytes:
    buf, deadline = b"", time.time() + timeout
    while marker not in buf:
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {marker!r}; got {buf[-500:]!r}")
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def test_chat_in_a_pseudo_terminal(model_dir, tmp_path):
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(tmp_path)
        os.execv(sys.executable, [sys.executable, "-m", "llamaforge", "chat", str(model_dir),
                                  "--max-new-tokens", "6", "--seed", "0"])
    try:
        _read_until(fd, b"> ")
        os.write(fd, b"/system be brief\n")
        assert b"system prompt set" in _read_until(fd, b"> ")
        os.write(fd, b"the dog ran\n")
        _read_until(fd, b"> ")
        os.write(fd, b"oops [/INST] tag\n")
        assert b"not sent" in _read_until(fd, b"> ")
        os.write(fd, b"/save dialog.json\n")
        assert b"saved 2 messages" in _read_until(fd, b"> ")
        os.write(fd, b"/quit\n")
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
    finally:
        os.close(fd)
    dialog = json.loads((tmp_path / "dialog.json").read_text())
    assert [m["role"] for m in dialog] == ["system", "user", "assistant"]
    assert dialog[0]["content"] == "be brief" and dialog[1]["content"] == "the dog ran"


def test_eval_on_world_suites(model_dir, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main(["eval", str(model_dir), "--suites", "reading,math", "--limit", "4", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"reading", "math"}
    assert results["reading"]["n"] == 4 and 0.0 <= results["reading"]["metrics"]["acc"] <= 1.0
    assert main(["eval", str(model_dir), "--suites", "nope"]) == 2


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "llamaforge", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("llamaforge ")


def test_find_tokenizer_looks_in_a_run_folders_newest_checkpoint(tmp_path):
    from llamaforge.cli import find_tokenizer

    for step in (2, 10):
        ckpt = tmp_path / "run" / "checkpoints" / f"step-{step}"
        (ckpt / "model").mkdir(parents=True)
        (ckpt / "tokenizer.model").write_bytes(f"tok{step}".encode())
    assert find_tokenizer(tmp_path / "run") == (tmp_path / "run" / "checkpoints" / "step-10" / "tokenizer.model").resolve()
    with pytest.raises(SystemExit, match="no tokenizer.model"):
        find_tokenizer(tmp_path / "elsewhere" / "model")
