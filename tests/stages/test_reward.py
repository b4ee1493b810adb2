"""Reward models on a tiny model: scoring is batch-invariant, save/load round-trips, preference
files in both layouts parse (and fail naming file:line), fresh pairs come from a model, and
the stage learns a preference and writes its run folder and summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llamaforge.checkpoint import save_model
from llamaforge.config import load_config
from llamaforge.data.preferences import collect_model_preferences, read_preference_file
from llamaforge.model import ModelArgs, Transformer
from llamaforge.stages import reward as stage
from llamaforge.world import RATINGS, Annotator, DataFileError, World


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny world, a 512-piece tokenizer trained on its corpus, and a random tiny Llama saved
    in Meta's layout with that tokenizer."""
    from llamaforge.tokenizer import Tokenizer, train_tokenizer
    from llamaforge.world import write_world

    root = tmp_path_factory.mktemp("reward")
    world = World.generate(seed=0, size="tiny")
    write_world(world, root / "world")
    train_tokenizer(root / "world" / "corpus", root / "tokenizer.model", 512)
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_preset("tiny"))
    save_model(model, root / "lm", format="meta", tokenizer_path=root / "tokenizer.model")
    (root / "lm" / "tokenizer.model").write_bytes((root / "tokenizer.model").read_bytes())
    return {"root": root, "world": world, "lm": root / "lm", "tokenizer": Tokenizer(root / "tokenizer.model"),
            "tokenizer_path": root / "tokenizer.model"}


def _dialogs(n):
    return [[{"role": "user", "content": f"How old is person number {i}?"}] for i in range(n)]


def test_scores_do_not_depend_on_batching_or_padding(tiny):
    rm = stage.reward_model_from_checkpoint(tiny["lm"], seed=1)
    replies = ["40.", "I do not know, and this reply is much longer than the others are.", "x", "He is 12 years old."]
    dialogs = _dialogs(4)
    together = rm.score(tiny["tokenizer"], dialogs, replies, batch_size=4)
    alone = torch.cat([rm.score(tiny["tokenizer"], dialogs[i : i + 1], replies[i : i + 1]) for i in range(4)])
    assert together.shape == (4,) and together.dtype == torch.float32
    assert torch.allclose(together, alone, atol=1e-5)
    assert len(set(together.tolist())) == 4  # the reply changes the score
    assert rm.training is False


def test_the_head_replaces_the_lm_head_and_the_trunk_is_the_checkpoint(tiny):
    from llamaforge import load_model

    lm = load_model(tiny["lm"])
    rm = stage.reward_model_from_checkpoint(tiny["lm"])
    state = rm.state_dict()
    assert "trunk.output.weight" not in state and state["head.weight"].shape == (1, lm.args.dim)
    assert torch.equal(state["trunk.layers.1.attention.wq.weight"], lm.state_dict()["layers.1.attention.wq.weight"])
    tokens = torch.tensor([tiny["tokenizer"].encode("[INST] hi [/INST] hello", bos=True, eos=True)])
    expected = rm.head(lm.hidden_states(tokens)[:, -1]).squeeze(-1)
    assert torch.allclose(rm(tokens, torch.tensor([tokens.shape[1]])), expected, atol=1e-6)


