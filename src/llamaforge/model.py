"""The Llama 2 transformer (SPEC §1) in one file, with Meta's parameter names.

Pre-norm blocks with RMSNorm (normalised in fp32), SwiGLU feed-forward, rotary position
embeddings on adjacent pairs (Meta's formulation), grouped-query attention and a
preallocated KV cache for incremental decoding. Parameter names match Meta's
`consolidated.*.pth`, so those checkpoints load without renaming.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import cpu_kernels
from .cpu_kernels import onednn_applies, onednn_mm, projections, split_rows_linear


@dataclass
class ModelArgs:
    """Architecture hyperparameters: the fields of Meta's `params.json`, plus
    `rope_theta` and `max_seq_len` (context length the model is built for)."""

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None  # None: same as n_heads (multi-head attention)
    vocab_size: int = 32000
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5  # SPEC §1: 1e-5 for Llama 2 (1e-6 is a known trap)
    rope_theta: float = 10000.0
    max_seq_len: int = 4096

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "vocab_size", "multiple_of", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelArgs.{name} must be a positive integer, got {value!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"ModelArgs: dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"ModelArgs: head_dim {self.head_dim} must be even for rotary embeddings")
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"ModelArgs: n_heads {self.n_heads} must be a multiple of n_kv_heads {self.kv_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU hidden size (SPEC §1): 2/3 of 4*dim, times the multiplier, rounded up."""
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def num_params(self) -> int:
        """Exact parameter count (embedding and output counted separately: they are untied)."""
        d, kv = self.dim, self.kv_heads * self.head_dim
        attention = 2 * d * d + 2 * d * kv
        feed_forward = 3 * d * self.hidden_dim
        per_layer = attention + feed_forward + 2 * d
        return self.n_layers * per_layer + 2 * self.vocab_size * d + d

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelArgs:
        key = name.removesuffix("-chat")
        if key not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(preset_names())}")
        return cls(**{**PRESETS[key], **overrides})

    @classmethod
    def from_dict(cls, params: dict[str, Any], *, source: str = "params") -> ModelArgs:
        """Build from a `params.json`-style dict; unknown keys are an error, not ignored."""
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise ValueError(
                f"{source}: unknown key(s) {unknown}; a Llama 2 params.json may hold {sorted(allowed)}"
            )
        return cls(**params)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# SPEC §1. Llama 2 trained with a 4096 context; 34B uses Code Llama 34B's published shapes.
PRESETS: dict[str, dict[str, Any]] = {
    "7B": dict(dim=4096, n_layers=32, n_heads=32, multiple_of=256),
    "13B": dict(dim=5120, n_layers=40, n_heads=40, multiple_of=256),
    "34B": dict(dim=8192, n_layers=48, n_heads=64, n_kv_heads=8, multiple_of=256, ffn_dim_multiplier=1.0),
    "70B": dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, multiple_of=4096, ffn_dim_multiplier=1.3),
    # Small shapes for CPUs and tests (vocab is usually replaced by the tokenizer's size).
    "tiny": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=32, max_seq_len=256),
    # Sized to learn the built-in world in ~5 minutes on 2 CPU cores (configs/pretrain/demo.yaml).
    "demo": dict(dim=192, n_layers=4, n_heads=6, n_kv_heads=2, vocab_size=2048, multiple_of=64, max_seq_len=256),
    # llama2.c's TinyStories shapes, used by the benchmarks.
    "stories15M": dict(dim=288, n_layers=6, n_heads=6, multiple_of=32, max_seq_len=256),
    "stories42M": dict(dim=512, n_layers=8, n_heads=8, multiple_of=32, max_seq_len=1024),
    "stories110M": dict(dim=768, n_layers=12, n_heads=12, multiple_of=32, max_seq_len=1024),
}


