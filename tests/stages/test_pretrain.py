"""Pretraining stage on the tiny model and the tiny built-in world: it learns, writes a
complete run folder, resumes bit-exactly after a kill, and continues an HF checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llamaforge import load_model
from llamaforge.checkpoint import latest_checkpoint, save_model
from llamaforge.config import load_config
from llamaforge.data import PackedBatches, PackedSequences, TokenShards
from llamaforge.model import ModelArgs, Transformer
from llamaforge.stages import pretrain as stage
from llamaforge.trainer import autocast, causal_lm_loss, resolve_precision

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world_data(tmp_path_factory):
    """The tiny world's corpus, a 512-piece tokenizer trained on it, and its token shards."""
    from llamaforge.data import tokenize_corpus
    from llamaforge.tokenizer import train_tokenizer
    from llamaforge.world import World, write_world

    root = tmp_path_factory.mktemp("world")
    write_world(World.generate(seed=0, size="tiny"), root / "world")
    corpus = root / "world" / "corpus"
    tokenizer = train_tokenizer(corpus, root / "tokenizer.model", 512)
    tokenize_corpus(corpus, tokenizer, root / "shards", val_fraction=0.02, progress=False)
    return {"corpus": corpus, "tokenizer": root / "tokenizer.model", "shards": root / "shards"}


def overrides(data, run_dir, **extra) -> list[str]:
    settings = {
        "run.dir": run_dir, "run.progress": "false", "model.preset": "tiny",
        "data.inputs": data["corpus"], "data.tokenizer": data["tokenizer"], "data.shards": data["shards"],
        "data.val_fraction": 0.02, "data.seq_len": 64, "data.batch_size": 8, "data.eval_batches": 4,
        "train.lr": 3e-3, "train.warmup_steps": 5, "train.max_steps": 24, "train.log_every": 1,
        "train.checkpoint_every": 0, "train.eval_every": 0, "samples": 2, "sample_tokens": 8, **extra,
    }
    return [f"{k}={v}" for k, v in settings.items()]


def config(data, run_dir, **extra) -> stage.PretrainConfig:
    return load_config(stage.PretrainConfig, None, overrides(data, run_dir, **extra))


def losses(run_dir: Path) -> dict[int, float]:
    """Training loss per step; a step logged twice (recomputed after a crash) counts once, the last time."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out


def test_pretraining_learns_and_writes_a_complete_run(world_data, tmp_path):
    cfg = config(world_data, tmp_path / "run", **{"train.max_steps": 40, "train.eval_every": 20,
                                                  "train.checkpoint_every": 20})
    result = stage.pretrain(cfg)
    run = tmp_path / "run"
    assert load_config(stage.PretrainConfig, run / "config.yaml") == cfg  # the resolved config reruns the stage
    evals = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if "val_ppl" in l]
    manifest = json.loads((run / "manifest.json").read_text())
    assert [e["step"] for e in evals] == [20, 40]
    assert evals[1]["val_ppl"] < evals[0]["val_ppl"]
    assert evals[1]["val_ppl"] < manifest["unigram_val_ppl"]  # context already beats token frequencies
    train_losses = list(losses(run).values())
    assert sum(train_losses[-5:]) / 5 < sum(train_losses[:5]) / 5 - 0.5

    assert manifest["status"] == "finished" and manifest["stage"] == "pretrain"
    assert manifest["config"]["train"]["max_steps"] == 40 and manifest["seeds"]["train"] == 0
    assert manifest["inputs"]["corpus"] and all(v.startswith("md5:") for v in manifest["inputs"]["corpus"].values())
    assert manifest["energy"]["device_hours"] > 0 and manifest["energy"]["tco2eq"] > 0
    assert manifest["final"]["val_ppl"] == pytest.approx(evals[1]["val_ppl"])
    metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert {"lr", "grad_norm", "tokens_per_s", "mfu", "memory_gb", "tokens"} <= set(metrics[-1])
    assert metrics[-1]["tokens"] == 40 * 8 * 64

    samples = [json.loads(l) for l in (run / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {20, 40} and all(s["prompt"] and "completion" in s for s in samples)

    # The run folder is a checkpoint load_model reads, with its tokenizer beside the weights.
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-20", "step-40"]
    loaded = load_model(run)
    tokens = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), result.model(tokens), rtol=0, atol=0)
    assert (latest_checkpoint(run) / "tokenizer.model").read_bytes() == world_data["tokenizer"].read_bytes()


def test_crash_then_resume_repeats_the_uninterrupted_losses_bitwise(world_data, tmp_path, monkeypatch):
    stage.pretrain(config(world_data, tmp_path / "reference"))

    class Crashing(PackedBatches):
        calls = 0

        def __next__(self):
            Crashing.calls += 1
            if Crashing.calls == 15:  # inside step 15, after the checkpoint of step 10
                raise RuntimeError("simulated crash")
            return super().__next__()

    crashed = config(world_data, tmp_path / "crashed", **{"train.checkpoint_every": 5})
    monkeypatch.setattr(stage, "PackedBatches", Crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        stage.pretrain(crashed)
    monkeypatch.undo()
    assert json.loads((tmp_path / "crashed" / "manifest.json").read_text())["status"] == "failed"
    stage.pretrain(crashed)
    assert losses(tmp_path / "crashed") == losses(tmp_path / "reference")


def test_killed_process_resumes_bitwise(world_data, tmp_path):
    """Acceptance 1: SIGKILL a CPU fp32 run mid-way, run the same command again."""
    argv = overrides(world_data, tmp_path / "killed", **{"train.checkpoint_every": 4, "train.max_steps": 30})
    command = [sys.executable, "-m", "llamaforge.stages.pretrain", *argv]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 10):
        assert process.poll() is None, process.communicate()[1].decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 10 <= len(losses(tmp_path / "killed")) < 30
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "resumed from" in finished.stderr

    stage.pretrain(config(world_data, tmp_path / "reference", **{"train.checkpoint_every": 4, "train.max_steps": 30}))
    assert losses(tmp_path / "killed") == losses(tmp_path / "reference")


def test_continued_pretraining_from_a_hugging_face_checkpoint(world_data, tmp_path):
    """Acceptance 4: start from an HF-format checkpoint; the first loss is that model's loss."""
    torch.manual_seed(1)
    original = Transformer(ModelArgs.from_preset("tiny", vocab_size=512))
    hf_dir = tmp_path / "hf"
    save_model(original, hf_dir, format="hf", tokenizer_path=world_data["tokenizer"])
    assert (hf_dir / "config.json").exists()

    cfg = config(world_data, tmp_path / "continued", **{"model.init_from": hf_dir, "data.tokenizer": "",
                                                        "train.max_steps": 6})
    stage.pretrain(cfg)
    run = tmp_path / "continued"

    train_seqs = PackedSequences(TokenShards(world_data["shards"], "train"), 64)
    first = next(PackedBatches(train_seqs, 8, seed=0))
    device = torch.device("cpu")
    with torch.no_grad(), autocast(device, resolve_precision(cfg.train.precision, device)):  # as the run computes it
        out = causal_lm_loss(original, first)
    assert losses(run)[1] == pytest.approx(out.total.item() / out.count.item(), abs=1e-5)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["parent"] == str(hf_dir) and manifest["inputs"]["tokenizer"] == str(hf_dir / "tokenizer.model")
    continued = load_model(run)
    assert continued.args.dim == original.args.dim
    assert not torch.equal(continued.output.weight, original.output.weight)  # it trained


