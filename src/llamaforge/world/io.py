"""Writing a world to disk, reading it back, and reading users' own files in its place.

Layout of a world directory::

    world.json                 seed, size, which pieces came from user files, file hashes
    universe.json              the people and towns (absent when not generated)
    corpus/<category>.txt      pretraining documents, separated by a blank line
    sft.jsonl                  {"messages": [{"role", "content"}, ...]} per line
    prompts/<kind>.jsonl       helpful / adversarial / borderline prompt records
    gatt.jsonl                 Ghost Attention instructions with their turns and checks
    distillation.json          safety preprompts and per-category answer templates
    eval/<suite>.jsonl         lm-eval-like items
    preferences/<name>.jsonl   {"prompt", "chosen", "rejected", "rating"} pairs
    datacard.json, datacard.md the pretraining-data audit (SPEC §10) and judge ranges

Every reader checks each line and raises ``DataFileError`` naming the file, the line and
what to fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from llamaforge.data.sources import input_files, iter_documents
from llamaforge.world.annotator import RATINGS, SAFETY_LABELS
from llamaforge.world.corpus import Document
from llamaforge.world.evals import SUITES
from llamaforge.world.universe import Universe
from llamaforge.world.world import PROMPT_KINDS, World

FORMAT = "llamaforge-world"
FORMAT_VERSION = 1
ROLES = ("system", "user", "assistant")
CHECKS = ("uppercase", "lowercase", "starts_with", "ends_with", "contains", "language", "max_words", "max_sentences")
TASK_TYPES = ("multiple_choice", "generate")


class DataFileError(ValueError):
    """A data file that cannot be used as it is; the message says where and why."""

    def __init__(self, path, line: int | None, problem: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.problem = str(path), line, problem


# ---------------------------------------------------------------------------------------
# Writing
def _dump_jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def _dump_json(value) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2) + "\n"


def world_files(world: World, datacard: dict | None = None) -> dict[str, str]:
    """Every file of the world directory (relative path -> text), in a fixed order."""
    from llamaforge.world.datacard import build_datacard, datacard_markdown

    files: dict[str, str] = {}
    if world.universe is not None:
        files["universe.json"] = _dump_json(world.universe.to_dict())
    by_category: dict[str, list[str]] = {}
    for doc in world.corpus:
        by_category.setdefault(doc.category, []).append(doc.text)
    for category, texts in by_category.items():
        files[f"corpus/{category}.txt"] = "".join(_as_block(t) + "\n\n" for t in texts)
    files["sft.jsonl"] = _dump_jsonl(world.sft)
    for kind, records in world.prompts.items():
        files[f"prompts/{kind}.jsonl"] = _dump_jsonl(records)
    files["gatt.jsonl"] = _dump_jsonl(world.gatt)
    files["distillation.json"] = _dump_json(world.distillation)
    for suite, items in world.evals.items():
        files[f"eval/{suite}.jsonl"] = _dump_jsonl(items)
    for name, rows in world.preferences.items():
        files[f"preferences/{name}.jsonl"] = _dump_jsonl(rows)
    card = datacard if datacard is not None else build_datacard(world)
    files["datacard.json"] = _dump_json(card)
    files["datacard.md"] = datacard_markdown(card)
    return files


def _as_block(text: str) -> str:
    """A document on disk never holds a blank line (blank lines separate documents)."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return "\n".join(line for line in lines if line)


def write_world(world_or_args: World | dict, out_dir, datacard: dict | None = None) -> Path:
    """Write a world (or generate one from ``{"seed": .., "size": ..}``) to ``out_dir``.

    A directory that holds a previous world is updated in place (its old files are
    removed first); any other non-empty directory is refused, so nothing of yours is
    overwritten by accident.
    """
    world = world_or_args if isinstance(world_or_args, World) else World.generate(**world_or_args)
    out = Path(out_dir)
    manifest_path = out / "world.json"
    if out.exists() and any(out.iterdir()):
        if not manifest_path.exists():
            raise FileExistsError(f"{out} is not empty and holds no world.json; write the world to an empty "
                                  "directory (or a previous world directory)")
        previous = json.loads(manifest_path.read_text(encoding="utf-8"))
        for rel in previous.get("files", {}):
            (out / rel).unlink(missing_ok=True)
    files = world_files(world, datacard)
    for rel, text in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "seed": world.seed, "size": world.size,
        "annotator_noise": world.annotator_noise, "sources": world.sources,
        "files": {rel: {"sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "bytes": len(text.encode("utf-8"))}
                  for rel, text in files.items()},
    }
    manifest_path.write_text(_dump_json(manifest), encoding="utf-8", newline="\n")
    return out


