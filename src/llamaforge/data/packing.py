"""Token shards -> fixed-length training sequences and the batches each rank reads.

The token stream (documents joined by BOS/EOS) is cut into windows of `seq_len + 1`
tokens starting every `seq_len` tokens: inputs are a window's first `seq_len` tokens,
targets its last `seq_len`, so every token is predicted exactly once per epoch. Windows
never span two shard files (each shard loses under `seq_len` tokens at its end).

`PackedBatches` walks a seeded permutation of the windows, one permutation per epoch.
Each micro-batch step takes the next `batch_size * world_size` windows of the permutation
and rank r reads its slice [r*batch_size, (r+1)*batch_size): the same global batch whatever
the number of ranks. Its position (epoch, windows consumed) is its `state_dict()`, saved in
every checkpoint, so a resumed run sees exactly the data an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .shards import TokenShards


class PackedSequences:
    """Windows of `seq_len + 1` tokens over a split's shards, indexable like a list."""

    def __init__(self, shards: TokenShards, seq_len: int):
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        self.shards, self.seq_len = shards, seq_len
        counts = [max(0, (len(a) - 1) // seq_len) for a in shards.arrays]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def window(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range [0, {len(self)})")
        shard = int(np.searchsorted(self.starts, i, side="right")) - 1
        offset = (i - int(self.starts[shard])) * self.seq_len
        return self.shards.arrays[shard][offset : offset + self.seq_len + 1]

    def batch(self, indices) -> dict[str, torch.Tensor]:
        """{"inputs": [B, seq_len], "targets": [B, seq_len]} int64 for the given windows."""
        rows = np.stack([self.window(int(i)) for i in indices]).astype(np.int64)
        tokens = torch.from_numpy(rows)
        return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}


class PackedBatches:
    """Endless shuffled micro-batches of `batch_size` windows for one rank; resumable."""

    def __init__(
        self,
        sequences: PackedSequences,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ):
        self.sequences, self.batch_size, self.seed = sequences, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.global_batch = batch_size * world_size
        if len(sequences) < self.global_batch:
            raise ValueError(
                f"the data holds {len(sequences)} sequences of {sequences.seq_len} tokens, fewer than one micro-batch "
                f"of {batch_size} per rank x {world_size} ranks; add data or lower the batch size or sequence length"
            )
        self.epoch, self.position = 0, 0
        self._order: np.ndarray | None = None
        self._order_epoch = -1

    def order(self, epoch: int) -> np.ndarray:
        """The window order of one epoch: a permutation seeded by (seed, epoch)."""
        if self._order_epoch != epoch:
            n = len(self.sequences)
            self._order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._order_epoch = epoch
        return self._order

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.position + self.global_batch > len(self.sequences):
            self.epoch, self.position = self.epoch + 1, 0
        start = self.position + self.rank * self.batch_size
        indices = self.order(self.epoch)[start : start + self.batch_size]
        self.position += self.global_batch
        return self.sequences.batch(indices)

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.position / len(self.sequences)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "sequences": len(self.sequences)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["sequences"] != len(self.sequences) or state["seed"] != self.seed:
            raise ValueError(
                f"the checkpoint's data position is for {state['sequences']} sequences with seed {state['seed']}, "
                f"but this data has {len(self.sequences)} with seed {self.seed}; resume with the same data, "
                "seq_len and seed"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def eval_batches(
    sequences: PackedSequences, batch_size: int, *, rank: int = 0, world_size: int = 1, max_batches: int = 0
) -> list[dict[str, torch.Tensor]]:
    """The first windows of a (validation) split in order, as this rank's micro-batches.

    Only whole global batches are used, so every rank runs the same number of forward
    passes (FSDP needs that). max_batches: global batches at most (0 = all).
    """
    global_batch = batch_size * world_size
    n = len(sequences) // global_batch
    if max_batches:
        n = min(n, max_batches)
    if n == 0:
        raise ValueError(
            f"the validation split has {len(sequences)} sequences of {sequences.seq_len} tokens, fewer than one batch "
            f"of {global_batch}; raise data.val_fraction or lower the batch size"
        )
    return [
        sequences.batch(range(b * global_batch + rank * batch_size, b * global_batch + (rank + 1) * batch_size))
        for b in range(n)
    ]


def unigram_perplexity(train: TokenShards, targets: np.ndarray) -> float:
    """Perplexity of a unigram model (add-one smoothed train-split frequencies) on `targets`.

    The baseline a language model must beat: it knows which tokens are common, nothing of
    context.
    """
    counts = train.token_counts().astype(np.float64) + 1.0
    log_probs = np.log(counts / counts.sum())
    return float(math.exp(-log_probs[np.asarray(targets, dtype=np.int64)].mean()))
