"""The shared training core: schedule, optimizer groups, accumulation, non-finite steps,
checkpoints (format, round trip, pruning, signals) and run folders."""

from __future__ import annotations

import json
import math
import os
import random
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llamaforge.model import ModelArgs, Transformer
from llamaforge.trainer import (
    LossOutput, NonFiniteError, Run, RunConfig, TensorFileWriter, TrainConfig, backward_and_step, build_optimizer,
    causal_lm_loss, list_checkpoints, load_checkpoint, lr_at, param_groups, resolve_precision, rng_state,
    save_checkpoint, set_rng_state, stage_dir, train, TrainState,
)

CPU = torch.device("cpu")


def tiny_model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelArgs.from_preset("tiny", vocab_size=64, max_seq_len=32))


class Tokens:
    """Endless random token batches with a resumable position (what the core asks of data)."""

    def __init__(self, batch_size: int = 4, seq_len: int = 16, seed: int = 0):
        self.batch_size, self.seq_len, self.seed, self.position = batch_size, seq_len, seed, 0

    def __next__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.position)
        self.position += 1
        x = torch.randint(0, 64, (self.batch_size, self.seq_len + 1), generator=g)
        return {"inputs": x[:, :-1], "targets": x[:, 1:]}

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def quiet_run(path, **overrides) -> Run:
    return Run.start(RunConfig(dir=str(path), progress=False, **overrides), "test", {})


def test_schedule_warms_up_then_decays_to_ten_percent():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=110)
    lrs = [lr_at(s, cfg) for s in range(cfg.max_steps)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(b > a for a, b in zip(lrs[:9], lrs[1:10]))
    assert all(b <= a for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(1e-4)  # SPEC §5: decay to 10% of the peak
    assert lrs[60] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 50 / 99)))
    constant = TrainConfig(lr=1e-6, warmup_steps=0, schedule="constant", max_steps=5)
    assert [lr_at(s, constant) for s in range(5)] == [1e-6] * 5


def test_weight_decay_on_matrices_not_on_norms_or_embeddings():
    model = tiny_model()
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decayed | kept == set(names.values()) and not decayed & kept
    assert "tok_embeddings.weight" in kept and "norm.weight" in kept and "layers.0.ffn_norm.weight" in kept
    assert "output.weight" in decayed and "layers.1.attention.wq.weight" in decayed
    assert all(n.endswith(("w1.weight", "w2.weight", "w3.weight", "wq.weight", "wk.weight", "wv.weight",
                           "wo.weight", "output.weight")) for n in decayed)
    opt = build_optimizer(model, TrainConfig(), CPU)
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-5  # SPEC §5