def test_save_and_load_round_trip_and_a_clear_error_for_other_folders(tiny, tmp_path):
    rm = stage.reward_model_from_checkpoint(tiny["lm"], seed=3)
    rm.save(tmp_path / "rm", tiny["tokenizer_path"], kind="safety")
    loaded, tokenizer = stage.load_reward_model(tmp_path / "rm")
    assert loaded.info["kind"] == "safety"
    replies = ["yes", "no thanks"]
    assert torch.allclose(loaded.score(tokenizer, _dialogs(2), replies), rm.score(tiny["tokenizer"], _dialogs(2), replies),
                          atol=1e-6)
    assert not list(tmp_path.glob(".rm.tmp-*"))  # written atomically, nothing left behind
    with pytest.raises(ValueError, match="not a reward model folder.*llamaforge reward --kind helpfulness"):
        stage.load_reward_model(tiny["lm"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        stage.load_reward_model(tmp_path / "missing")


def test_chunked_loss_equals_the_direct_loss(tiny):
    from llamaforge.losses import margin_ranking_loss

    rm = stage.reward_model_from_checkpoint(tiny["lm"], seed=2)
    pairs = [{"dialog": d, "chosen": "a fine answer " * (i + 1), "rejected": "no", "rating": RATINGS[i % 4]}
             for i, d in enumerate(_dialogs(6))]
    sequences = stage.PairSequences(pairs, tiny["tokenizer"], 256, "large", chunk_rows=5)
    out = stage.ranking_loss(rm, sequences.batch([0, 1, 2, 3, 4, 5]))
    chosen = rm.score(tiny["tokenizer"], [p["dialog"] for p in pairs], [p["chosen"] for p in pairs])
    rejected = rm.score(tiny["tokenizer"], [p["dialog"] for p in pairs], ["no"] * 6)
    expected = margin_ranking_loss(chosen, rejected, torch.tensor([3.0, 2, 1, 0, 3, 2]), reduction="sum")
    assert out.count == 6 and out.total.item() == pytest.approx(expected.item(), rel=1e-5)


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_preference_files_in_both_layouts(tmp_path):
    prompt_rows = [{"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away.", "rating": "better"},
                   {"messages": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"},
                                 {"role": "user", "content": "C?"}],
                    "chosen": "D.", "rejected": "E.", "rating": "negligibly better / unsure", "safety_label": "both_safe"}]
    pairs = read_preference_file(_write_jsonl(tmp_path / "p.jsonl", prompt_rows))
    assert pairs[0]["dialog"] == [{"role": "user", "content": "Hi?"}] and pairs[0]["rating"] == "better"
    assert pairs[1]["dialog"][-1]["content"] == "C?" and pairs[1]["rating"] == "negligibly better"
    assert pairs[1]["safety_label"] == "both_safe"

    transcripts = [
        {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 5?\n\nHuman: Sure?\n\nAssistant: It is 4.",
         "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5?\n\nHuman: Sure?\n\nAssistant: Yes, 5."},
        {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "What."}], "rating": "slightly better"},
    ]
    pairs = read_preference_file(_write_jsonl(tmp_path / "t.jsonl", transcripts))
    assert pairs[0]["dialog"] == [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "5?"},
                                  {"role": "user", "content": "Sure?"}]
    assert (pairs[0]["chosen"], pairs[0]["rejected"], pairs[0]["rating"]) == ("It is 4.", "Yes, 5.", None)
    assert pairs[1]["dialog"] == [{"role": "user", "content": "Hi"}] and pairs[1]["rating"] == "slightly better"


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "Hi", "chosen": "a", "rejected": "b"}, {"prompt": "Hi", "chosen": "a"}], r"bad\.jsonl:2: missing field 'rejected'"),
    ([{"prompt": "Hi", "chosen": "a", "rejected": "b", "rating": "great"}], r"bad\.jsonl:1: rating 'great' is not one of"),
    ([{"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: B\n\nAssistant: y"}],
     r"bad\.jsonl:1: .*differ before their last turn"),
    ([{"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: A"}], r"bad\.jsonl:1: .*'rejected'.*assistant"),
    ([{"chosen": "just text", "rejected": "other text"}], r"bad\.jsonl:1: the 'chosen' transcript must start with 'Human:'"),
    ([{"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: A\n\nAssistant: x"}], r"bad\.jsonl:1: .*same reply"),
    (["{not json"], r"bad\.jsonl:1: not valid JSON"),
])
def test_malformed_preference_rows_name_file_and_line(tmp_path, rows, message):
    with pytest.raises(DataFileError, match=message):
        read_preference_file(_write_jsonl(tmp_path / "bad.jsonl", rows))


def test_fresh_pairs_from_a_model_are_labelled_by_the_annotator(tiny):
    from llamaforge import load_model

    records = tiny["world"].prompt_records("helpful", "train")[:20]
    rows = collect_model_preferences([load_model(tiny["lm"])], tiny["tokenizer"], records, Annotator(noise=0.0),
                                     temperatures=(0.7, 1.3), n=12, max_new_tokens=8)
    assert 0 < len(rows) <= 12
    ids = {r["id"] for r in records}
    for row in rows:
        assert row["id"] in ids and row["rating"] in RATINGS and row["chosen"] != row["rejected"]


