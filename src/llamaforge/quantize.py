"""Int8 weight-only quantisation for decoding.

    model = quantize_int8(load_model("runs/demo/03-pretrain"))   # the blocks' projections in int8
    llamaforge generate MODEL --int8 --prompt "..."                # the same from the command line

Each projection of the transformer blocks (wq, wk, wv, wo, w1, w2, w3) keeps its weight as int8
with one scale per output row (symmetric: w ≈ scale * q, q in [-127, 127], scale = max|row| / 127),
a quarter of the fp32 bytes. A decode step reads every weight once per token, so it is bound by
memory: torch's int8 weight-only kernel (`torch._weight_int8pack_mm`, activations in bf16) runs
a [4096 x 4096] projection for one token in ~0.3 ms on 2 CPU cores where the fp32 matmul takes
~2.3 ms (benchmarks/int8_decode.py measures whole models). The embedding and the output layer
stay in the model's dtype: the logits are what sampling reads, and the rest of the package
(training, the KV cache, the server) reads `model.output.weight`. A quantised model is for
inference only (training it, or saving it with `save_model`, is an error: quantise after
loading); `benchmarks/int8_decode.py` reports its perplexity change. The kernel serves CPUs and
input widths that are a multiple of 16 (it reads past the end of other rows); elsewhere the
weight is dequantised on every call: right, but not faster.
"""

from __future__ import annotations

import torch
from torch import nn

PROJECTIONS = ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
               "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float weight -> (int8 [out, in], fp32 scale [out]) with weight ≈ scale[:, None] * q."""
    w = weight.detach().float()
    scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scales  # the kernel wants a dense [out, in] (a decode-layout weight is transposed)


KERNEL_WIDTH = 16  # the kernel's input width must be a multiple of this (it reads past the end otherwise)
_kernel_works: dict[str, bool] = {}  # device type -> probed once (a dict, not a cache: torch.compile reads it)


def int8_kernel_works(device_type: str) -> bool:
    """Whether torch's int8 weight-only matmul serves this device type: CPUs, where it runs and
    is right (elsewhere its kernel is no faster than dequantising)."""
    if device_type not in _kernel_works:
        _kernel_works[device_type] = device_type == "cpu" and _probe_kernel()
    return _kernel_works[device_type]


def _probe_kernel() -> bool:
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 64, generator=g), torch.randn(32, 64, generator=g)
    q, scales = quantize_weight(w)
    try:
        got = torch._weight_int8pack_mm(x.to(torch.bfloat16), q, scales.to(torch.bfloat16)).float()
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return torch.allclose(got, x @ (q.float() * scales[:, None]).t(), rtol=3e-2, atol=3e-2)


class Int8Linear(nn.Module):
    """A bias-free Linear whose weight is int8 with one scale per output row (inference only)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        q, scales = quantize_weight(weight)
        self.register_buffer("weight_int8", q.to(weight.device))
        self.register_buffer("scales", scales.to(weight.device))
        # The kernel's bf16 copy: a buffer, so that a compiled step reads it (a cast inside
        # the step is a pointwise input, which inductor's lowering of the kernel rejects).
        self.register_buffer("scales_bf16", scales.to(weight.device, torch.bfloat16), persistent=False)
        self.use_kernel = self.in_features % KERNEL_WIDTH == 0
        self.train(False)
        int8_kernel_works(weight.device.type)  # probed here, outside any compiled step

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.scales_bf16.copy_(self.scales)  # the kernel reads the loaded scales

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.weight_int8.to(torch.float32) * self.scales[:, None]).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError("int8-quantised layers are for inference only; train the model before quantize_int8")
        rows = x.reshape(-1, self.in_features)
        if self.use_kernel and int8_kernel_works(x.device.type):
            scales = self.scales_bf16
            if scales.dtype != torch.bfloat16:  # the model was cast (.half(), .float()) after quantising
                scales = self.scales.to(torch.bfloat16)
            out = torch._weight_int8pack_mm(rows.to(torch.bfloat16), self.weight_int8, scales)
        else:  # correct everywhere, but it materialises the weight on every call
            out = rows @ self.dequantized(rows.dtype).t()
        return out.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row scales"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace the projections of every transformer block with `Int8Linear`, in place; returns
    the model in eval mode. Quantising a model twice is an error (its weights are already int8)."""
    layers = getattr(model, "layers", None)
    if layers is None:
        raise ValueError("quantize_int8 expects a llamaforge Transformer (a model with .layers)")
    for layer in layers:
        for name in PROJECTIONS:
            parent_name, attr = name.split(".")
            parent = getattr(layer, parent_name)
            linear = getattr(parent, attr)
            if isinstance(linear, Int8Linear):
                raise ValueError("this model is already quantised to int8")
            if linear.bias is not None:
                raise ValueError(f"{name} has a bias; quantize_int8 handles the bias-free Llama projections")
            setattr(parent, attr, Int8Linear(linear.weight))
    return model.eval()
