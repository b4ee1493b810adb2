"""Int8 weight-only quantisation: the rounding bound per element, the layer against its
dequantised weight (on the kernel and off it: input widths it cannot take, transposed weights,
dtype casts, a reloaded state), the model against fp32, and the errors for training and saving.
The CLI flag and the server are tested in tests/e2e."""

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


def test_widths_the_kernel_cannot_take_transposed_weights_casts_and_reloads_stay_right():
    torch.manual_seed(0)
    for width in (40, 24, 64):  # the kernel reads past the end of rows not a multiple of 16
        layer = quantize.Int8Linear(torch.randn(32, width))
        x = torch.randn(3, width)
        want = x @ layer.dequantized().t()
        assert layer.use_kernel == (width % quantize.KERNEL_WIDTH == 0)
        assert torch.allclose(layer(x), want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))
    transposed = torch.randn(64, 48).t()  # a decode-layout weight: [out, in] stored as [in, out]
    layer = quantize.Int8Linear(transposed)
    x = torch.randn(2, 64)
    assert torch.allclose(layer(x), x @ layer.dequantized().t(), rtol=2e-2, atol=0.1)
    other = quantize.Int8Linear(torch.randn(48, 64) * 5)
    other.load_state_dict(layer.state_dict())  # the scales the kernel reads are the loaded ones
    assert torch.allclose(other(x), layer(x))
    assert torch.allclose(layer.half()(x.half()).float(), layer.float()(x), rtol=2e-2, atol=0.1)


def test_a_quantised_model_refuses_training_and_saving(tmp_path):
    from llamaforge.checkpoint import CheckpointError, save_model

    model = quantize.quantize_int8(Transformer(ModelArgs.from_preset("tiny")))
    with pytest.raises(CheckpointError, match="quantise again after loading"):
        save_model(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    model.train()
    with pytest.raises(RuntimeError, match="inference only"):
        model(torch.randint(0, 512, (1, 4)))


def test_compiled_decoding_of_a_quantised_model_gives_the_eager_tokens():
    torch.manual_seed(0)
    model = quantize.quantize_int8(Transformer(ModelArgs.from_preset("tiny")))
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    eager = generate(copy.deepcopy(model), [[1, 2, 3]], params, eos_id=-1)[0].tokens
    assert generate(model, [[1, 2, 3]], params, eos_id=-1, compile=True)[0].tokens == eager
