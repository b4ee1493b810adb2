"""Int8 weight-only quantisation: the rounding bound per element, the layer against its
dequantised weight, the model against fp32, and the CLI flag."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from llamaforge import quantize
from llamaforge.generate import SamplingParams, generate
from llamaforge.model import ModelArgs, Transformer


def test_quantize_weight_rounds_each_row_to_its_own_scale():
    torch.manual_seed(0)
    w = torch.randn(16, 32) * torch.logspace(-3, 1, 16)[:, None]  # rows of very different sizes
    q, scales = quantize.quantize_weight(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    assert torch.equal(q.abs().amax(1), torch.full((16,), 127, dtype=torch.int8))  # every row uses its range
    assert torch.allclose(scales, w.abs().amax(1) / 127)
    assert bool(((q.float() * scales[:, None] - w).abs() <= scales[:, None] / 2 + 1e-7).all())  # half a step at most


@pytest.mark.parametrize("shape", [(1, 64), (3, 5, 64)])
@pytest.mark.parametrize("kernel", [True, False])
def test_int8_linear_is_the_matmul_with_its_dequantised_weight(shape, kernel, monkeypatch):
    if kernel and not quantize.int8_kernel_works("cpu"):
        pytest.skip("torch has no int8 weight-only kernel here")
    monkeypatch.setattr(quantize, "int8_kernel_works", lambda device_type: kernel)
    torch.manual_seed(0)
    layer = quantize.Int8Linear(torch.randn(48, 64))
    x = torch.randn(*shape)
    want = x @ layer.dequantized().t()
    got = layer(x)
    assert got.shape == (*shape[:-1], 48) and got.dtype == x.dtype
    # The kernel takes bf16 activations: ~3 significant digits.
    assert torch.allclose(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))


def test_a_quantised_model_stays_close_to_fp32_and_generates():
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_preset("tiny")).eval()
    quantised = quantize.quantize_int8(copy.deepcopy(model))
    attention = quantised.layers[0].attention
    assert isinstance(attention.wq, quantize.Int8Linear) and isinstance(quantised.layers[1].feed_forward.w2, quantize.Int8Linear)
    assert isinstance(quantised.output, nn.Linear) and torch.equal(quantised.output.weight, model.output.weight)
    tokens = torch.randint(0, model.args.vocab_size, (2, 24))
    with torch.no_grad():
        want, got = model(tokens), quantised(tokens)
    assert float((got - want).norm() / want.norm()) < 0.02
    out = generate(quantised, [[1, 2, 3]], SamplingParams(max_new_tokens=6), eos_id=-1)
    assert len(out[0].tokens) == 6
    with pytest.raises(ValueError, match="already quantised"):
        quantize.quantize_int8(quantised)
    with pytest.raises(ValueError, match="Transformer"):
        quantize.quantize_int8(nn.Linear(4, 4))
