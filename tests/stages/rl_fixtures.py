"""A tiny world and a tiny random chat model with its tokenizer, shared by the RLHF stage tests
(rejection sampling, PPO, the loop)."""

from __future__ import annotations

import torch

from llamaforge.checkpoint import save_model
from llamaforge.model import ModelArgs, Transformer
from llamaforge.world import World


def build_tiny(root) -> dict:
    from llamaforge.tokenizer import Tokenizer, train_tokenizer
    from llamaforge.world import write_world

    world = World.generate(seed=0, size="tiny")
    write_world(world, root / "world")
    train_tokenizer(root / "world" / "corpus", root / "tokenizer.model", 512)
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_preset("tiny"))
    save_model(model, root / "lm", format="meta", tokenizer_path=root / "tokenizer.model")
    (root / "lm" / "tokenizer.model").write_bytes((root / "tokenizer.model").read_bytes())
    return {"root": root, "world": world, "lm": root / "lm", "tokenizer": Tokenizer(root / "tokenizer.model")}