def preset_names() -> list[str]:
    paper = ["7B", "13B", "34B", "70B"]
    return paper + [f"{p}-chat" for p in paper] + [p for p in PRESETS if p not in paper]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # SPEC §1: normalise in fp32, cast back, then scale.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def precompute_rope(head_dim: int, end: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    """Cos/sin table [end, head_dim/2, 2]: pair i at position p turns by p * theta^(-2i/head_dim)."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(end, device=device, dtype=torch.float32), freqs)
    return torch.stack([angles.cos(), angles.sin()], dim=-1)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x0,x1),(x2,x3)... of x [B, T, H, D] by rope [B|1, T, D/2, 2], in fp32.

    As Meta does: each pair is a complex number times cos + i·sin. One complex multiply
    (and one in backward) is ~30x faster on CPU than the same rotation written with
    real slices and a stack.
    """
    if torch.compiler.is_compiling():
        # Inductor generates no code for complex numbers; in reals the rotation fuses into one kernel.
        x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
        cos, sin = rope.unsqueeze(2).unbind(-1)
        return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2).type_as(x)
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    rotated = pairs * torch.view_as_complex(rope).unsqueeze(2)
    return torch.view_as_real(rotated).flatten(-2).type_as(x)


class KVCache(nn.Module):
    """Preallocated keys/values [B, n_kv_heads, max_len, head_dim]: only the KV heads are cached."""

    def __init__(self, batch: int, max_len: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype, device):
        super().__init__()
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, start_pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = start_pos + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache holds {self.k.shape[2]} positions; asked to write up to {end}")
        self.k[: k.shape[0], :, start_pos:end] = k
        self.v[: v.shape[0], :, start_pos:end] = v
        return self.k[: k.shape[0], :, :end], self.v[: v.shape[0], :, :end]


class Linear(nn.Linear):
    """nn.Linear without bias; on CPU through `cpu_kernels` (oneDNN fp32 matmuls, and decode
    steps that read the weight on every core)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = split_rows_linear(x, self.weight)
        return cpu_kernels.linear(x, self.weight) if out is None else out


