"""Loaders for the usual local layouts of public benchmarks, turned into the harness's
multiple-choice items (`{"id", "task_type", "context", "choices", "gold"}`). Nothing is
downloaded: point them at the files you have.

- MMLU: the original CSV release (`data/{dev,val,test}/<subject>_<split>.csv`, rows
  `question, A, B, C, D, answer letter`, no header), a folder of those or one file; or a JSONL
  with `question`, `choices` (4) and `answer` (index or letter) as on the Hugging Face hub.
- BoolQ: JSONL with `question`, `passage` and `answer` (bool, Google's release) or `label`
  (SuperGLUE: 1 = true).
- HellaSwag: JSONL (the original release or the hub's) with `ctx` (or `ctx_a` + `ctx_b`),
  `endings` and `label`; `activity_label` prefixes the context as lm-eval does.
- TruthfulQA MC: the original `mc_task.json` (a list of `{"question", "mc1_targets": {answer: 0/1}}`)
  or the hub's layout (`mc1_targets: {"choices": [...], "labels": [...]}`), JSON or JSONL; MC1.

    from llamaforge.eval.loaders import load_benchmark
    items = load_benchmark("mmlu", "~/data/mmlu/data/test")
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from ..world.io import read_jsonl

LETTERS = "ABCD"


class BenchmarkFormatError(ValueError):
    """A file that does not have the layout its loader reads; the message says where and what."""


def _records(path: Path) -> list[dict]:
    """Rows of a JSONL file, or of a JSON file holding a list of objects."""
    if path.suffix == ".json":
        value = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(value, list):
            raise BenchmarkFormatError(f"{path}: expected a JSON list of objects")
        return value
    return read_jsonl(path)


def _rows(path, pattern: str) -> Iterator[tuple[str, dict]]:
    """(`file:line`, row) for each row of each matching file under `path` (or of the file)."""
    for file in _files(path, pattern):
        for number, row in enumerate(_records(file), 1):
            yield f"{file}:{number}", row


def _files(path: Path, pattern: str) -> list[Path]:
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob(pattern) if p.is_file())
        if not files:
            raise BenchmarkFormatError(f"{path} holds no {pattern} files")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return [path]


def _need(row: dict, key: str, where: str):
    if key not in row:
        raise BenchmarkFormatError(f"{where}: missing field {key!r} (has {sorted(row)})")
    return row[key]


def _subject(file: Path) -> str:
    return re.sub(r"_(dev|val|test|train)$", "", file.stem).replace("_", " ")


def _mmlu_item(subject: str, question: str, options: list[str], answer, where: str) -> dict:
    if len(options) != 4:
        raise BenchmarkFormatError(f"{where}: MMLU items have 4 options, got {len(options)}")
    if isinstance(answer, str) and answer.strip().upper() in LETTERS:
        gold = LETTERS.index(answer.strip().upper())
    elif isinstance(answer, int) and 0 <= answer < 4:
        gold = answer
    else:
        raise BenchmarkFormatError(f"{where}: answer should be A-D or 0-3, got {answer!r}")
    # lm-eval's MMLU prompt: the options listed, the letter scored.
    lines = [f"The following are multiple choice questions (with answers) about {subject}.", "", question.strip()]
    lines += [f"{letter}. {option}" for letter, option in zip(LETTERS, options)]
    return {"task_type": "multiple_choice", "context": "\n".join(lines) + "\nAnswer:", "choices": list(LETTERS),
            "gold": gold, "subject": subject}


def load_mmlu(path) -> list[dict]:
    items = []
    for file in [Path(path)] if str(path).endswith(".jsonl") else _files(path, "*.csv"):
        if file.suffix == ".jsonl":
            for where, row in _rows(file, "*.jsonl"):
                subject = str(row.get("subject", _subject(file))).replace("_", " ")
                items.append(_mmlu_item(subject, _need(row, "question", where), list(_need(row, "choices", where)),
                                        _need(row, "answer", where), where))
            continue
        with open(file, newline="", encoding="utf-8") as f:
            for number, row in enumerate(csv.reader(f), 1):
                where = f"{file}:{number}"
                if len(row) != 6:
                    raise BenchmarkFormatError(f"{where}: expected 6 columns (question, A, B, C, D, answer), got {len(row)}")
                items.append(_mmlu_item(_subject(file), row[0], row[1:5], row[5], where))
    return _numbered("mmlu", items)


def _load(name: str, path, pattern: str, make: Callable[[str, dict], dict]) -> list[dict]:
    return _numbered(name, [make(where, row) for where, row in _rows(path, pattern)])


def _boolq_item(where: str, row: dict) -> dict:
    if "answer" in row:
        gold = int(bool(row["answer"]))
    elif "label" in row:
        gold = int(row["label"])
    else:
        raise BenchmarkFormatError(f"{where}: BoolQ rows need 'answer' (true/false) or 'label' (0/1)")
    question = str(_need(row, "question", where)).strip()
    question = question[:1].upper() + question[1:]
    passage = str(_need(row, "passage", where)).strip()
    return {"task_type": "multiple_choice", "choices": ["no", "yes"], "gold": gold,
            "context": f"{passage}\nQuestion: {question.rstrip('?')}?\nAnswer:"}


def load_boolq(path) -> list[dict]:
    return _load("boolq", path, "*.jsonl", _boolq_item)


def _hellaswag_text(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag_item(where: str, row: dict) -> dict:
    if "ctx_a" in row:
        ctx = row["ctx_a"] + " " + str(row.get("ctx_b", "")).capitalize()
    else:
        ctx = _need(row, "ctx", where)
    label = _need(row, "label", where)
    endings = [_hellaswag_text(e) for e in _need(row, "endings", where)]
    if label == "" or not 0 <= int(label) < len(endings):
        raise BenchmarkFormatError(f"{where}: label {label!r} is not an index into the {len(endings)} endings")
    prefix = f"{row['activity_label']}: " if row.get("activity_label") else ""
    return {"task_type": "multiple_choice", "context": _hellaswag_text(prefix + ctx), "choices": endings,
            "gold": int(label)}


def load_hellaswag(path) -> list[dict]:
    return _load("hellaswag", path, "*.jsonl", _hellaswag_item)


def _truthfulqa_item(where: str, row: dict) -> dict:
    targets = _need(row, "mc1_targets", where)
    if isinstance(targets, dict) and "choices" in targets:
        choices, labels = list(targets["choices"]), list(targets["labels"])
    elif isinstance(targets, dict):
        choices, labels = list(targets), list(targets.values())
    else:
        raise BenchmarkFormatError(f"{where}: mc1_targets should map answers to 0/1")
    if sum(labels) != 1:
        raise BenchmarkFormatError(f"{where}: MC1 needs exactly one true answer, got {sum(labels)}")
    return {"task_type": "multiple_choice", "choices": choices, "gold": labels.index(1),
            "context": f"Q: {str(_need(row, 'question', where)).strip()}\nA:"}


def load_truthfulqa_mc(path) -> list[dict]:
    return _load("truthfulqa_mc", path, "*.json*", _truthfulqa_item)


def _numbered(name: str, items: list[dict]) -> list[dict]:
    return [{"id": f"{name}-{i:05d}", **item} for i, item in enumerate(items)]


LOADERS: dict[str, Callable[[str | Path], list[dict]]] = {
    "mmlu": load_mmlu, "boolq": load_boolq, "hellaswag": load_hellaswag, "truthfulqa_mc": load_truthfulqa_mc,
}


def load_benchmark(name: str, path) -> list[dict]:
    """Items of benchmark `name` (one of `LOADERS`) read from the local file or folder `path`."""
    if name not in LOADERS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(LOADERS)}")
    return LOADERS[name](path)
