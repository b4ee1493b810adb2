"""The RLHF loop: the results table and the Figure 11 plot from gold-judged versions, the
round schedule (PPO from a configurable round), and one round end to end on a tiny model."""

from __future__ import annotations

import json

import pytest

from llamaforge.eval.chat import summarize
from llamaforge.stages import rlhf as stage

from .test_reward import tiny  # noqa: F401  (the tiny world, tokenizer and model of the reward tests)


def _version(name, helpful, violation, correct=None):
    items = [{"id": f"h{i}", "kind": "helpful", "helpfulness": h, "parsed": 1.0} for i, h in enumerate(helpful)]
    for item, c in zip(items, correct or ()):
        item["correct"] = c
    items += [{"id": f"a{i}", "kind": "adversarial", "violation": v, "category": "c", "parsed": 1.0}
              for i, v in enumerate(violation)]
    return {**summarize(items), "name": name}


def test_summary_table_and_figure_11_plot():
    versions = [_version("SFT", [0.0, 0.2, 0.4, 0.2], [1, 1, 0, 1]),
                _version("RLHF-V1", [0.5, 0.7, 0.9, 0.7], [1, 0, 0, 0], correct=[0, 1, 1, 1])]
    rounds = [{"round": 1, "seconds": 3.0, "rm_accuracy/helpfulness": 0.7, "rm_accuracy/safety": 0.8,
               "rs": {"reward/median_of_k": 0.4, "reward/max_of_k": 0.6, "pool": 10, "gold/all_samples": 0.3,
                      "gold/kept": 0.45},
               "ppo": {"kl_final": 1.5, "kl_coef": 0.05}}]
    summary = stage.rlhf_summary(versions, rounds, 5.0)
    table = summary["tables"][0]
    assert [row[0] for row in table["rows"]] == ["SFT", "RLHF-V1"]
    # Fully right answers: a column where the version has them, blank where it does not.
    assert table["columns"][-1] == "answers fully right" and [row[-1] for row in table["rows"]] == ["", 0.75]
    assert summary["metrics"]["RLHF-V1/correct"] == 0.75 and "RLHF-V1/correct_vs_sft" not in summary["metrics"]
    sft_right = _version("SFT", [0.0, 0.2, 0.4, 0.2], [1, 1, 0, 1], correct=[1, 1, 0, 1])
    paired = stage.rlhf_summary([sft_right, versions[1]], rounds, 5.0)["metrics"]
    assert paired["RLHF-V1/correct_vs_sft"] == pytest.approx(0.0)  # one item lost, one gained
    assert paired["RLHF-V1/correct_vs_sft_lo"] < 0 < paired["RLHF-V1/correct_vs_sft_hi"]
    assert summary["metrics"]["RLHF-V1/helpfulness_vs_sft"] == pytest.approx(0.5)  # every item +0.5
    assert summary["metrics"]["RLHF-V1/helpfulness_vs_sft_lo"] == pytest.approx(0.5)
    assert summary["metrics"]["RLHF-V1/violation_vs_sft"] == pytest.approx(-0.5)
    assert summary["metrics"]["round-1/ppo_kl"] == 1.5
    rounds_table = summary["tables"][1]
    assert dict(zip(rounds_table["columns"], rounds_table["rows"][0]))["RS gold, kept"] == 0.45
    plot = summary["plots"][0]
    assert plot["series"]["path"] == {"x": [0.2, 0.7], "y": [0.25, 0.75]}  # helpfulness vs 1 - violation
    assert "0.200 -> RLHF-V1 0.700" in summary["effect"] and "0.750 -> 0.250" in summary["effect"]
    assert "PPO KL 1.50" in summary["effect"] and "starting policy" not in summary["effect"]
    # A control is compared with SFT only (it is no step after the last version) and plotted apart.
    control = _version(stage.CONTROL, [0.1, 0.3, 0.5, 0.3], [1, 1, 0, 1])
    with_control = stage.rlhf_summary(versions, rounds, 5.0, [control])
    row = with_control["tables"][0]["rows"][-1]
    assert row[:4] == [stage.CONTROL, 0.3, "+0.100 [+0.100, +0.100]", ""]
    assert with_control["plots"][0]["series"]["path"] == plot["series"]["path"]
    assert with_control["plots"][0]["series"][stage.CONTROL] == {"x": [0.3], "y": [0.25]}
    assert f"{stage.CONTROL}: +0.100" in with_control["effect"]
    # Early stopping kept step 0: the KL reported is the kept policy's, and the line says so.
    rounds[0]["ppo"] = {"kl_final": 1.5, "kl_kept": 0.2, "best_step": 0, "kl_coef": 0.05}
    summary = stage.rlhf_summary(versions, rounds, 5.0)
    assert "PPO KL 0.20" in summary["effect"] and "kept its starting policy" in summary["effect"]
    assert summary["metrics"]["round-1/ppo_kl"] == 0.2


