"""Shared fixtures. The released Llama 2 tokenizer lives in ../shared (never in this repo)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
LLAMA2_TOKENIZER = REPO.parent / "shared" / "assets" / "llama2-tokenizer.model"


@pytest.fixture
def llama2_tokenizer_path() -> Path:
    if not LLAMA2_TOKENIZER.exists():
        pytest.skip(f"the released Llama 2 tokenizer is not at {LLAMA2_TOKENIZER}")
    return LLAMA2_TOKENIZER


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
