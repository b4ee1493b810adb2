"""The GPU paths (issue 10): bf16 autocast, SDPA's flash kernel, the KV cache and torch.compile.

Skipped without a CUDA GPU; `benchmarks/gpu_check.sh` runs them on a lent one. To check the
tests themselves on a machine without a GPU, LLAMAFORGE_GPU_TESTS_ON_CPU=1 runs them on the CPU
(the flash-kernel test still needs CUDA: the CPU takes cpu_kernels.causal_attention instead).
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from llamaforge.generate import SamplingParams, generate
from llamaforge.model import ModelArgs, Transformer

ON_CPU = os.environ.get("LLAMAFORGE_GPU_TESTS_ON_CPU") == "1"
CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not (CUDA or ON_CPU), reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs these)")
DEVICE = torch.device("cuda" if CUDA else "cpu")


def make_model(kv_heads: int, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    args = ModelArgs(dim=256, n_layers=4, n_heads=8, n_kv_heads=kv_heads, vocab_size=1024, multiple_of=32,
                     max_seq_len=256)
    return Transformer(args).to(DEVICE)


@pytest.fixture(params=[8, 2], ids=["mha", "gqa"])
def kv_heads(request) -> int:
    return request.param


@pytest.fixture(autouse=True)
def _exact_fp32_matmuls():
    """fp32 means fp32 here (torch's default, pinned): TF32 would blur the greedy comparisons."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def tokens(batch: int, length: int, vocab: int = 1024, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, length), generator=g).to(DEVICE)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@torch.no_grad()
def test_bf16_autocast_logits_stay_near_fp32(kv_heads):
    model = make_model(kv_heads).eval()
    x = tokens(2, 128)
    reference = model(x)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        mixed = model(x)
    assert mixed.dtype == torch.bfloat16
    assert 0 < relative_error(mixed, reference) < 2e-2  # bf16 has 8 mantissa bits; > 0: bf16 really ran


@pytest.mark.skipif(not CUDA, reason="the flash kernel is SDPA's CUDA path")
def test_training_attention_runs_on_the_flash_kernel_and_matches_the_math_kernel(kv_heads):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = make_model(kv_heads).train()
    x, y = tokens(2, 128), tokens(2, 128, seed=2)
    losses, grads = {}, {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
        model.zero_grad(set_to_none=True)
        # Only this backend is allowed: "No available kernel" if the call does not qualify for it
        # (a mask where the causal flag would do, repeated K/V, a wrong dtype or layout).
        with sdpa_kernel([backend]), torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, targets=y) / y.numel()
        loss.backward()
        losses[backend], grads[backend] = float(loss), model.layers[0].attention.wq.weight.grad.clone()
    assert losses[SDPBackend.FLASH_ATTENTION] == pytest.approx(losses[SDPBackend.MATH], rel=1e-2)
    assert relative_error(grads[SDPBackend.FLASH_ATTENTION], grads[SDPBackend.MATH]) < 5e-2


@torch.no_grad()
def test_kv_cache_greedy_decode_equals_rerunning_the_whole_sequence(kv_heads):
    model = make_model(kv_heads).eval()
    prompts = [[1, 17, 230, 5, 99, 400], [1, 8, 8, 8]]  # unequal lengths: left padding and key masks
    params = SamplingParams(max_new_tokens=24)
    cached = [c.tokens for c in generate(model, prompts, params)]
    for prompt, got in zip(prompts, cached):
        sequence = list(prompt)
        for _ in range(params.max_new_tokens):  # no cache: the full forward over everything so far
            sequence.append(int(model(torch.tensor([sequence], device=DEVICE))[0, -1].argmax()))
        assert got == sequence[len(prompt):]


@torch.no_grad()
def test_compiled_decode_gives_the_eager_tokens(kv_heads):
    from torch._dynamo.utils import counters

    model = make_model(kv_heads).eval()
    prompts = [[1, 17, 230, 5, 99, 400], [1, 8, 8, 8]]
    params = SamplingParams(max_new_tokens=16)
    eager = [c.tokens for c in generate(model, prompts, params)]
    torch._dynamo.reset()  # so this model's decode compiles afresh (and is seen to)
    graphs = counters["stats"]["unique_graphs"]
    compiled = [c.tokens for c in generate(model, prompts, params, compile=True)]
    assert counters["stats"]["unique_graphs"] > graphs  # not everything fell back to eager
    assert compiled == eager and all(len(t) == 16 for t in eager)


def test_bf16_training_learns_and_compiled_layers_give_the_eager_loss(kv_heads):
    model = make_model(kv_heads).train()
    twin = copy.deepcopy(model)
    for layer in twin.layers:
        layer.compile()
    x, y = tokens(4, 128), tokens(4, 128, seed=2)

    def step(m, optimizer) -> float:
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            loss = m(x, targets=y) / y.numel()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    opts = [torch.optim.AdamW(m.parameters(), lr=3e-3, fused=True) for m in (model, twin)]
    # The compiled twin's forward and backward: the same losses over its first steps.
    for _ in range(5):
        eager, compiled = step(model, opts[0]), step(twin, opts[1])
        assert compiled == pytest.approx(eager, rel=2e-2)
    first = eager
    for _ in range(40):  # a fixed batch of random tokens: memorising it drives the loss down
        last = step(model, opts[0])
    assert last < 0.5 * first
