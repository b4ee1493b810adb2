"""Reward models (SPEC §7): a helpfulness RM and a safety RM, each the Transformer trunk with
its LM head replaced by a scalar head that reads the last token of the dialog + reply.

    llamaforge reward --kind helpfulness model.init_from=runs/demo/02-sft
    llamaforge reward --kind safety --config configs/reward/7B.yaml model.init_from=llama-2-7b-chat-hf
    llamaforge reward --kind helpfulness data.inputs=my_pairs.jsonl reward_margin=large

Reads top to bottom: preference pairs (the built-in world's offline pairs, optionally fresh
pairs sampled from a policy and labelled by the world's annotator, or the user's JSONL), the
data mix of SPEC §7, the reward model initialised from any checkpoint `load_model` reads,
1 epoch of the margin ranking loss through the shared training core, then the evaluation
(accuracy per rating and per safety label, calibration, score histograms) in summary.json.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn

from ..checkpoint import atomic_dir, load_state_dict, resolve_tokenizer_path, latest_checkpoint
from ..losses import REWARD_MARGINS, margin_ranking_loss
from ..model import ModelArgs, Transformer

STAGE = "reward"
REWARD_MODEL_FILE = "reward_model.json"  # marks a saved reward model folder
WEIGHTS_FILE = "model.safetensors"
RATINGS = ("significantly better", "better", "slightly better", "negligibly better")  # SPEC §7, as world.RATINGS


# --------------------------------------------------------------------------- the model


class RewardModel(nn.Module):
    """The Transformer trunk with a scalar regression head instead of the LM head (SPEC §7).

    `forward(tokens, lengths)` returns one score per row, read at each row's last real token
    (`lengths - 1`); rows are right-padded, which causal attention makes exact without a mask.
    """

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.trunk = Transformer(args)
        self.trunk.output = None  # the LM head is replaced, not kept (SPEC §7)
        self.head = nn.Linear(args.dim, 1)
        if not self.head.weight.is_meta:
            self.init_head()

    @property
    def args(self) -> ModelArgs:
        return self.trunk.args

    @torch.no_grad()
    def init_weights(self) -> None:
        self.trunk.init_weights()
        self.init_head()

    @torch.no_grad()
    def init_head(self) -> None:
        # Small random weights and a zero bias: every reply starts near score 0.
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(self.args.dim + 1))
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] right-padded, lengths [B] -> scores [B] (fp32)."""
        hidden = self.trunk.hidden_states(tokens)
        last = hidden[torch.arange(tokens.shape[0], device=tokens.device), lengths.to(tokens.device) - 1]
        return self.head(last).squeeze(-1).float()

    def score(self, tokenizer, dialogs: Sequence[Sequence[dict]], replies: Sequence[str], *,
              batch_size: int = 32) -> torch.Tensor:
        """The reward of each reply to its dialog (a dialog ends with the user's message): one
        float per pair, on the CPU, in input order. Batched by length, in inference mode."""
        if len(dialogs) != len(replies):
            raise ValueError(f"score needs one reply per dialog; got {len(dialogs)} dialogs and {len(replies)} replies")
        sequences = [encode_pair(tokenizer, dialog, reply, self.args.max_seq_len) for dialog, reply in zip(dialogs, replies)]
        return self.score_tokens(sequences, batch_size=batch_size)

    def score_tokens(self, sequences: Sequence[Sequence[int]], *, batch_size: int = 32) -> torch.Tensor:
        """Scores of already encoded dialogs + replies (see `encode_pair`)."""
        device = next(self.parameters()).device
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        out = torch.zeros(len(sequences))
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(order), batch_size):
                    rows = order[start : start + batch_size]
                    tokens, lengths = right_pad([sequences[i] for i in rows])
                    out[rows] = self(tokens.to(device), lengths.to(device)).cpu()
        finally:
            self.train(was_training)
        return out

    def save(self, out_dir: str | os.PathLike, tokenizer_path: str | os.PathLike, **info: Any) -> Path:
        """Write params.json, model.safetensors, tokenizer.model and reward_model.json (with
        `info`, e.g. kind and metrics) atomically: a crash leaves no half-written folder."""
        import shutil

        from safetensors.torch import save_file

        out = Path(out_dir)
        with atomic_dir(out) as tmp:
            (tmp / "params.json").write_text(json.dumps(self.args.to_dict(), indent=2) + "\n")
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            shutil.copyfile(tokenizer_path, tmp / "tokenizer.model")
            (tmp / REWARD_MODEL_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
        return out


def reward_init_state(state: dict[str, torch.Tensor], args: ModelArgs, seed: int = 0) -> dict[str, torch.Tensor]:
    """A reward model's initial weights from a language model's state dict (Meta names): the
    trunk copied, the LM head dropped, a fresh scalar head (seeded)."""
    if any(k.startswith(("trunk.", "head.")) for k in state):
        return dict(state)  # already a reward model: continue from it
    out = {f"trunk.{k}": v for k, v in state.items() if k != "output.weight"}
    generator = torch.Generator().manual_seed(seed)
    out["head.weight"] = torch.randn(1, args.dim, generator=generator) / math.sqrt(args.dim + 1)
    out["head.bias"] = torch.zeros(1)
    return out


def reward_model_from_checkpoint(path: str | os.PathLike, *, seed: int = 0, device="cpu",
                                 dtype: torch.dtype = torch.float32) -> RewardModel:
    """A reward model initialised from any checkpoint `load_model` reads (Meta, HF, llamaforge
    run or checkpoint folder), or from a saved reward model."""
    args, state = _read_reward_or_lm(Path(path))
    with torch.device("meta"):
        model = RewardModel(args)
    state = {k: v.to(device=device, dtype=dtype) for k, v in reward_init_state(state, args, seed).items()}
    model.load_state_dict(state, assign=True)
    return model.eval()


def _read_reward_or_lm(path: Path) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    if (path / REWARD_MODEL_FILE).exists():
        from safetensors.torch import load_file

        from ..checkpoint import read_params

        state = load_file(str(path / WEIGHTS_FILE))
        return read_params(path, {k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")}), state
    return load_state_dict(path)


def load_reward_model(path: str | os.PathLike, *, device="cpu",
                      dtype: torch.dtype = torch.float32) -> tuple[RewardModel, Any]:
    """(reward model, tokenizer) from a folder written by `RewardModel.save` (or a reward run
    folder, whose final reward model is in `reward_model/`). Anything else raises a ValueError
    that says what the folder holds and what was expected."""
    from ..tokenizer import Tokenizer

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"reward model folder {path} does not exist")
    if not (path / REWARD_MODEL_FILE).exists() and (path / "reward_model" / REWARD_MODEL_FILE).exists():
        path = path / "reward_model"
    if not (path / REWARD_MODEL_FILE).exists():
        hint = ""
        if latest_checkpoint(path) is not None or (path / "params.json").exists() or (path / "config.json").exists():
            hint = (" It looks like a language-model checkpoint: train a reward model from it with "
                    f"`llamaforge reward --kind helpfulness model.init_from={path}`.")
        raise ValueError(f"{path} is not a reward model folder (no {REWARD_MODEL_FILE}); expected the output of "
                         f"`llamaforge reward` or RewardModel.save.{hint}")
    tokenizer_path = resolve_tokenizer_path(path)
    if tokenizer_path is None:
        raise FileNotFoundError(f"{path} has no tokenizer.model; a reward model folder carries its tokenizer")
    model = reward_model_from_checkpoint(path, device=device, dtype=dtype)
    model.info = json.loads((path / REWARD_MODEL_FILE).read_text())
    return model, Tokenizer(tokenizer_path)


def encode_pair(tokenizer, dialog: Sequence[dict], reply: str, max_len: int) -> list[int]:
    """`encode_dialog(dialog + reply)`; when longer than the context, the oldest tokens go (the
    head reads the last token, so the end of the reply must stay)."""
    from ..chat_format import encode_dialog

    tokens = encode_dialog(tokenizer, [*dialog, {"role": "assistant", "content": reply}])
    return tokens[-max_len:]


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] int64 right-padded with `pad_id`, and the lengths [B]."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    tokens = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(sequences):
        tokens[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return tokens, lengths


def rating_margins(ratings: Sequence[str | None], scheme: str) -> torch.Tensor:
    """m(rating) per pair for margin scheme none/small/large (SPEC §7); 0 for unrated pairs."""
    if scheme not in REWARD_MARGINS:
        raise ValueError(f"reward_margin must be one of {', '.join(REWARD_MARGINS)}, got {scheme!r}")
    table = dict(zip(RATINGS, REWARD_MARGINS[scheme]))
    return torch.tensor([table.get(r, 0.0) if r else 0.0 for r in ratings])