class Attention(nn.Module):
    decode_fused = ("wq", "wk", "wv")  # one weight matrix in the CPU decode layout (cpu_kernels)

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.kv_heads, args.head_dim
        self.wq = Linear(args.dim, args.n_heads * self.head_dim)
        self.wk = Linear(args.dim, self.n_kv_heads * self.head_dim)
        self.wv = Linear(args.dim, self.n_kv_heads * self.head_dim)
        self.wo = Linear(args.n_heads * self.head_dim, args.dim)
        self.cache: KVCache | None = None

    def forward(self, x: torch.Tensor, rope: torch.Tensor, start_pos: int, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = projections(x, (self.wq, self.wk, self.wv))
        q = q.view(B, T, self.n_heads, self.head_dim)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.cache is not None:
            k, v = self.cache.update(start_pos, k, v)
        # A causal mask is only implied when queries and keys start together. Decided by a
        # branch: under torch.compile with dynamic shapes T is symbolic, SDPA needs a real bool.
        is_causal = False
        if mask is None and T > 1:
            is_causal = True
        # On CPU batched matmuls beat the flash kernel (cpu_kernels.causal_attention).
        out = cpu_kernels.causal_attention(q, k, v) if is_causal else None
        if out is None:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=self.n_kv_heads != self.n_heads
            )
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    decode_fused = ("w1", "w3")

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = Linear(dim, hidden_dim)
        self.w2 = Linear(hidden_dim, dim)
        self.w3 = Linear(dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = projections(x, (self.w1, self.w3))
        return self.w2(F.silu(gate) * up)


IGNORE_INDEX = -100  # a target that contributes no loss (padding, masked prompt tokens)


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, chunk_rows: int | None = None
) -> torch.Tensor:
    """Summed cross-entropy of `hidden @ weight.T` against targets (IGNORE_INDEX: no loss).

    hidden [..., dim], weight [vocab, dim], targets [...] -> fp32 scalar. The [N, vocab]
    logits are never held at once: rows go through in chunks, and the gradients are
    formed while each chunk's logits are at hand (softmax - one_hot), so backward only
    scales them. On CPU this is ~2x faster than logits + F.cross_entropy and saves
    three logits-sized buffers (3 x 262 MB at stories15M, batch 8 x 256).
    """
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    if chunk_rows is None:
        # 2**25 logits per chunk on CPU (1,048 rows of a 32,000 vocabulary: 134 MB in fp32):
        # 3-7% faster steps than 2**23 once big blocks are reused (`keep_freed_memory`), and
        # still far under the full logits. GPUs want bigger matmuls.
        chunk_rows = max(1, (2**25 if hidden.device.type == "cpu" else 2**28) // weight.shape[0])
    with_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _ChunkedCrossEntropy.apply(hidden, weight, targets, chunk_rows, with_grad)


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows, with_grad):
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        h, w = hidden.to(dtype), weight.to(dtype)
        # Rows without a target (prompt tokens in SFT, padding) never reach the vocabulary
        # matmuls: they are dropped up front, and their gradient is zero.
        kept = None
        if bool((targets == IGNORE_INDEX).any()):
            kept = (targets != IGNORE_INDEX).nonzero().squeeze(1)
            h, targets = h.index_select(0, kept), targets.index_select(0, kept)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(h) if with_grad else None
        onednn = onednn_applies(h, w)
        grad_w = logits = None
        if with_grad:  # the first chunk's product overwrites it (fp32), so no zero-fill
            new = torch.empty if len(h) and dtype == torch.float32 else torch.zeros
            # oneDNN copies a strided left operand but reads a strided right one almost as fast
            # (`onednn_mm`): so it forms grad_w transposed, [dim, vocab] (the first chunk's
            # product is it), and grad @ w reads w as it is (a transposed copy of w for it
            # made the stories15M cross-entropy 8 ms slower, 334 vs 326 ms).
            if not onednn:
                grad_w = new(weight.shape, dtype=torch.float32, device=weight.device)
        if not onednn:
            logits = h.new_empty(min(chunk_rows, len(h)), w.shape[0])  # reused: no fresh pages per chunk
        with torch.autocast(device, enabled=False):
            for start in range(0, len(h), chunk_rows):
                rows, t = h[start : start + chunk_rows], targets[start : start + chunk_rows, None]
                chunk = onednn_mm(rows, w.t()) if onednn else torch.mm(rows, w.t(), out=logits[: len(rows)])
                # The softmax, in the logits' dtype (accumulated in fp32), is the gradient's first
                # term, and the loss is -log p_t: in bf16 its rounding moves a token's loss by
                # < 0.002 nats (the logits' own rounding is larger). One pass over the chunk
                # instead of log-softmax, exp and a cast: ~40 ms of a 450 ms bf16 step.
                probs = torch.softmax(chunk, dim=-1)
                p_t = probs.gather(1, t).float()
                losses = -p_t.log()
                # A p_t below the dtype's normal range (a token's loss over ~87 nats in fp32 and
                # bf16, ~9.7 in fp16) is imprecise or 0: such a token takes logsumexp - x_t.
                lost = (p_t < torch.finfo(probs.dtype).tiny).squeeze(1)
                if bool(lost.any()):
                    far = chunk[lost].float()
                    losses[lost] = (far.logsumexp(dim=1, keepdim=True) - far.gather(1, t[lost]))
                total += losses.sum()
                if not with_grad:
                    continue
                # softmax - one_hot. Not scatter_add_: it is 1.6 ms per chunk on bf16, this ~10 us.
                grad = probs.index_put_((torch.arange(len(rows), device=t.device), t[:, 0]),
                                        torch.tensor(-1.0, dtype=probs.dtype, device=t.device), accumulate=True)
                if onednn:
                    grad_h[start : start + len(rows)] = onednn_mm(grad, w)
                    chunk_w = onednn_mm(rows.t().contiguous(), grad)  # [dim, vocab]
                    grad_w = grad_w.add_(chunk_w) if start else chunk_w
                    continue
                torch.mm(grad, w, out=grad_h[start : start + len(rows)])
                if grad_w.dtype == dtype:
                    grad_w.addmm_(grad.t(), rows, beta=1 if start else 0)
                else:
                    grad_w += grad.t() @ rows
        if with_grad:
            if onednn:
                grad_w = grad_w.t()
            if kept is not None:
                grad_h = h.new_zeros(len(hidden), h.shape[1]).index_copy_(0, kept, grad_h)
            ctx.save_for_backward(grad_h, grad_w)
            ctx.dtypes = hidden.dtype, weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_h, grad_w = ctx.saved_tensors  # used once: scaled in place
        hidden_dtype, weight_dtype = ctx.dtypes
        return grad_h.mul_(grad_total).to(hidden_dtype), grad_w.mul_(grad_total).to(weight_dtype), None, None, None