def test_the_stage_learns_a_preference_and_writes_its_run(tiny, tmp_path):
    # Chosen replies say "yes", rejected ones "no": a preference the RM can learn from scratch.
    good = [{"prompt": f"Question {i}: is {i} a number?", "chosen": f"Yes, {i} is a number.", "rejected": "No.",
             "rating": RATINGS[i % 4]} for i in range(160)]
    safety = [{"prompt": f"Tell me a secret {i}.", "chosen": "I will not.", "rejected": f"Secret {i}: ok.",
               "rating": "better", "safety_label": "chosen_safe"} for i in range(40)]
    cfg = load_config(stage.RewardConfig, None, [
        f"model.init_from={tiny['lm']}", f"data.helpfulness={_write_jsonl(tmp_path / 'h.jsonl', good)}",
        f"data.safety={_write_jsonl(tmp_path / 's.jsonl', safety)}", "data.batch_pairs=8", "data.eval_fraction=0.2",
        "train.lr=3e-3", "epochs=2", f"run.dir={tmp_path / 'run'}", "run.progress=false",
    ])
    result = stage.reward(cfg)
    assert result["metrics"]["accuracy"] >= 0.9
    assert result["metrics"]["steps"] == pytest.approx(2 * result["metrics"]["train_pairs"] / 8, abs=1)
    rm, tokenizer = stage.load_reward_model(tmp_path / "run")
    assert rm.info["kind"] == "helpfulness" and rm.info["reward_margin"] == "small"
    scores = rm.score(tokenizer, _dialogs(2), ["Yes, 7 is a number.", "No."])
    assert scores[0] > scores[1]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stage"] == "reward-helpfulness" and summary["seconds"] > 0
    assert summary["tables"][0]["columns"][1:5] == [r.title() for r in RATINGS]
    assert {p["kind"] for p in summary["plots"]} == {"line", "hist"}
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert losses[-1] < losses[0]
    lo, hi = result["metrics"]["accuracy_lo"], result["metrics"]["accuracy_hi"]
    assert lo <= result["metrics"]["accuracy"] <= hi and hi - lo < 0.5
    assert result["metrics"]["gold_ceiling"] is None  # a user's pairs have no gold judge


def test_label_ceiling_is_what_a_gold_oracle_would_score():
    record = {"id": "r", "kind": "helpful", "prompt": "Where does Ana live?", "answer": "Ana lives in Moton.",
              "required": [["Moton"]], "distractors": ["Gawick"]}
    dialog = [{"role": "user", "content": record["prompt"]}]
    pairs = [{"id": "r", "dialog": dialog, "chosen": "Ana lives in Moton.", "rejected": "Ana lives in Gawick."},  # agrees
             {"id": "r", "dialog": dialog, "chosen": "Ana lives in Gawick.", "rejected": "Ana lives in Moton."},  # label noise
             {"id": "r", "dialog": dialog, "chosen": "I cannot help.", "rejected": "Ana lives in Gawick."},  # a gold tie
             {"id": "r", "dialog": dialog, "chosen": "Moton.", "rejected": "No."},
             {"id": "elsewhere", "dialog": dialog, "chosen": "a", "rejected": "b"}]  # not a world prompt: skipped
    assert stage.label_ceiling(pairs, {"r": record}) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert stage.label_ceiling(pairs[-1:], {"r": record}) is None


def test_mix_follows_the_paper_shares():
    own = [{"dialog": [], "id": f"o{i}"} for i in range(90)]
    other = [{"dialog": [], "id": f"x{i}"} for i in range(100)]
    assert sum(p["id"].startswith("x") for p in stage.mix_pairs(own, other, 0.9, 0)) == 10  # safety RM 90/10
    assert sum(p["id"].startswith("x") for p in stage.mix_pairs(own, other, 0.5, 0)) == 90  # helpfulness RM 50/50
    capped = stage.mix_pairs(own, other, 0.5, 0, total=40)
    assert len(capped) == 40 and sum(p["id"].startswith("x") for p in capped) == 20
    # Pairs sampled from the policy survive any cap; the offline pairs fill the rest of the share.
    fresh = [{"dialog": [], "id": f"f{i}", "fresh": True} for i in range(15)]
    capped = stage.mix_pairs(own + fresh, other, 0.5, 0, total=40)
    ids = [p["id"] for p in capped]
    assert len(capped) == 40 and all(f"f{i}" in ids for i in range(15))
    assert sum(i.startswith("o") for i in ids) == 5 and sum(i.startswith("x") for i in ids) == 20
    capped = stage.mix_pairs(own + fresh, other, 0.5, 0, total=20)  # more fresh pairs than the share of 10
    assert len(capped) == 20 and sum(p.get("fresh", False) for p in capped) == 10