def test_ppo_runs_in_the_last_round_by_default_or_from_a_given_round():
    cfg = stage.RLHFConfig(iterations=3)
    assert [cfg.runs_ppo(i) for i in (1, 2, 3)] == [False, False, True]
    cfg = stage.RLHFConfig(iterations=3, ppo_from=2)
    assert [cfg.runs_ppo(i) for i in (1, 2, 3)] == [False, True, True]


def test_one_round_end_to_end(tiny, tmp_path):
    pytest.importorskip("llamaforge.stages.sft")
    overrides = ["world_size=tiny", "policy_pairs=8", "eval_prompts=12", "eval_max_new_tokens=16",
                 "reward_overrides=data.max_pairs=48,data.eval_pairs=24",
                 "rejection.prompts=8", "rejection.rejection_samples=2", "rejection.max_new_tokens=16",
                 "rejection.epochs=0.5", "ppo.iterations=2", "ppo.batch_size=8", "ppo.minibatch_size=4",
                 "ppo.max_new_tokens=12", "ppo.eval_prompts=4", "ppo.eval_every=0", "run.progress=false"]
    result = stage.run_rlhf(tiny["lm"], tiny["world"], tmp_path / "rlhf", iterations=1, overrides=overrides)
    summary = json.loads((tmp_path / "rlhf" / "summary.json").read_text())
    assert [row[0] for row in summary["tables"][0]["rows"]] == ["SFT", "RLHF-V1 (RS)", "RLHF-V1 (PPO)", stage.CONTROL]
    # The control scores the same samples (their gold rewards match) with the gold judge itself.
    by_rms, control = (json.loads((tmp_path / "rlhf" / "round-1" / d / "rewards.json").read_text())
                       for d in ("rejection", "rejection-gold-control"))
    assert control["gold"] == by_rms["gold"] and control["rewards"] == control["gold"] != by_rms["rewards"]
    assert (tmp_path / "rlhf" / "round-1" / "reward" / "helpfulness").is_dir()
    assert (tmp_path / "rlhf" / "round-1" / "rejection" / "summary.json").exists()
    assert result["outputs"]["model"] == str(tmp_path / "rlhf" / "round-1" / "ppo")


def test_demo_yamls_are_the_loops_demo_settings():
    """configs/ppo/demo.yaml and configs/rejection/demo.yaml say what `llamaforge rlhf` runs."""
    from pathlib import Path

    from llamaforge.config import config_to_dict, load_config
    from llamaforge.stages.ppo import PPOConfig
    from llamaforge.stages.rejection import RejectionConfig

    root = Path(__file__).resolve().parents[2] / "configs"
    for cls, name, demo in ((PPOConfig, "ppo", stage._demo_ppo()), (RejectionConfig, "rejection", stage._demo_rejection())):
        from_yaml = config_to_dict(load_config(cls, root / name / "demo.yaml", ["run.progress=true"]))
        assert from_yaml == config_to_dict(demo), name
