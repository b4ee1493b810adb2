"""CPU fast paths for the model's matmuls, kept out of model.py so that it reads as the model.

What makes a CPU run fast here, each measured on the AMD EPYC (Zen 5, AVX-512, 2 cores) the
benchmarks run on (benchmarks/RESULTS.md):

- fp32 matmuls through oneDNN: torch's default fp32 GEMM (MKL) takes a path half as wide as
  the CPU there, ~210 GFLOP/s, where oneDNN reaches ~420 for the same shapes, in fp32
  throughout (bf16 under autocast goes to oneDNN already). `matmul`, `linear`. Only on CPUs
  with AVX-512: on an AVX2-only EPYC both kernels run near 150 GFLOP/s and a stories15M fp32
  training step took longer through oneDNN (2.18 against 1.77 s), so MKL keeps them there.
- decoding reads the weights on every core: a matmul of a few rows is bound by reading the
  weight, and MKL reads it on one core. With the weight stored as the transpose of a
  contiguous [in, out] matrix (`decode_layout`), the input dimension splits into one
  contiguous block per core and one batched matmul reads them all at once (35 vs 16 GB/s
  for a decode step of the GQA bench config). `split_rows_linear`; projections that share
  their input share one such matrix, `fused_rows_linear`, and in training one transposed copy
  of their input for the weight gradients, `shared_input_linear`.
- causal attention by batched matmuls instead of torch's CPU flash kernel, in bf16 only on CPUs
  with bf16 matrix units (elsewhere a bf16 batched matmul is emulated). `causal_attention`.
- big blocks of memory reused instead of page-faulted in again every step. `keep_freed_memory`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

_onednn: bool | None = None  # decided on first use


def onednn_matmuls() -> bool:
    """Whether fp32 CPU matmuls go through oneDNN: where torch runs the CPU at AVX-512 (see the
    module doc), unless LLAMAFORGE_ONEDNN says otherwise (1: on, 0: off). Never where this torch
    lacks the op or gives a wrong result. Decided once per process, by the CPU and not by a
    timing, so one machine always takes the same kernels (and rounds the same way)."""
    global _onednn
    if _onednn is None:
        wanted = _wants_onednn(os.environ.get("LLAMAFORGE_ONEDNN", ""), torch.backends.cpu.get_cpu_capability())
        _onednn = wanted and _onednn_works()
    return _onednn


def _wants_onednn(setting: str, capability: str) -> bool:
    """LLAMAFORGE_ONEDNN's value ("1", "0", or anything else: decide by the CPU) and torch's CPU
    capability ("AVX512", "AVX2", ...) -> whether to try oneDNN for fp32 matmuls."""
    if setting in ("0", "1"):
        return setting == "1"
    return capability.upper().startswith("AVX512")


def _onednn_works() -> bool:
    g = torch.Generator().manual_seed(0)  # a private generator: the global RNG stays untouched
    a, b = torch.randn(37, 19, generator=g), torch.randn(19, 23, generator=g)
    try:
        return torch.allclose(onednn_mm(a, b), a @ b, rtol=1e-4, atol=1e-5)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def cpu_has_bf16_matmul() -> bool:
    """AVX512-BF16 or AMX: without them a CPU emulates bf16 and autocast is many times slower."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, "_is_avx512_bf16_supported", None), getattr(cpu, "_is_amx_tile_supported", None)]
    return any(check is not None and check() for check in checks)


def cpu_has_fp16_matmul() -> bool:
    """AMX-FP16: without it fp16 matmuls on a CPU are emulated (bf16 units do not serve fp16)."""
    check = getattr(getattr(torch, "cpu", None), "_is_amx_fp16_supported", None)
    return check is not None and check()


