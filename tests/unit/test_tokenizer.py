"""Tokenizer wrapper and Llama-style tokenizer training (SPEC §3), on small trained models."""

import pickle
import random
import re
import subprocess
import sys

import pytest
import torch

import llamaforge.tokenizer as tokenizer_module
from llamaforge.tokenizer import Tokenizer, main, train_tokenizer

VOCAB = 512
SYLLABLES = ["ka", "lo", "mi", "ra", "ten", "dor", "vel", "is", "an", "or", "ul", "bri", "sto", "gen", "fa", "qu", "ny"]
TEMPLATES = [
    "{W} lives in {w} and keeps {n} {w}s.",
    "On day {n}, {W} walked {n} miles to {w}.",
    "Q: What is {n} + {n}? A: {n}.",
    "{W}, {w} {w} {w}; {w} {w}!",
    "The {w} of {W} weighs {n}.{n} kg  ({w}).",
]


def make_corpus(seed: int, n_lines: int = 6000) -> list[str]:
    """A few hundred KB of seeded, templated text with enough distinct words for 512 pieces."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(600)]
    fill = {
        "W": lambda: rng.choice(words).capitalize(),
        "w": lambda: rng.choice(words),
        "n": lambda: str(rng.randint(0, 99999)),
    }
    lines = []
    for _ in range(n_lines):
        lines.append(re.sub(r"\{(\w)\}", lambda field: fill[field.group(1)](), rng.choice(TEMPLATES)))
    return lines


@pytest.fixture(scope="module")
def corpus_lines():
    return make_corpus(seed=0)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory, corpus_lines):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(corpus_lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok(tmp_path_factory, corpus_file):
    return train_tokenizer(corpus_file, tmp_path_factory.mktemp("tok") / "tok.model", VOCAB)


def test_corpus_is_a_few_hundred_kb(corpus_file):
    assert 100_000 < corpus_file.stat().st_size < 1_000_000


def test_special_and_byte_pieces_have_llama2_ids(tok):
    assert tok.vocab_size == tok.n_words == VOCAB
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, -1)
    assert [tok.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    # Like Llama 2: the 256 byte pieces follow the specials, ids 3..258.
    assert [tok.id_to_piece(i) for i in range(3, 259)] == [f"<0x{b:02X}>" for b in range(256)]


def test_no_piece_holds_a_digit_with_anything_else(tok):
    sp = tok.sp
    for i in range(tok.vocab_size):
        if sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i):
            continue
        text = tok.id_to_piece(i).replace("\u2581", "")
        if any(c.isdigit() for c in text):
            assert len(text) == 1, f"piece {i} {tok.id_to_piece(i)!r} merges a digit (split_digits must be on)"
    pieces = [tok.id_to_piece(i) for i in tok.encode("In 2024 we sold 12345 apples")]
    assert [p for p in pieces if p.strip("\u2581").isdigit()] == list("202412345")


def test_unseen_characters_become_byte_pieces_and_round_trip(tok):
    text = "A llama 🦙 says ¡hola! 漢字 Ωμέγα"
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    llama_bytes = [f"<0x{b:02X}>" for b in "🦙".encode("utf-8")]
    pieces = [tok.id_to_piece(i) for i in ids]
    assert any(pieces[k : k + 4] == llama_bytes for k in range(len(pieces)))
    assert tok.decode(ids) == text


@pytest.mark.parametrize(
    "text",
    ["", " ", "  leading", "trailing  ", "a  b   c", "\ttab\nnew line\r\n", "\n\n", "x" * 3000, "e\u0301 n\u0303"],
)
def test_decode_inverts_encode(tok, text):
    # remove_extra_whitespaces=False and identity normalization: nothing is collapsed or changed.
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("text", ["<s>", "</s>", "<unk>", "<s>[INST] hi [/INST]</s>"])
def test_control_symbols_never_come_from_text(tok, text):
    ids = tok.encode(text)
    assert not {tok.unk_id, tok.bos_id, tok.eos_id} & set(ids)
    assert tok.decode(ids) == text


def test_bos_and_eos_only_when_asked_and_dropped_by_decode(tok):
    plain = tok.encode("kalo 7")
    assert tok.encode("kalo 7", bos=True) == [1] + plain
    assert tok.encode("kalo 7", eos=True) == plain + [2]
    assert tok.encode("kalo 7", bos=True, eos=True) == [1] + plain + [2]
    assert tok.decode([1] + plain + [2]) == tok.decode(plain) == "kalo 7"


def test_decode_accepts_tensors_and_rejects_ids_outside_the_vocabulary(tok):
    ids = tok.encode("mira 42")
    assert tok.decode(torch.tensor(ids)) == "mira 42"
    with pytest.raises(ValueError, match="-100"):
        tok.decode(ids + [-100])
    with pytest.raises(ValueError, match=str(VOCAB)):
        tok.decode([VOCAB])


def test_encode_rejects_what_is_not_one_string(tok):
    with pytest.raises(TypeError, match="encode_batch"):
        tok.encode(["two", "strings"])
    with pytest.raises(ValueError, match="UTF-8"):
        tok.encode("bad \ud800 surrogate")
    with pytest.raises(ValueError, match=r"texts\[1\]: .*UTF-8"):
        tok.encode_batch(["fine", "bad \ud800 surrogate"])


def test_encode_batch_equals_encode(tok, corpus_lines):
    lines = corpus_lines[:50]
    assert tok.encode_batch(lines, bos=True) == [tok.encode(line, bos=True) for line in lines]


def test_pickles_for_dataloader_workers(tok, corpus_lines):
    copy = pickle.loads(pickle.dumps(tok))
    assert copy.encode(corpus_lines[0]) == tok.encode(corpus_lines[0])


def test_load_errors_say_what_is_wrong(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="missing.model"):
        Tokenizer(tmp_path / "missing.model")
    garbage = tmp_path / "garbage.model"
    garbage.write_text("not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        Tokenizer(garbage)
    # A model folder (Meta's or Hugging Face's) is accepted when it holds tokenizer.model.
    (tmp_path / "tokenizer.model").write_bytes(tok.model_path.read_bytes())
    assert Tokenizer(tmp_path).encode("ulan") == tok.encode("ulan")


def test_iterator_input_trains_the_same_model_as_a_file(tmp_path, tok, corpus_lines):
    # Strings are split on newlines exactly like a file's lines, whatever their chunking.
    chunks = ("\n".join(corpus_lines[k : k + 7]) for k in range(0, len(corpus_lines), 7))
    from_iterator = train_tokenizer(chunks, tmp_path / "it.model", VOCAB)
    assert from_iterator.model_path.read_bytes() == tok.model_path.read_bytes()


def test_directory_and_list_inputs_read_the_same_lines(tmp_path, tok, corpus_lines):
    folder = tmp_path / "texts"
    folder.mkdir()
    half = len(corpus_lines) // 2
    (folder / "a.txt").write_text("\n".join(corpus_lines[:half]) + "\n")
    (folder / "b.txt").write_text("\n".join(corpus_lines[half:]) + "\n")
    (folder / "notes.json").write_text('{"ignored": "not a .txt file ¿¿¿ ∑∑∑"}\n')
    from_dir = train_tokenizer(folder, tmp_path / "dir.model", VOCAB)
    from_list = train_tokenizer([folder / "a.txt", folder / "b.txt"], tmp_path / "list.model", VOCAB)
    assert from_dir.model_path.read_bytes() == from_list.model_path.read_bytes() == tok.model_path.read_bytes()


def test_a_list_of_plain_strings_is_not_mistaken_for_text(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"iter\(texts\)"):
        train_tokenizer(["this is text, not a path"], tmp_path / "x.model", VOCAB)


def test_sampled_training_is_the_same_in_another_process(tmp_path, corpus_file):
    # SentencePiece's own sampler differs between processes even with a fixed seed; ours does not.
    # The child loads tokenizer.py by path: importing the package would import torch (seconds).
    script = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('tokenizer', sys.argv[1])\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "module.train_tokenizer(sys.argv[2], sys.argv[3], 400, input_sentence_size=800, seed=3)\n"
    )
    child = tmp_path / "child.model"
    subprocess.run([sys.executable, "-c", script, tokenizer_module.__file__, str(corpus_file), str(child)], check=True)
    here = train_tokenizer(corpus_file, tmp_path / "here.model", 400, input_sentence_size=800, seed=3)
    assert child.read_bytes() == here.model_path.read_bytes()


def test_vocab_too_small_for_the_corpus_is_a_clear_error(tmp_path, corpus_file):
    out = tmp_path / "tok.model"
    out.write_bytes(b"previous model")
    with pytest.raises(ValueError, match=r"too small for this corpus: it needs at least \d+ pieces"):
        train_tokenizer(corpus_file, out, 270)
    with pytest.raises(ValueError, match="at least 260"):
        train_tokenizer(corpus_file, out, 100)
    assert out.read_bytes() == b"previous model"  # a failed run leaves the old file alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.model"]


def test_vocab_too_large_for_the_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"at most \d+ pieces"):
        train_tokenizer(iter(make_corpus(seed=1, n_lines=200)), tmp_path / "tok.model", 30000)


def test_lines_longer_than_sentencepiece_accepts_are_reported(tmp_path):
    with pytest.raises(ValueError, match="4192 bytes"):
        train_tokenizer(iter(["word " * 1000]), tmp_path / "tok.model", VOCAB)


def test_writes_tokenizer_model_into_a_directory_and_leaves_no_temp_files(tmp_path, corpus_lines):
    tok = train_tokenizer(iter(corpus_lines), tmp_path, VOCAB)
    assert tok.model_path == tmp_path / "tokenizer.model"
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.model"]


def test_cli_trains_and_reports(tmp_path, corpus_file, capsys):
    out = tmp_path / "cli.model"
    assert main(["--input", str(corpus_file), "--out", str(out), "--vocab-size", str(VOCAB)]) == 0
    assert Tokenizer(out).vocab_size == VOCAB
    assert f"({VOCAB} pieces)" in capsys.readouterr().out

    assert main(["--input", str(corpus_file), "--out", str(out), "--vocab-size", "270"]) == 1
    assert "too small" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--vocab-size" in help_text and "0.99995" in help_text  # defaults are shown
