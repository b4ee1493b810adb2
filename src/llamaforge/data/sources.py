"""Reading documents from text, JSONL and Parquet files (or folders of them), one string each.

- `.txt`: documents separated by blank lines (the built-in world's corpus files are written so).
- `.jsonl`: one JSON object per line; the document is its `text_key` field ("text").
- `.parquet`: the `text_key` column (needs pyarrow: `pip install 'llamaforge[parquet]'`).

A folder is read recursively, files in sorted order, so the same inputs always give the
same documents in the same order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

SUFFIXES = (".txt", ".jsonl", ".parquet")


def input_files(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Every readable file named by `inputs` (files or folders), folders expanded in sorted order."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{path} holds no {', '.join(SUFFIXES)} files")
            files += found
        elif path.is_file():
            if path.suffix not in SUFFIXES:
                raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use {', '.join(SUFFIXES)}")
            files.append(path)
        else:
            raise FileNotFoundError(f"data input {path} does not exist")
    if not files:
        raise ValueError("no data inputs given")
    return files


def iter_documents(files: Sequence[Path], text_key: str = "text") -> Iterator[str]:
    """Each document of each file, in order; empty documents are skipped."""
    readers = {".txt": _txt_documents, ".jsonl": _jsonl_documents, ".parquet": _parquet_documents}
    for file in files:
        for text in readers[file.suffix](file, text_key):
            if text:
                yield text


def _txt_documents(file: Path, text_key: str) -> Iterator[str]:
    lines: list[str] = []
    with open(file, encoding="utf-8") as f:
        try:
            for line in f:
                if line.strip():
                    lines.append(line.rstrip("\r\n"))
                elif lines:
                    yield "\n".join(lines)
                    lines = []
        except UnicodeDecodeError as e:
            raise ValueError(f"{file} is not UTF-8 text ({e}); convert it to UTF-8 first") from e
    if lines:
        yield "\n".join(lines)


def _jsonl_documents(file: Path, text_key: str) -> Iterator[str]:
    with open(file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{file}:{number} is not valid JSON ({e})") from e
            if not isinstance(record, dict) or not isinstance(record.get(text_key), str):
                raise ValueError(
                    f"{file}:{number} has no string field {text_key!r}; each line must be an object like "
                    f'{{"{text_key}": "..."}} (set data.text_key to use another field)'
                )
            yield record[text_key]


def _parquet_documents(file: Path, text_key: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(f"reading {file} needs pyarrow: pip install 'llamaforge[parquet]'") from e
    table = pq.ParquetFile(file)
    if text_key not in table.schema_arrow.names:
        raise ValueError(f"{file} has no column {text_key!r} (columns: {', '.join(table.schema_arrow.names)})")
    for batch in table.iter_batches(columns=[text_key]):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield text


def file_digest(path: Path) -> str:
    """"md5:<hex>" of a file's content: a change detector, as Meta's checklists use it."""
    from ..checkpoint import md5_file

    return "md5:" + md5_file(Path(path))


def fingerprint(files: Sequence[Path], max_hashed_bytes: int = 1 << 30) -> dict[str, str]:
    """path -> digest of its content (or size and mtime, for inputs too big to hash quickly)."""
    total = sum(f.stat().st_size for f in files)
    if total <= max_hashed_bytes:
        return {str(f): file_digest(f) for f in files}
    return {str(f): f"size:{f.stat().st_size},mtime:{int(f.stat().st_mtime)}" for f in files}