def test_mismatched_vocabulary_is_refused(world_data, tmp_path):
    other = Transformer(ModelArgs.from_preset("tiny", vocab_size=300))
    save_model(other, tmp_path / "hf", format="hf")
    cfg = config(world_data, tmp_path / "bad", **{"model.init_from": tmp_path / "hf"})
    with pytest.raises(ValueError, match="vocabulary of 300 but the tokenizer has 512"):
        stage.pretrain(cfg)


def test_tokens_per_step_sets_gradient_accumulation(world_data):
    cfg = config(world_data, "unused", **{"data.tokens_per_step": 8 * 64 * 4})
    assert stage._grad_accum(cfg, world_size=1) == 4 and stage._grad_accum(cfg, world_size=2) == 2
    with pytest.raises(ValueError, match="data.tokens_per_step=2048 is not a multiple"):
        stage._grad_accum(cfg, world_size=3)


def test_help_lists_every_key(capsys):
    with pytest.raises(SystemExit) as e:
        stage.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for key in ("train.lr=", "train.warmup_steps=", "data.tokens_per_step=", "model.init_from=", "run.resume=",
                "train.precision=auto", "auto|fp32|bf16"):
        assert key in text


def test_paper_presets_load_with_the_spec_numbers():
    for name, lr in (("7B", 3e-4), ("13B", 3e-4), ("34B", 1.5e-4), ("70B", 1.5e-4)):
        cfg = load_config(stage.PretrainConfig, REPO / "configs" / "pretrain" / f"{name}.yaml")
        assert cfg.model.preset == name and cfg.train.lr == lr  # SPEC §5
        assert cfg.data.seq_len == 4096 and cfg.data.tokens_per_step == 4 * 2**20
        assert cfg.train.warmup_steps == 2000 and cfg.train.min_lr_ratio == 0.1
        assert cfg.train.betas == (0.9, 0.95) and cfg.train.eps == 1e-5 and cfg.train.weight_decay == 0.1
        assert cfg.train.grad_clip == 1.0
        assert cfg.train.max_steps * cfg.data.tokens_per_step >= 2.0e12  # 2T tokens
    demo = load_config(stage.PretrainConfig, REPO / "configs" / "pretrain" / "demo.yaml")
    assert demo.train == stage.PretrainConfig().train and demo.data == stage.PretrainConfig().data
    args = demo.model.args(vocab_size=2048, seq_len=demo.data.seq_len)
    assert (args.dim, args.n_layers, args.n_heads, args.kv_heads, args.max_seq_len) == (192, 4, 6, 2, 256)
    assert 2_000_000 < args.num_params() < 3_000_000