def onednn_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, K] @ b [K, N] by oneDNN. It copies a strided `a` first (~8 ms at [262, 32000])
    but reads a strided `b` almost as fast as a contiguous one."""
    return torch.ops.mkldnn._linear_pointwise(a, b.t(), None, "none", [], "")


def onednn_applies(*tensors: torch.Tensor) -> bool:
    """True where `onednn_mm` serves: plain non-empty fp32 CPU tensors, matrices contiguous or
    the transpose of a contiguous one, no autocast, no compile. (oneDNN runs a strided weight,
    such as a column block of a wider matrix, through its reference kernel: minutes, not ms.)"""
    return (
        all(t.device.type == "cpu" and t.dtype == torch.float32 and t.numel() > 0
            and type(t) in (torch.Tensor, nn.Parameter)
            and (t.dim() != 2 or t.is_contiguous() or t.t().is_contiguous()) for t in tensors)
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and onednn_matmuls()
    )


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, K] @ b [K, N] (no autograd), through oneDNN where it applies."""
    return onednn_mm(a, b) if onednn_applies(a, b) else a @ b


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """F.linear(x, w) without bias, through oneDNN where it applies (with its gradients)."""
    return shared_input_linear(x, (w,))[0]


def shared_input_linear(x: torch.Tensor, weights: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """F.linear(x, w) for each w of `weights`, which share the input x (the attention's q/k/v
    projections, the feed-forward's w1/w3), through oneDNN where it applies.

    Under autograd their backward shares one transposed copy of x. A weight gradient sums
    over tokens, the leading dimension of both the output gradient g [N, out] and x [N, in],
    and oneDNN copies such a strided left operand first. Copying x^T [in, N] once for all
    the projections is cheaper than each g^T, where in < the summed outs: stories15M's
    w1/w3 backward 7.3 -> 5.4 ms a layer."""
    if not onednn_applies(x, *weights):
        return tuple(F.linear(x, w) for w in weights)
    if torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)):
        return _OneDNNLinears.apply(x, *weights)
    rows = x.reshape(-1, x.shape[-1])
    return tuple(matmul(rows, w.t()).view(*x.shape[:-1], w.shape[0]) for w in weights)


class _OneDNNLinears(torch.autograd.Function):
    """x @ w.T for each w, and their gradients, each product one oneDNN matmul."""

    @staticmethod
    def forward(ctx, x, *weights):
        rows = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(rows, *weights)
        ctx.shape = x.shape
        ctx.set_materialize_grads(False)  # an output that is not used gives its weight no gradient (None, as F.linear)
        return tuple(matmul(rows, w.t()).view(*x.shape[:-1], w.shape[0]) for w in weights)

    @staticmethod
    @torch.autograd.function.once_differentiable  # the oneDNN op has no derivative of its own
    def backward(ctx, *grads):
        rows, *weights = ctx.saved_tensors
        wanted = [i for i, grad in enumerate(grads) if grad is not None and ctx.needs_input_grad[1 + i]]
        rows_t = None  # x^T [in, N], copied once for every weight gradient (docstring)
        if wanted and rows.shape[1] < sum(weights[i].shape[0] for i in wanted):
            rows_t = rows.t().contiguous()
        grad_x, grad_ws = None, []
        for i, (grad, w) in enumerate(zip(grads, weights)):
            if grad is None:
                grad_ws.append(None)
                continue
            grad = grad.reshape(-1, w.shape[0])
            if ctx.needs_input_grad[0]:
                part = matmul(grad, w)
                grad_x = part if grad_x is None else grad_x.add_(part)
            if i not in wanted:
                grad_ws.append(None)
            elif rows_t is not None:
                grad_ws.append(matmul(rows_t, grad).t())  # [in, out] -> its transpose, [out, in]
            else:
                grad_ws.append(matmul(grad.t(), rows))
        return (None if grad_x is None else grad_x.view(*ctx.shape)), *grad_ws


# --------------------------------------------------------------------------- attention