def test_fused_adamw_on_the_cpu_steps_like_the_reference_adamw():
    """train.fused_adamw takes torch's fused AdamW on the CPU (a tenth of the default's time);
    three steps of it land where the multi-tensor reference lands, decay groups and all."""
    assert not build_optimizer(tiny_model(), TrainConfig(), CPU).defaults["fused"]  # the default so far
    model, twin = tiny_model(), tiny_model()
    cfg = TrainConfig(lr=1e-2, fused_adamw=True)
    fused = build_optimizer(model, cfg, CPU)
    assert fused.defaults["fused"] is True
    reference = torch.optim.AdamW(param_groups(twin, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                  foreach=True)
    tokens = Tokens()
    for _ in range(3):
        batch = next(tokens)
        for m, opt in ((model, fused), (twin, reference)):
            opt.zero_grad()
            out = causal_lm_loss(m, batch)
            (out.total / out.count).backward()
            opt.step()
    moved = [(a - b).abs().max().item() for a, b in zip(model.parameters(), tiny_model().parameters())]
    assert min(moved) > 1e-3  # every tensor moved, so the comparison below means something
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_precision_auto_is_fp32_on_a_cpu_without_bf16_units(monkeypatch):
    import llamaforge.trainer as trainer

    monkeypatch.setattr(trainer, "cpu_has_bf16_matmul", lambda: False)
    assert resolve_precision("auto", CPU) == "fp32"
    monkeypatch.setattr(trainer, "cpu_has_bf16_matmul", lambda: True)
    assert resolve_precision("auto", CPU) == "bf16"
    assert resolve_precision("fp32", CPU) == "fp32"


def test_accumulating_micro_batches_equals_one_big_batch():
    big, small = tiny_model(), tiny_model()
    cfg_big = TrainConfig(lr=1e-2, warmup_steps=0, grad_accum=1)
    cfg_small = TrainConfig(lr=1e-2, warmup_steps=0, grad_accum=2)
    opt_big, opt_small = build_optimizer(big, cfg_big, CPU), build_optimizer(small, cfg_small, CPU)
    data = next(Tokens(batch_size=4))
    halves = iter([{k: v[:2] for k, v in data.items()}, {k: v[2:] for k, v in data.items()}])
    a = backward_and_step(big, opt_big, iter([data]), causal_lm_loss, cfg_big, 1e-2, CPU, "fp32")
    b = backward_and_step(small, opt_small, halves, causal_lm_loss, cfg_small, 1e-2, CPU, "fp32")
    assert a.loss == pytest.approx(b.loss, rel=1e-6) and a.grad_norm == pytest.approx(b.grad_norm, rel=1e-5)
    assert a.tokens == b.tokens == 4 * 16
    for (name, p), q in zip(big.named_parameters(), small.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_clipping_bounds_the_update_direction_norm():
    model = tiny_model()
    cfg = TrainConfig(lr=1e-3, grad_clip=1e-3, warmup_steps=0)
    opt = build_optimizer(model, cfg, CPU)
    out = backward_and_step(model, opt, Tokens(), causal_lm_loss, cfg, 1e-3, CPU, "fp32")
    assert out.grad_norm > 1e-3  # the norm before clipping is reported
    # After clipping, Adam's first moment holds (1 - beta1) * clipped gradient.
    moments = torch.cat([opt.state[p]["exp_avg"].flatten() for p in model.parameters()])
    assert moments.norm().item() == pytest.approx(0.1 * 1e-3, rel=1e-3)


def test_non_finite_steps_are_skipped_then_stop_the_run(tmp_path):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def nan_loss(m, batch):
        out = causal_lm_loss(m, batch)
        return LossOutput(out.total * float("nan"), out.count)

    cfg = TrainConfig(max_steps=10, max_nonfinite_in_a_row=2, warmup_steps=0, log_every=1, checkpoint_every=0)
    run = quiet_run(tmp_path / "run")
    with pytest.raises(NonFiniteError, match="3 steps in a row"):
        train(model, Tokens(), nan_loss, cfg, run)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # no update was applied
    skipped = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in skipped if r.get("skipped")] == [1, 2, 3]
    assert json.loads((run.path / "manifest.json").read_text())["status"] == "failed"


def test_tensor_file_writer_is_valid_safetensors(tmp_path):
    tensors = {"a": torch.randn(3, 5), "b/step": torch.tensor(7.0), "c": torch.randn(4).to(torch.bfloat16),
               "d": torch.arange(6, dtype=torch.int64).view(2, 3)}
    writer = TensorFileWriter(tmp_path / "t.safetensors", [(k, v.shape, v.dtype) for k, v in tensors.items()])
    for v in tensors.values():
        writer.write(v)
    writer.close()
    loaded = load_file(str(tmp_path / "t.safetensors"))
    assert set(loaded) == set(tensors)
    for k, v in tensors.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v)
    with pytest.raises(ValueError, match="expected"):
        TensorFileWriter(None, [("a", torch.Size([2]), torch.float32)]).write(torch.zeros(3))


def test_checkpoint_round_trip_restores_everything(tmp_path):
    model = tiny_model(0)
    cfg = TrainConfig(lr=1e-2, warmup_steps=0)
    opt = build_optimizer(model, cfg, CPU)
    data = Tokens()
    for _ in range(3):
        backward_and_step(model, opt, data, causal_lm_loss, cfg, 1e-2, CPU, "fp32")
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(6)
    path = save_checkpoint(tmp_path, model, opt, TrainState(step=3, tokens_seen=192), data)
    draws = (torch.rand(3), random.random(), np.random.rand())

    other = tiny_model(1)
    other_opt = build_optimizer(other, cfg, CPU)
    other_data = Tokens()
    state = load_checkpoint(path, other, other_opt, other_data)
    assert state == TrainState(step=3, tokens_seen=192)
    assert other_data.position == 3
    for (name, p), q in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(p, q), name
    for p, q in zip(model.parameters(), other.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][key], other_opt.state[q][key])
    assert torch.equal(torch.rand(3), draws[0]) and random.random() == draws[1] and np.random.rand() == draws[2]
    # The weights are a native checkpoint: load_model reads the step folder directly.
    from llamaforge import load_model

    assert torch.equal(load_model(path).output.weight, model.output.weight)


def test_rng_state_survives_json():
    torch.manual_seed(9)
    state = json.loads(json.dumps(rng_state()))
    expected = torch.rand(4)
    torch.manual_seed(0)
    set_rng_state(state)
    assert torch.equal(torch.rand(4), expected)