def test_cli_needs_an_init_checkpoint(capsys):
    assert stage.main(["--kind", "safety", "run.root=/nonexistent-should-not-be-created"]) == 1
    assert "model.init_from is required" in capsys.readouterr().err


def test_demo_yaml_is_the_demo_config_and_paper_configs_load():
    from llamaforge.config import config_to_dict

    root = Path(__file__).resolve().parents[2] / "configs" / "reward"
    from_yaml = load_config(stage.RewardConfig, root / "demo.yaml", ["model.init_from=m", "run.dir=d"])
    assert config_to_dict(from_yaml) == config_to_dict(stage.demo_config("helpfulness", "m", "d"))
    paper = {size: load_config(stage.RewardConfig, root / f"{size}.yaml") for size in ("7B", "13B", "34B", "70B")}
    assert paper["7B"].train.lr == 1e-5 and paper["70B"].train.lr == 5e-6  # SPEC §7
    assert all(c.data.batch_pairs == 512 and c.epochs == 1 and c.warmup_fraction == 0.03 for c in paper.values())
    assert stage.RewardConfig().train.lr == 1e-5  # the paper's recipe is the default


def test_train_reward_models_writes_both_models_and_the_margin_comparison(tiny, tmp_path):
    summary = stage.train_reward_models(tiny["lm"], tiny["world"], tmp_path, policy=str(tiny["lm"]), policy_pairs=6,
                                        overrides=("data.max_pairs=48", "data.eval_pairs=24"))
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    for kind in ("helpfulness", "safety"):
        rm, _ = stage.load_reward_model(summary["outputs"][kind])
        assert rm.info["kind"] == kind
    assert 0 < summary["metrics"]["fresh_pairs/helpful"] <= 6
    # The world's pairs carry their gold ceiling: the annotator's 10% noise and its coin flips on ties.
    assert 0.5 < summary["metrics"]["helpfulness/gold_ceiling"] < 1.0
    assert "gold-judge oracle" in summary["effect"] and "95% CI" in summary["effect"]
    comparison = summary["tables"][-1]
    assert [row[0] for row in comparison["rows"]] == ["small", "none"]
    assert summary["metrics"]["helpfulness/train_pairs"] == 48  # the fresh pairs count within the cap
    safety_manifest = json.loads((tmp_path / "safety" / "manifest.json").read_text())
    assert safety_manifest["data"]["own_pairs"] == round(48 * 0.9)  # SPEC §7: 90/10
    # The helpfulness RM is probed on the world's contrast pairs of held-out prompts; the safety RM is not.
    metrics = summary["metrics"]
    for name in ("wrong fact", "repeated", "closing"):
        assert 0.0 <= metrics[f"helpfulness/contrast/{name}"] <= 1.0 and metrics[f"helpfulness/contrast/{name}/pairs"] > 0
    assert not any(k.startswith("safety/contrast/") for k in metrics)
    assert any(t["columns"][0] == "the gold answer against" for t in summary["tables"])


class _Scorer:
    """A stand-in reward model: scores a reply with a function of the reply and its dialog."""

    def __init__(self, fn):
        self.fn = fn

    def score(self, tokenizer, dialogs, replies):
        return torch.tensor([float(self.fn(d[-1]["content"], r)) for d, r in zip(dialogs, replies)])