MAX_SCORES = 2**24  # batch x heads x T x T at most: the probabilities kept for backward (64 MiB a layer in fp32)
FP32_QUERY_BLOCK = 64  # fp32 queries go in blocks of this many, each against the keys up to its end


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
    """Causal self-attention of CPU tensors by batched matmuls, or None where it does not apply.
    q [B, H, T, D], k and v [B, H_kv, T, D] (grouped-query attention when H_kv < H: the
    queries of a group share a matmul with their K/V head, which is never repeated);
    returns [B, H, T, D].

    torch's CPU flash attention computes in fp32 in small blocks. Forward + backward of one
    layer at batch 8 x 256 (benchmarks/RESULTS.md), flash -> here:
    - bf16 (all queries in one block, on bf16 matrix units): stories15M 14.8 -> 4.7 ms,
      GQA bench config 22.5 -> 7.4 ms. The scores are rounded to bf16 before the softmax, as
      in eager attention under autocast, which roughly doubles flash attention's error
      against fp32 (relative 4e-3 -> 6e-3 on unit-scale inputs).
    - fp32 (blocks of 64 queries, so the matmuls skip most of the masked half): stories15M
      15.4 -> 10.7 ms, GQA 26.2 -> 16.1 ms, equal to flash within 1e-6.
    bf16 only on CPUs with bf16 matrix units (`cpu_has_bf16_matmul`): elsewhere a bf16 batched
    matmul is emulated, ~1 GFLOP/s on an AVX2-only EPYC, and a 7B-shaped layer's 512-token
    prefill took 1.2 s here against flash attention's 33 ms.
    """
    B, H, T, D = q.shape
    if (
        torch.compiler.is_compiling()  # first: nothing after it is traced
        or q.device.type != "cpu"
        or not q.dtype == k.dtype == v.dtype
        or q.dtype not in (torch.float32, torch.bfloat16)
        or (q.dtype == torch.bfloat16 and not cpu_has_bf16_matmul())
        or k.shape[2] != T
        or B * H * T * T > MAX_SCORES
    ):
        return None
    return _CausalAttention.apply(q, k, v, FP32_QUERY_BLOCK if q.dtype == torch.float32 else T)


class _CausalAttention(torch.autograd.Function):
    """Per block of queries [start, end): P = softmax(Q K[:end]^T / sqrt(D) + future mask), O = P V[:end]."""

    @staticmethod
    def forward(ctx, q, k, v, block):
        B, H, T, D = q.shape
        groups = H // k.shape[1]
        q = q.reshape(-1, groups, T, D)  # [B * H_kv, groups, T, D]
        k, v = k.reshape(-1, T, D), v.reshape(-1, T, D)
        out, kept = torch.empty_like(q), []
        for start in range(0, T, block):
            end = min(start + block, T)
            rows = q[:, :, start:end].reshape(len(q), -1, D)  # a group's queries, one after another
            future = torch.full((end - start, end), float("-inf"), dtype=q.dtype, device=q.device)
            future = future.triu_(start + 1).repeat(groups, 1)
            probs = torch.softmax(torch.baddbmm(future, rows, k[:, :end].transpose(1, 2), alpha=D**-0.5), dim=-1)
            out[:, :, start:end] = torch.bmm(probs, v[:, :end]).view(len(q), groups, end - start, D)
            kept.append(probs)
        ctx.save_for_backward(q, k, v, out, *kept)
        ctx.block = block
        return out.view(B, H, T, D)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, *kept = ctx.saved_tensors
        shape, kv_shape = grad_out.shape, (grad_out.shape[0], -1, *grad_out.shape[2:])
        T, D = q.shape[2], q.shape[3]
        scale = D**-0.5
        grad_out = grad_out.reshape(out.shape)
        # d scores = P * (dP - rowsum(dO * O)), the row sums in fp32.
        rowsums = (grad_out.float() * out.float()).sum(-1, keepdim=True)
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for probs, start in zip(kept, range(0, T, ctx.block)):
            end = min(start + ctx.block, T)
            grad_rows = grad_out[:, :, start:end].reshape(len(q), -1, D)
            # bmm then add: a baddbmm_ into the strided slice falls back to one addmm per batch entry.
            grad_v[:, :end] += torch.bmm(probs.transpose(1, 2), grad_rows)
            rowsum = rowsums[:, :, start:end].reshape(len(q), -1, 1)
            grad_scores = torch.bmm(grad_rows, v[:, :end].transpose(1, 2)).sub_(rowsum).mul_(probs)
            grad_q[:, :, start:end] = torch.bmm(grad_scores, k[:, :end]).mul_(scale).view(len(q), -1, end - start, D)
            rows = q[:, :, start:end].reshape(len(q), -1, D)
            grad_k[:, :end].add_(torch.bmm(grad_scores.transpose(1, 2), rows), alpha=scale)
        return grad_q.view(shape), grad_k.view(kv_shape), grad_v.view(kv_shape), None