class TransformerBlock(nn.Module):
    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        self.layer_id = layer_id
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, start_pos: int, mask: torch.Tensor | None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope, start_pos, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(i, args) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.output = Linear(args.dim, args.vocab_size)
        # The rope table is built lazily on the input's device and kept in fp32: as a plain
        # attribute it survives `.to(bfloat16)` and costs nothing on the `meta` device.
        self._rope: torch.Tensor | None = None
        self.activation_checkpointing = False
        if not self.tok_embeddings.weight.is_meta:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """GPT-2 style init; output projections of each residual branch scaled by 1/sqrt(2L)."""
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                nn.init.normal_(p, mean=0.0, std=std / math.sqrt(2 * self.args.n_layers))
            else:
                nn.init.normal_(p, mean=0.0, std=std)

    def rope_table(self, device: torch.device) -> torch.Tensor:
        if self._rope is None or self._rope.device != device:
            # Never an inference tensor, even when generate builds it: training (compiled, with
            # activation checkpointing) saves it for backward. Nothing here breaks a compiled graph.
            with torch.inference_mode(False):
                self._rope = precompute_rope(self.args.head_dim, self.args.max_seq_len, self.args.rope_theta, device)
        return self._rope

    def setup_cache(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> None:
        """Allocate a KV cache for `batch` sequences of up to `max_len` positions (reused if it fits)."""
        max_len = max_len or self.args.max_seq_len
        dtype = dtype or self.output.weight.dtype
        device = self.output.weight.device
        for layer in self.layers:
            cache = layer.attention.cache
            if cache is not None and cache.k.shape[0] >= batch and cache.k.shape[2] >= max_len and cache.k.dtype == dtype:
                continue
            layer.attention.cache = KVCache(batch, max_len, self.args.kv_heads, self.args.head_dim, dtype, device)

    def clear_cache(self) -> None:
        for layer in self.layers:
            layer.attention.cache = None

    def hidden_states(
        self,
        tokens: torch.Tensor,
        start_pos: int = 0,
        *,
        positions: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final normalised hidden states [B, T, dim].

        tokens: [B, T] ids placed at cache slots start_pos .. start_pos+T-1.
        positions: [B, T] rotary positions per row (default: the slots), for left-padded batches.
        key_mask: [B, start_pos+T] bool, False on padding slots that no query may attend to.
        """
        B, T = tokens.shape
        if start_pos + T > self.args.max_seq_len:
            raise ValueError(
                f"sequence of {start_pos + T} tokens exceeds max_seq_len {self.args.max_seq_len}; "
                "shorten the input or build the model with a larger max_seq_len"
            )
        rope = self.rope_table(tokens.device)
        rope = rope[start_pos : start_pos + T].unsqueeze(0) if positions is None else rope[positions]
        mask = self._attention_mask(B, T, start_pos, key_mask, tokens.device)
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            if self.activation_checkpointing and self.training:
                h = checkpoint(layer, h, rope, start_pos, mask, use_reentrant=False)
            else:
                h = layer(h, rope, start_pos, mask)
        return self.norm(h)

    def forward(
        self,
        tokens: torch.Tensor,
        start_pos: int = 0,
        *,
        positions: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tokens [B, T] int64 -> logits [B, T, vocab_size].

        With targets [B, T] (IGNORE_INDEX where no loss): the summed next-token cross-entropy
        instead, an fp32 scalar computed without materialising the logits (training's path).
        """
        h = self.hidden_states(tokens, start_pos, positions=positions, key_mask=key_mask)
        if targets is not None:
            return chunked_cross_entropy(h, self.output.weight, targets)
        return self.output(h)

    def _attention_mask(self, B: int, T: int, start_pos: int, key_mask: torch.Tensor | None, device) -> torch.Tensor | None:
        """None where SDPA's own causal flag (or no mask, for one new token) is exact."""
        if key_mask is None and (start_pos == 0 or T == 1):
            return None
        S = start_pos + T
        query_slots = torch.arange(start_pos, S, device=device).unsqueeze(1)
        key_slots = torch.arange(S, device=device).unsqueeze(0)
        allowed = (key_slots <= query_slots).unsqueeze(0)  # [1, T, S]
        if key_mask is not None:
            # A padding query would see no key at all; let it see itself so no row is empty.
            allowed = (allowed & key_mask[:, None, :S]) | (key_slots == query_slots)
        return allowed.unsqueeze(1)  # [B|1, 1, T, S]
