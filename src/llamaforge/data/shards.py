"""Corpora -> token shards on disk: flat arrays of token ids, memory-mapped for training.

Each document becomes `BOS + tokens + EOS` and documents are concatenated, Llama style (no
padding; packing into fixed-length sequences happens at read time, see `packing.py`). The
ids are stored as uint16 when the vocabulary fits (Llama 2's 32,000 does), else uint32.
A document goes to the validation split when a hash of its text falls below
`val_fraction`, so the split depends only on the text itself: not on file order, worker
count or shard size, and exact duplicates never straddle the two splits.

Layout of a shard folder:
    index.json               dtype, vocab, tokenizer and input fingerprints, shard lists
    train-00000.bin ...      raw little-endian token ids
    val-00000.bin ...
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import atomic_dir
from .sources import file_digest, fingerprint, input_files, iter_documents

FORMAT = "llamaforge-token-shards"
VERSION = 1
INDEX = "index.json"
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def is_validation(text: str, val_fraction: float) -> bool:
    """The document's split: a hash of its UTF-8 text, read as a number in [0, 1)."""
    if val_fraction <= 0:
        return False
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def tokenize_corpus(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    tokenizer: Any,
    out_dir: str | os.PathLike,
    *,
    val_fraction: float = 0.005,
    text_key: str = "text",
    shard_tokens: int = 1 << 27,
    num_threads: int = 0,
    chunk_documents: int = 2048,
    progress: bool = True,
) -> Path:
    """Tokenize text / JSONL / Parquet files or folders into token shards under `out_dir`.

    `tokenizer` is a `llamaforge.Tokenizer`. Documents are encoded in batches by
    SentencePiece's C++ threads (`num_threads`, 0 = all cores), in input order, so the
    output is the same whatever the thread count. A shard is closed at the first document
    boundary after `shard_tokens` tokens. If `out_dir` already holds shards of the same
    inputs, tokenizer and split they are reused; shards of anything else are an error
    (delete the folder or choose another). The folder is written atomically.
    """
    out = Path(out_dir)
    files = input_files(inputs)
    identity = {
        "inputs": fingerprint(files),
        "tokenizer": file_digest(Path(tokenizer.model_path)),
        "val_fraction": val_fraction,
        "text_key": text_key,
    }
    if (out / INDEX).exists():
        index = read_index(out)
        if all(index.get(k) == v for k, v in identity.items()):
            return out
        raise FileExistsError(
            f"{out} holds token shards of other inputs, another tokenizer or another split; delete it or choose "
            "another folder for the shards"
        )
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    dtype = token_dtype(tokenizer.vocab_size)
    total_bytes = sum(f.stat().st_size for f in files if f.suffix != ".parquet") or None
    with atomic_dir(out) as tmp:
        writers = {split: _ShardWriter(tmp, split, dtype, shard_tokens) for split in SPLITS}
        bar = _progress(total_bytes, progress)
        for chunk in _chunks(iter_documents(files, text_key), chunk_documents):
            encoded = tokenizer.encode_batch(chunk, bos=True, eos=True, num_threads=num_threads or -1)
            for text, ids in zip(chunk, encoded):
                writers["val" if is_validation(text, val_fraction) else "train"].add(ids)
            if bar is not None:
                bar.update(sum(len(t.encode("utf-8")) + 2 for t in chunk))
        if bar is not None:
            bar.close()
        index = {
            "format": FORMAT,
            "version": VERSION,
            "dtype": dtype.name,
            "vocab_size": tokenizer.vocab_size,
            "bos_id": tokenizer.bos_id,
            "eos_id": tokenizer.eos_id,
            **identity,
            "splits": {split: writers[split].close() for split in SPLITS},
        }
        if not index["splits"]["train"]:
            raise ValueError(f"no training documents in {', '.join(map(str, files))}")
        (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return out


def read_index(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / INDEX
    if not path.exists():
        raise FileNotFoundError(f"{directory} holds no token shards ({INDEX} is missing); tokenize a corpus first")
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT:
        raise ValueError(f"{path} is not a llamaforge token-shard index")
    return index


class _ShardWriter:
    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self.file = None

    def add(self, ids: list[int]) -> None:
        if self.file is None:
            name = f"{self.split}-{len(self.shards):05d}.bin"
            self.file = open(self.folder / name, "wb")
            self.shards.append({"file": name, "tokens": 0, "documents": 0})
        np.asarray(ids, dtype=self.dtype).tofile(self.file)
        shard = self.shards[-1]
        shard["tokens"] += len(ids)
        shard["documents"] += 1
        if shard["tokens"] >= self.shard_tokens:
            self.file.close()
            self.file = None

    def close(self) -> list[dict[str, Any]]:
        if self.file is not None:
            self.file.close()
            self.file = None
        return self.shards


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _progress(total: int | None, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", dynamic_ncols=True)


class TokenShards:
    """One split of a shard folder, memory-mapped: `arrays` holds one read-only array per shard."""

    def __init__(self, directory: str | os.PathLike, split: str = "train"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.directory = Path(directory)
        self.index = read_index(directory)
        self.split = split
        self.dtype = np.dtype(self.index["dtype"])
        self.vocab_size = int(self.index["vocab_size"])
        self.arrays = [
            np.memmap(self.directory / s["file"], dtype=self.dtype, mode="r", shape=(s["tokens"],))
            for s in self.index["splits"][split]
            if s["tokens"] > 0
        ]

    @property
    def num_tokens(self) -> int:
        return sum(len(a) for a in self.arrays)

    def token_counts(self) -> np.ndarray:
        """How often each id occurs in this split (streamed shard by shard)."""
        counts = np.zeros(self.vocab_size, dtype=np.int64)
        for array in self.arrays:
            for start in range(0, len(array), 1 << 24):
                counts += np.bincount(array[start : start + (1 << 24)], minlength=self.vocab_size)[: self.vocab_size]
        return counts