# --------------------------------------------------------------------------- decoding

DECODE_ROWS = 8  # at most this many rows take the split path (decode steps, not prefills)
MAX_BLOCKS = 16  # the [blocks, rows, out] partial products stay small


def split_rows_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor | None:
    """x @ w.T for a few fp32 rows on all cores, or None where the split does not apply.

    w must be stored transposed (`decode_layout`): w.t() is then a contiguous [in, out] matrix
    whose row blocks are views, one per core; the partial products are summed."""
    # Compiling first: torch.get_num_threads() returns an int, which torch.compile cannot trace
    # (a graph break at every Linear of a compiled decode step).
    if torch.compiler.is_compiling() or x.device.type != "cpu":
        return None
    in_features, out_features = w.shape[1], w.shape[0]
    blocks = min(math.gcd(in_features, torch.get_num_threads()), MAX_BLOCKS)
    if (
        blocks < 2
        or x.dtype != torch.float32  # bf16 partial sums would round before they add up
        or w.dtype != torch.float32
        or w.stride(0) != 1
        or x.numel() > DECODE_ROWS * in_features
    ):
        return None
    rows = x.reshape(-1, blocks, in_features // blocks).transpose(0, 1)  # [blocks, N, in/blocks]
    partial = torch.bmm(rows, w.t().view(blocks, in_features // blocks, out_features))
    return partial.sum(0).view(*x.shape[:-1], out_features)


def fused_rows_linear(x: torch.Tensor, linears: Sequence[nn.Linear]) -> tuple[torch.Tensor, ...] | None:
    """x @ w.T for each of `linears` (which share the input x) as one matmul (`split_rows_linear`
    for a few fp32 rows), where `use_decode_layout` stored their weights side by side, as the
    column blocks of one contiguous [in, sum of outs] matrix; None elsewhere. A decode step
    then reads the attention's three projections, or the feed-forward's two input ones, at once."""
    if torch.compiler.is_compiling():  # a compiled step reads each weight view (no storage pointers in a graph)
        return None
    weights = [m.weight for m in linears]
    total = sum(w.shape[0] for w in weights)
    offset = weights[0].storage_offset()
    for w in weights:
        if w.stride() != (1, total) or w.storage_offset() != offset or w.shape[1] != weights[0].shape[1]:
            return None
        if w.untyped_storage().data_ptr() != weights[0].untyped_storage().data_ptr():
            return None
        offset += w.shape[0]
    fused = weights[0].as_strided((total, weights[0].shape[1]), (1, total))  # [sum of outs, in]
    out = split_rows_linear(x, fused)
    if out is None:  # a prefill, or not fp32: one matmul all the same (each block alone is strided)
        out = linear(x, fused)
    return out.split([w.shape[0] for w in weights], dim=-1)


def projections(x: torch.Tensor, linears: Sequence[nn.Linear]) -> tuple[torch.Tensor, ...]:
    """Each of `linears` applied to their shared input x: one matmul in the decode layout
    (`fused_rows_linear`), one transposed copy of x for the weight gradients in training
    (`shared_input_linear`), else each Linear on its own (and any other module, e.g. `Int8Linear`)."""
    if not all(isinstance(m, nn.Linear) for m in linears):
        return tuple(m(x) for m in linears)
    fused = fused_rows_linear(x, linears)
    if fused is not None:
        return fused
    if (torch.is_grad_enabled() and (x.requires_grad or any(m.weight.requires_grad for m in linears))
            and all(m.bias is None for m in linears)):
        return shared_input_linear(x, [m.weight for m in linears])
    return tuple(m(x) for m in linears)


def use_decode_layout(model: nn.Module) -> list[nn.Linear]:
    """Store every Linear weight [out, in] as the transpose of a contiguous [in, out] matrix:
    the same values, shape and names, another memory order (see the module docstring). The
    Linears a module names in `decode_fused` share one such matrix, side by side
    (`fused_rows_linear`). Returns the Linears changed. Models off the CPU, and models under
    FSDP (it owns their storage), are left alone."""
    weight = next(model.parameters(), None)
    if weight is None or weight.device.type != "cpu" or _fsdp_managed(model):
        return []
    changed: list[nn.Linear] = []

    def plain(m: nn.Module) -> bool:
        return isinstance(m, nn.Linear) and m.weight.is_contiguous() and m.weight.shape[0] > 1

    # Outside inference mode (generate runs in it): the weights must stay ordinary tensors.
    with torch.inference_mode(False), torch.no_grad():
        for module in model.modules():
            group = [getattr(module, name) for name in getattr(module, "decode_fused", ())]
            if len(group) > 1 and all(plain(m) for m in group) and len({m.weight.dtype for m in group}) == 1:
                first = group[0].weight
                fused = first.new_empty(first.shape[1], sum(m.weight.shape[0] for m in group))  # [in, sum of outs]
                start = 0
                for m in group:
                    block = fused[:, start : start + m.weight.shape[0]]
                    transposed_copy(m.weight.data, out=block)
                    m.weight.data = block.t()
                    start += m.weight.shape[0]
                changed += group
        for module in model.modules():
            if plain(module):
                module.weight.data = transposed_copy(module.weight.data).t()
                changed.append(module)
    return changed


TRANSPOSE_ROWS = 256  # rows of the source a transposing copy takes at a time


def transposed_copy(m: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """m.t() as a new contiguous matrix (or written into `out`, [cols, rows], e.g. a column block
    of a wider matrix), copied a block of rows at a time: a block's columns stay in cache while
    they are written out. torch's one-call copy of a transposed matrix ran at ~1-3 GB/s on 2
    cores; the decode layout in and out of the 110M bench config took 433 ms that way."""
    if out is None:
        out = torch.empty(m.shape[1], m.shape[0], dtype=m.dtype, device=m.device)
    for start in range(0, m.shape[0], TRANSPOSE_ROWS):
        out[:, start : start + TRANSPOSE_ROWS].copy_(m[start : start + TRANSPOSE_ROWS].t())
    return out


@contextlib.contextmanager
def decode_layout(model: nn.Module) -> Iterator[None]:
    """`use_decode_layout` for the duration of a generation, then the weights are contiguous
    again: an optimizer's state (fused AdamW walks state and weight element by element as if
    they shared a layout), FSDP's `fully_shard` and outside `save_file` calls never see the
    transposed layout. Costs two copies of the weights; nested uses copy nothing more, so a
    caller that generates many batches can hold it around all of them."""
    changed = use_decode_layout(model)
    try:
        yield
    finally:
        with torch.inference_mode(False), torch.no_grad():
            for module in changed:
                module.weight.data = transposed_copy(module.weight.data.t())


def _fsdp_managed(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return any(isinstance(m, FSDPModule) for m in model.modules())


# --------------------------------------------------------------------------- memory

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_kept: bool | None = None  # decided on first use


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for the next allocation instead of handing it back
    to the kernel. Returns whether it applies (glibc, and not turned off by LLAMAFORGE_MALLOC=0).

    glibc maps every block over 32 MiB fresh from the kernel and unmaps it on free, so a
    tensor of that size costs a page fault per 4 KiB page each time it is made: at the
    stories15M shape, the embedding's and the output layer's fp32 gradients (32000 x 288,
    37 MB) and every cross-entropy chunk's weight gradient, ~10 ms each, a quarter of an fp32
    training step (876 -> 635 ms, bf16 584 -> 438 ms; benchmarks/RESULTS.md). Serving every
    block from the heap and keeping up to 1 GiB of it free is what the jemalloc/tcmalloc advice in
    PyTorch's CPU tuning guide buys. It costs memory: the heap fragments, so the peak resident
    size of stories15M fp32 training steps rose 1,266 -> 1,427 MiB (transformers' 1,544 ->
    1,838), and the resident size no longer shrinks after the peak. Process-wide.
    """
    global _kept
    if _kept is None:
        _kept = False
        if os.environ.get("LLAMAFORGE_MALLOC", "1") != "0":
            try:
                import ctypes

                libc = ctypes.CDLL(None)
                libc.gnu_get_libc_version  # noqa: B018  (AttributeError: not glibc, e.g. musl)
                # mallopt returns 1 on success. Up to 1 GiB free at the heap's top stays mapped.
                _kept = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**30) == 1
            except (AttributeError, OSError):
                _kept = False
    return _kept