def test_keep_last_prunes_old_checkpoints(tmp_path):
    model = tiny_model()
    cfg = TrainConfig(max_steps=7, checkpoint_every=2, keep_last=2, warmup_steps=0, log_every=1)
    run = quiet_run(tmp_path / "run")
    train(model, Tokens(), causal_lm_loss, cfg, run)
    assert [p.name for p in list_checkpoints(run.path)] == ["step-6", "step-7"]
    assert not list((run.path / "checkpoints").glob(".*"))  # no temp folders left


def test_sigterm_checkpoints_and_stops_then_resume_is_exact(tmp_path):
    cfg = TrainConfig(lr=1e-2, max_steps=8, warmup_steps=2, checkpoint_every=0, log_every=1)

    def losses(run):
        rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r}

    reference = quiet_run(tmp_path / "a")
    train(tiny_model(), Tokens(), causal_lm_loss, cfg, reference)

    calls = {"n": 0}

    def loss_then_signal(m, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return causal_lm_loss(m, batch)

    interrupted = quiet_run(tmp_path / "b")
    result = train(tiny_model(), Tokens(), loss_then_signal, cfg, interrupted)
    assert result.stopped_by == "SIGTERM" and result.state.step == 3
    assert [p.name for p in list_checkpoints(interrupted.path)] == ["step-3"]
    assert json.loads((interrupted.path / "manifest.json").read_text())["status"] == "interrupted"

    resumed = quiet_run(tmp_path / "b")
    result = train(tiny_model(), Tokens(), causal_lm_loss, cfg, resumed)
    assert result.state.step == 8 and result.stopped_by is None
    assert losses(resumed) == losses(reference)  # bitwise: same floats, same data order
    manifest = json.loads((resumed.path / "manifest.json").read_text())
    assert manifest["status"] == "finished" and len(manifest["sessions"]) == 2
    assert manifest["energy"]["device_hours"] > 0


def test_stage_folders_are_numbered_and_reused_when_resuming(tmp_path):
    cfg = RunConfig(name="exp", root=str(tmp_path))
    first = stage_dir(cfg, "pretrain")
    assert first == tmp_path / "exp" / "01-pretrain"
    first.mkdir(parents=True)
    assert stage_dir(cfg, "pretrain") == first
    assert stage_dir(cfg, "sft") == tmp_path / "exp" / "02-sft"
    fresh = RunConfig(name="exp", root=str(tmp_path), resume=False)
    assert stage_dir(fresh, "pretrain") == tmp_path / "exp" / "02-pretrain"


def test_manifest_records_config_code_and_seeds(tmp_path):
    run = Run.start(RunConfig(dir=str(tmp_path / "r"), progress=False), "pretrain", {"train": {"lr": 1.0}},
                    seeds={"train": 3}, parent="somewhere")
    manifest = json.loads((run.path / "manifest.json").read_text())
    assert manifest["config"] == {"train": {"lr": 1.0}} and manifest["seeds"] == {"train": 3}
    assert manifest["parent"] == "somewhere" and manifest["stage"] == "pretrain"
    assert "llamaforge" in manifest["code_version"]


def _one_step(cfg: TrainConfig, precision: str = "fp32"):
    from llamaforge.trainer import prepare_model

    model = prepare_model(tiny_model(), cfg, CPU, precision)
    out = backward_and_step(model, build_optimizer(model, cfg, CPU), Tokens(), causal_lm_loss, cfg, 1e-2, CPU, precision)
    return out, model


def test_activation_checkpointing_changes_memory_not_results():
    plain, a = _one_step(TrainConfig(warmup_steps=0))
    checkpointed, b = _one_step(TrainConfig(warmup_steps=0, activation_checkpointing=True))
    assert b.activation_checkpointing and not a.activation_checkpointing
    assert checkpointed.loss == plain.loss and checkpointed.grad_norm == plain.grad_norm
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("units", [False, True])
def test_bf16_asked_for_on_a_cpu_without_bf16_units_warns(tmp_path, capsys, monkeypatch, units):
    import llamaforge.trainer as trainer

    monkeypatch.setattr(trainer, "cpu_has_bf16_matmul", lambda: units)
    for precision in ("bf16", "fp32"):
        cfg = TrainConfig(max_steps=1, warmup_steps=0, checkpoint_every=0, precision=precision)
        train(tiny_model(), Tokens(), causal_lm_loss, cfg, quiet_run(tmp_path / precision))
        warned = "without bf16 matrix units" in capsys.readouterr().err
        assert warned == (precision == "bf16" and not units)


def test_bf16_autocast_trains_close_to_fp32():
    fp32, _ = _one_step(TrainConfig(warmup_steps=0))
    bf16, model = _one_step(TrainConfig(warmup_steps=0, precision="bf16"), "bf16")
    assert model.output.weight.dtype == torch.float32  # master weights stay fp32
    assert bf16.loss == pytest.approx(fp32.loss, abs=0.05) and bf16.loss != fp32.loss