# ---------------------------------------------------------------------------------------
# Reading and checking
def read_jsonl(path) -> list[dict]:
    """One JSON object per non-empty line."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, None, "no such file")
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFileError(path, number, f"not valid JSON ({e.msg} at column {e.colno}); "
                                                  "each line must be one JSON object") from None
            if not isinstance(value, dict):
                raise DataFileError(path, number, f"expected a JSON object, got {type(value).__name__}")
            records.append(value)
    if not records:
        raise DataFileError(path, None, "the file holds no records")
    return records


def _need_str(record: dict, key: str, path, line: int, allow_empty: bool = False) -> str:
    if key not in record:
        raise DataFileError(path, line, f"missing field {key!r}")
    value = record[key]
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise DataFileError(path, line, f"field {key!r} must be a non-empty string, got {value!r:.60}")
    return value


def _with_defaults(record: dict, **defaults) -> dict:
    """The record with missing fields filled in, its own fields kept in their order."""
    out = dict(record)
    for key, value in defaults.items():
        out.setdefault(key, value)
    return out


def check_messages(messages, path, line: int, last: str) -> None:
    """A dialog: optional system first, then user/assistant alternating, ending with
    ``last`` ("assistant" for SFT dialogs, "user" for prompts)."""
    if not isinstance(messages, list) or not messages:
        raise DataFileError(path, line, "'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
            raise DataFileError(path, line, f"message {i} must be an object with exactly 'role' and 'content'")
        if m["role"] not in ROLES:
            raise DataFileError(path, line, f"message {i} has role {m['role']!r}; use one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str) or not m["content"].strip():
            raise DataFileError(path, line, f"message {i} ({m['role']}) has empty or non-string content")
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise DataFileError(path, line, f"message roles must alternate user/assistant after an optional system "
                                            f"message; found {m['role']!r} where {expected!r} belongs")
    if not turns or turns[-1]["role"] != last:
        raise DataFileError(path, line, f"the dialog must end with a {last!r} message")


def _check_prompt(record: dict, path, line: int) -> None:
    """A prompt is a ``prompt`` string or a ``messages`` dialog ending with the user."""
    if "messages" in record:
        check_messages(record["messages"], path, line, last="user")
    else:
        _need_str(record, "prompt", path, line)


def read_sft(path) -> list[dict]:
    """SFT dialogs: one ``{"messages": [...]}`` per line, ending with the assistant."""
    records = read_jsonl(path)
    out = []
    for number, record in enumerate(records, start=1):
        check_messages(record.get("messages"), path, number, last="assistant")
        out.append(_with_defaults(record, id=f"sft-{number - 1:05d}", kind="user"))
    return out


def read_prompts(path) -> list[dict]:
    """Prompt records: ``prompt`` (or ``messages`` ending with the user), optional ``kind``
    (helpful, adversarial, borderline; default helpful), ``id`` and ``split``."""
    out = []
    for number, record in enumerate(read_jsonl(path), start=1):
        _check_prompt(record, path, number)
        kind = record.get("kind", "helpful")
        if kind not in PROMPT_KINDS:
            raise DataFileError(path, number, f"kind {kind!r} is not one of {', '.join(PROMPT_KINDS)}")
        split = record.get("split", "train")
        if split not in ("train", "eval"):
            raise DataFileError(path, number, f"split {split!r} must be 'train' or 'eval'")
        out.append(_with_defaults(record, id=f"{kind}-user-{number - 1:05d}", kind=kind, split=split))
    return out


def read_preferences(path) -> list[dict]:
    """Preference pairs: ``prompt`` (or ``messages``), ``chosen``, ``rejected``, optional
    ``rating`` (one of SPEC §7's four) and ``safety_label``."""
    out = []
    for number, record in enumerate(read_jsonl(path), start=1):
        _check_prompt(record, path, number)
        chosen = _need_str(record, "chosen", path, number)
        rejected = _need_str(record, "rejected", path, number, allow_empty=True)
        if chosen == rejected:
            raise DataFileError(path, number, "'chosen' and 'rejected' are identical; a pair needs two different responses")
        rating, _ = preference_labels(record, path, number)
        out.append(dict(record, rating=rating))
    return out


def preference_labels(record: dict, path, number: int | None) -> tuple[str | None, str | None]:
    """A preference row's optional ``rating`` (SPEC §7's four; "negligibly better / unsure"
    read as "negligibly better") and ``safety_label``, checked."""
    rating = record.get("rating")
    if rating == "negligibly better / unsure":
        rating = "negligibly better"
    if rating is not None and rating not in RATINGS:
        raise DataFileError(path, number, f"rating {rating!r} is not one of {', '.join(map(repr, RATINGS))}")
    label = record.get("safety_label")
    if label is not None and label not in SAFETY_LABELS:
        raise DataFileError(path, number, f"safety_label {label!r} is not one of {', '.join(SAFETY_LABELS)}")
    return rating, label


def read_eval(path) -> list[dict]:
    """Eval items: ``context`` and ``task_type``; multiple-choice items need ``choices``
    and a valid ``gold`` index, generation items a list of ``answers``."""
    out = []
    for number, item in enumerate(read_jsonl(path), start=1):
        _need_str(item, "context", path, number)
        task_type = item.get("task_type", "multiple_choice" if "choices" in item else "generate")
        if task_type not in TASK_TYPES:
            raise DataFileError(path, number, f"task_type {task_type!r} is not one of {', '.join(TASK_TYPES)}")
        if task_type == "multiple_choice":
            choices, gold = item.get("choices"), item.get("gold")
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
                raise DataFileError(path, number, "'choices' must be a list of at least two strings")
            if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
                raise DataFileError(path, number, f"'gold' must be an index into choices (0..{len(choices) - 1}), got {gold!r}")
        elif not isinstance(item.get("answers", []), list):
            raise DataFileError(path, number, "'answers' must be a list of strings")
        suite = item.get("suite", Path(path).stem)
        out.append(_with_defaults(item, id=f"{suite}-{number - 1:05d}", suite=suite, task_type=task_type))
    return out


def read_gatt(path) -> list[dict]:
    """GAtt records: ``instruction``, ``checks`` (known check names) and ``turns`` (each
    with a ``prompt``)."""
    out = []
    for number, record in enumerate(read_jsonl(path), start=1):
        _need_str(record, "instruction", path, number)
        checks = record.get("checks")
        if not isinstance(checks, list) or not all(isinstance(c, dict) and c.get("check") in CHECKS for c in checks):
            raise DataFileError(path, number, f"'checks' must be a list of {{\"check\": name}} objects with names from "
                                              f"{', '.join(CHECKS)}")
        turns = record.get("turns")
        if not isinstance(turns, list) or not turns:
            raise DataFileError(path, number, "'turns' must be a non-empty list of {\"prompt\": ...} objects")
        for t in turns:
            if not isinstance(t, dict):
                raise DataFileError(path, number, "each turn must be an object with a 'prompt'")
            _need_str(t, "prompt", path, number)
        out.append(_with_defaults(record, id=f"gatt-{number - 1:05d}", kind="gatt", split="train"))
    return out


def read_corpus(path) -> list[Document]:
    """Pretraining text, read by the project's document reader (``llamaforge.data.sources``):
    a ``.txt`` file (documents separated by blank lines), a ``.jsonl`` file (one
    ``{"text": ...}`` per line), a ``.parquet`` file, or a directory of them (sorted,
    recursive). Each document's category is its file's name."""
    try:
        docs = [Document(file.stem, text) for file in input_files(path) for text in iter_documents([file])]
    except (ValueError, FileNotFoundError) as e:
        raise DataFileError(path, None, str(e)) from None
    if not docs:
        raise DataFileError(path, None, "no documents found (all files are empty)")
    return docs


def _read_many(path, reader, key: str) -> dict[str, list[dict]]:
    """A directory of JSONL files (one group per file) or one file grouped by ``key``."""
    path = Path(path)
    groups: dict[str, list[dict]] = {}
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if path.is_dir() and not files:
        raise DataFileError(path, None, "the directory holds no .jsonl files")
    for file in files:
        for record in reader(file):
            groups.setdefault(record.get(key) or file.stem, []).append(record)
    return groups


def _ordered(groups: dict[str, list], order: tuple[str, ...]) -> dict[str, list]:
    """Known groups in their usual order, then any others by name."""
    return {k: groups[k] for k in list(order) + sorted(set(groups) - set(order)) if k in groups}


def load_world(path) -> World:
    """Read a world directory back (any piece may be missing, e.g. a directory of your own
    files only)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory; create one with `llamaforge world --out {root}`")
    manifest = json.loads((root / "world.json").read_text(encoding="utf-8")) if (root / "world.json").exists() else {}
    universe = None
    if (root / "universe.json").exists():
        universe = Universe.from_dict(json.loads((root / "universe.json").read_text(encoding="utf-8")))
    corpus = read_corpus(root / "corpus") if (root / "corpus").is_dir() else []
    sft = read_sft(root / "sft.jsonl") if (root / "sft.jsonl").exists() else []
    prompts = _read_many(root / "prompts", read_prompts, "kind") if (root / "prompts").is_dir() else {}
    prompts = _ordered(prompts, PROMPT_KINDS)
    gatt = read_gatt(root / "gatt.jsonl") if (root / "gatt.jsonl").exists() else []
    distillation = json.loads((root / "distillation.json").read_text(encoding="utf-8")) \
        if (root / "distillation.json").exists() else {}
    evals = _ordered(_read_many(root / "eval", read_eval, "suite") if (root / "eval").is_dir() else {}, SUITES)
    preferences = {p.stem: read_preferences(p) for p in sorted((root / "preferences").glob("*.jsonl"))} \
        if (root / "preferences").is_dir() else {}
    return World(seed=manifest.get("seed", -1), size=manifest.get("size", "custom"), universe=universe, corpus=corpus,
                 sft=sft, prompts=prompts, gatt=gatt, distillation=distillation, evals=evals,
                 preferences=preferences, sources=manifest.get("sources", {}),
                 annotator_noise=manifest.get("annotator_noise", 0.1))


def replace_pieces(world: World, corpus=None, sft=None, prompts=None, preferences=None, evals=None,
                   gatt=None) -> World:
    """The world with some pieces read from your files instead.

    ``corpus``: text/JSONL file or directory. ``sft``: messages JSONL. ``prompts``: prompt
    JSONL (or a directory); the kinds it holds replace the world's, other kinds stay.
    ``preferences``: prompt/chosen/rejected/rating JSONL (rows with a ``safety_label`` or
    kind "adversarial" form the safety collection). ``evals``: one JSONL or a directory,
    grouped by ``suite`` (default: file name). ``gatt``: GAtt JSONL.
    """
    changes, sources = {}, dict(world.sources)
    if corpus is not None:
        changes["corpus"], sources["corpus"] = read_corpus(corpus), str(corpus)
    if sft is not None:
        changes["sft"], sources["sft"] = read_sft(sft), str(sft)
    if prompts is not None:
        changes["prompts"] = {**world.prompts, **_read_many(prompts, read_prompts, "kind")}
        sources["prompts"] = str(prompts)
    if preferences is not None:
        rows = read_preferences(preferences)
        safety = [r for r in rows if r.get("safety_label") or r.get("kind") == "adversarial"]
        helpful = [r for r in rows if not (r.get("safety_label") or r.get("kind") == "adversarial")]
        changes["preferences"], sources["preferences"] = {"helpful": helpful, "safety": safety}, str(preferences)
    if evals is not None:
        changes["evals"], sources["evals"] = _read_many(evals, read_eval, "suite"), str(evals)
    if gatt is not None:
        changes["gatt"], sources["gatt"] = read_gatt(gatt), str(gatt)
    return dataclasses.replace(world, sources=sources, **changes)
