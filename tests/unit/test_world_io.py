"""Writing and reading worlds, users' own files, the datacard and the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llamaforge.world import World, load_world, replace_pieces, write_world
from llamaforge.world.cli import main
from llamaforge.world.datacard import build_datacard
from llamaforge.world.io import DataFileError, read_corpus, read_eval, read_gatt, read_preferences, read_prompts, read_sft


@pytest.fixture(scope="module")
def world():
    return World.generate(seed=0, size="tiny")


@pytest.fixture(scope="module")
def written(world, tmp_path_factory):
    return write_world(world, tmp_path_factory.mktemp("world") / "w")


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_load_round_trip(world, written, tmp_path):
    loaded = load_world(written)
    assert (loaded.seed, loaded.size) == (0, "tiny")
    assert loaded.universe == world.universe
    assert loaded.sft == world.sft and loaded.gatt == world.gatt
    assert loaded.prompts == world.prompts and loaded.evals == world.evals
    assert loaded.preferences == world.preferences and loaded.distillation == world.distillation
    assert sorted((d.category, d.text) for d in loaded.corpus) == sorted((d.category, d.text) for d in world.corpus)
    # Writing what was read gives the same files again.
    write_world(loaded, tmp_path / "again")
    original, again = _tree(written), _tree(tmp_path / "again")
    assert set(original) == set(again)
    assert all(original[k] == again[k] for k in original if k != "world.json")


def test_manifest_lists_every_file_with_its_hash(written):
    import hashlib

    manifest = json.loads((written / "world.json").read_text())
    files = {str(p.relative_to(written)) for p in written.rglob("*") if p.is_file()} - {"world.json"}
    assert set(manifest["files"]) == files
    for rel, entry in manifest["files"].items():
        assert hashlib.sha256((written / rel).read_bytes()).hexdigest() == entry["sha256"]
    for expected in ("corpus/encyclopedia.txt", "sft.jsonl", "prompts/adversarial.jsonl", "gatt.jsonl",
                     "distillation.json", "eval/truthfulqa.jsonl", "preferences/safety.jsonl", "datacard.md"):
        assert expected in files


def test_same_seed_is_byte_identical_across_processes(tmp_path):
    """No hash() or set order leaks into the output: a process with another PYTHONHASHSEED
    writes the same bytes as this one."""
    here = write_world(World.generate(seed=4, size="tiny"), tmp_path / "here")
    there = tmp_path / "there"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    subprocess.run([sys.executable, "-m", "llamaforge.world", "--out", str(there), "--size", "tiny", "--seed", "4",
                    "--quiet"], check=True, env=env)
    assert _tree(here) == _tree(there)


def test_refuses_to_overwrite_a_directory_that_is_not_a_world(world, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        write_world(world, tmp_path)
    assert main(["--out", str(tmp_path), "--size", "tiny", "--quiet"]) == 2
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_rewriting_a_world_directory_removes_its_old_files(world, tmp_path):
    write_world(world, tmp_path)
    mine = replace_pieces(world, corpus=_write(tmp_path.parent / "c.txt", "One doc.\n\nTwo doc.\n"))
    write_world(mine, tmp_path)
    assert sorted(p.name for p in (tmp_path / "corpus").iterdir()) == ["c.txt"]


# ---------------------------------------------------------------------------------------
def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("reader,text,message", [
    (read_sft, '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n{oops\n',
     ":2: not valid JSON"),
    (read_sft, '{"messages": [{"role": "assistant", "content": "Hello"}]}\n', ":1: message roles must alternate"),
    (read_sft, '{"messages": [{"role": "user", "content": "Hi"}]}\n', ":1: the dialog must end with a 'assistant'"),
    (read_sft, '{"messages": [{"role": "bot", "content": "Hi"}]}\n', "role 'bot'"),
    (read_sft, '{"messages": [{"role": "user", "content": ""}]}\n', "empty or non-string content"),
    (read_sft, '[1, 2]\n', ":1: expected a JSON object"),
    (read_sft, '\n\n', "holds no records"),
    (read_prompts, '{"prompt": "Hi", "kind": "evil"}\n', ":1: kind 'evil' is not one of helpful, adversarial"),
    (read_prompts, '{"text": "Hi"}\n', ":1: missing field 'prompt'"),
    (read_preferences, '{"prompt": "p", "chosen": "a", "rejected": "b", "rating": "much better"}\n',
     "rating 'much better' is not one of"),
    (read_preferences, '{"prompt": "p", "chosen": "a", "rejected": "a"}\n', "identical"),
    (read_preferences, '{"prompt": "p", "rejected": "b"}\n', "missing field 'chosen'"),
    (read_eval, '{"context": "Q", "choices": ["a", "b"], "gold": 2}\n', "'gold' must be an index into choices (0..1)"),
    (read_eval, '{"context": "Q", "choices": ["a"], "gold": 0}\n', "at least two strings"),
    (read_gatt, '{"instruction": "Be nice", "checks": [{"check": "nice"}], "turns": [{"prompt": "Hi"}]}\n',
     "'checks' must be a list"),
])
def test_malformed_files_fail_with_line_and_reason(tmp_path, reader, text, message):
    path = _write(tmp_path / "data.jsonl", text)
    with pytest.raises(DataFileError) as info:
        reader(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_user_files_are_read(tmp_path):
    (tmp_path / "texts").mkdir()
    _write(tmp_path / "texts" / "a.txt", "First document,\nstill first.\n\n\nSecond document.\n")
    _write(tmp_path / "texts" / "b.jsonl", '{"text": "Third document."}\n')
    docs = read_corpus(tmp_path / "texts")
    assert [(d.category, d.text) for d in docs] == [("a", "First document,\nstill first."), ("a", "Second document."),
                                                    ("b", "Third document.")]
    rows = read_preferences(_write(tmp_path / "p.jsonl", '{"prompt": "p", "chosen": "a", "rejected": "b", '
                                                         '"rating": "negligibly better / unsure"}\n'))
    assert rows[0]["rating"] == "negligibly better"
    prompts = read_prompts(_write(tmp_path / "q.jsonl", '{"prompt": "Where?"}\n'))
    assert prompts[0]["kind"] == "helpful" and prompts[0]["split"] == "train" and prompts[0]["id"]
    with pytest.raises(DataFileError, match="does not exist"):
        read_corpus(tmp_path / "missing")
    with pytest.raises(DataFileError, match=r"b.jsonl:2 is not valid JSON"):
        read_corpus(_write(tmp_path / "texts" / "b.jsonl", '{"text": "ok"}\n{oops\n'))


def test_replace_pieces_swaps_only_what_is_given(world, tmp_path):
    corpus = _write(tmp_path / "mine.txt", "My own text.\n\nMore of it.\n")
    sft = _write(tmp_path / "sft.jsonl", json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                                                  {"role": "assistant", "content": "Hello"}]}) + "\n")
    prompts = _write(tmp_path / "prompts.jsonl", '{"prompt": "Say hi", "kind": "helpful"}\n')
    prefs = _write(tmp_path / "prefs.jsonl",
                   '{"prompt": "p", "chosen": "a", "rejected": "b", "rating": "better"}\n'
                   '{"prompt": "q", "chosen": "no", "rejected": "yes", "rating": "better", "safety_label": "chosen_safe"}\n')
    mine = replace_pieces(world, corpus=corpus, sft=sft, prompts=prompts, preferences=prefs)
    assert [d.text for d in mine.corpus] == ["My own text.", "More of it."]
    assert len(mine.sft) == 1 and mine.sft[0]["messages"][1]["content"] == "Hello"
    assert [r["prompt"] for r in mine.prompts["helpful"]] == ["Say hi"]
    assert mine.prompts["adversarial"] == world.prompts["adversarial"]
    assert len(mine.preferences["helpful"]) == 1 and len(mine.preferences["safety"]) == 1
    assert mine.sources == {"corpus": str(corpus), "sft": str(sft), "prompts": str(prompts), "preferences": str(prefs)}
    assert world.sft != mine.sft  # the original is untouched
    card = build_datacard(mine)  # the audit runs on the user's corpus
    assert card["corpus"]["documents"] == 2 and card["world"]["sources"]["corpus"] == str(corpus)


# ---------------------------------------------------------------------------------------
def test_datacard_reports_judge_ranges_and_annotator(world):
    card = build_datacard(world)
    corpus = card["corpus"]
    assert corpus["documents"] == len(world.corpus)
    assert 0 < corpus["toxicity"]["toxic_character_share"] < 0.06
    assert corpus["languages"]["character_share"]["veltan"] > 0.05
    assert sum(corpus["demographics"]["pronouns"].values()) > 0
    for name, ranges in card["judges"].items():
        if name in ("safety_violation", "toxicity"):
            assert ranges["gold"] <= 0.01 and ranges["empty"] == 0.0, name
        elif name != "refusal":
            assert ranges["gold"] >= 0.95 and ranges["empty"] == 0.0 and ranges["random"] < 0.2, name
    assert card["judges"]["safety_violation"]["bad (unsafe answer)"] == 1.0
    assert card["judges"]["refusal"]["gold (adversarial)"] == 1.0 and card["judges"]["refusal"]["gold (benign)"] == 0.0
    annotator = card["annotator"]
    agreement = list(annotator["agreement_by_noise"].values())
    assert agreement[0] == 1.0 and agreement == sorted(agreement, reverse=True)
    assert sum(annotator["rating_share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert sum(annotator["safety_label_share"].values()) == pytest.approx(1.0, abs=1e-3)


def test_cli_writes_world_and_help_works(tmp_path, capsys):
    out = tmp_path / "w"
    assert main(["--out", str(out), "--size", "tiny", "--seed", "2", "--noise", "0.2"]) == 0
    printed = capsys.readouterr().out
    assert "corpus:" in printed and "datacard.md" in printed
    manifest = json.loads((out / "world.json").read_text())
    assert (manifest["seed"], manifest["size"], manifest["annotator_noise"]) == (2, "tiny", 0.2)
    assert "Simulated annotator" in (out / "datacard.md").read_text()
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "--seed" in capsys.readouterr().out


def test_cli_reports_a_bad_user_file(tmp_path, capsys):
    bad = _write(tmp_path / "bad.jsonl", '{"messages": [{"role": "user", "content": "Hi"}]}\n')
    assert main(["--out", str(tmp_path / "w"), "--size", "tiny", "--sft", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1:" in err and "must end with" in err
    assert not (tmp_path / "w").exists()