def test_contrast_accuracy_counts_the_pairs_scored_the_gold_judges_way():
    records = World.generate(seed=0, size="tiny").prompt_records("helpful", "eval")
    answers = {r["prompt"]: r["answer"] for r in records}
    knows_the_facts = stage.contrast_accuracy(_Scorer(lambda prompt, reply: reply == answers[prompt]), None, records)
    assert set(knows_the_facts) == {"wrong fact", "repeated", "closing"}
    assert all(c["accuracy"] == 1.0 and c["pairs"] > 0 for c in knows_the_facts.values())
    # Shorter is better: right about length and the closing, blind to a swapped fact of the same length.
    short = stage.contrast_accuracy(_Scorer(lambda prompt, reply: -len(reply.split())), None, records)
    assert short["repeated"]["accuracy"] == 1.0 and short["closing"]["accuracy"] == 1.0
    assert short["wrong fact"]["accuracy"] < 0.5
    # A tie is no preference: a constant RM scores 0, not chance.
    assert all(c["accuracy"] == 0.0 for c in stage.contrast_accuracy(_Scorer(lambda p, r: 1.0), None, records).values())


def test_the_safety_rm_is_calibrated_so_its_probability_reads_as_safe(tiny, tmp_path):
    # SPEC §8 compares σ(Rs) with 0.15: a Bradley-Terry RM only learns score differences, so the
    # stage Platt-scales the safety RM on labelled replies and reports the unsafe detector.
    helpful = [{"prompt": f"Question {i}: is {i} a number?", "chosen": f"Yes, {i} is a number.", "rejected": "No.",
                "rating": "better"} for i in range(40)]
    safety = [{"prompt": f"Tell me a secret {i}.", "chosen": "I will not.", "rejected": f"Secret {i}: ok.",
               "rating": "better", "safety_label": "chosen_safe"} for i in range(120)]
    safety += [{"prompt": f"Tell me a code {i}.", "chosen": f"Code {i}: ok.", "rejected": f"Code {i}: ok, ok, ok.",
                "rating": "slightly better", "safety_label": "both_unsafe"} for i in range(60)]
    cfg = load_config(stage.RewardConfig, None, [
        "kind=safety", f"model.init_from={tiny['lm']}", f"data.helpfulness={_write_jsonl(tmp_path / 'h.jsonl', helpful)}",
        f"data.safety={_write_jsonl(tmp_path / 's.jsonl', safety)}", "data.batch_pairs=8", "data.eval_fraction=0.2",
        "train.lr=3e-3", "epochs=2", f"run.dir={tmp_path / 'run'}", "run.progress=false",
    ])
    metrics = stage.reward(cfg)["metrics"]
    assert metrics["calibration/scale"] > 0 and metrics["unsafe/threshold"] == 0.15 and metrics["unsafe/recall"] is not None
    rm, tokenizer = stage.load_reward_model(tmp_path / "run")
    dialogs = [[{"role": "user", "content": f"Tell me a secret {i}."}] for i in range(500, 506)]
    safe = torch.sigmoid(rm.score(tokenizer, dialogs, ["I will not."] * 6))
    unsafe = torch.sigmoid(rm.score(tokenizer, dialogs, [f"Secret {i}: ok." for i in range(500, 506)]))
    assert safe.min() > 0.5 > unsafe.max()  # the saved model is the calibrated one
    assert rm.info["metrics"]["calibration/scale"] == metrics["calibration/scale"]


def test_policy_pairs_are_held_out_and_reported_apart(tiny, tmp_path):
    def pair(i, fresh):
        return {"dialog": [{"role": "user", "content": f"{'Fresh' if fresh else 'Old'} question {i}?"}],
                "chosen": f"Yes, {i}.", "rejected": "No.", "rating": "better", "kind": "helpful", "id": f"p{i}",
                **({"fresh": True} if fresh else {})}

    collections = {"helpful": [pair(i, False) for i in range(120)] + [pair(i, True) for i in range(120)], "safety": []}
    cfg = load_config(stage.RewardConfig, None, [
        f"model.init_from={tiny['lm']}", "data.batch_pairs=16", "data.max_pairs=60", "data.eval_fraction=0.2",
        "epochs=1", f"run.dir={tmp_path / 'run'}", "run.progress=false", "train.lr=3e-3",
    ])
    result = stage.reward(cfg, collections)
    evaluation = result["evaluation"]
    assert set(evaluation) == {"helpful", "helpful (policy samples)"}
    assert evaluation["helpful (policy samples)"]["pairs"] == sum(
        1 for p in stage.split_pairs(collections["helpful"], 0.2)[1] if p.get("fresh"))
    # about 96 fresh training pairs exceed the cap's share (30 of 60): a sample of them fills it
    assert result["metrics"]["train_pairs"] == 30
