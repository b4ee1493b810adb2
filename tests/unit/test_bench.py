"""`llamaforge bench` plumbing on a tiny config (no timing is asserted), and the fast paths
it measures: the chunked cross-entropy and the decode helpers give the plain results."""

import pytest
import torch
import torch.nn.functional as F

from llamaforge import bench
from llamaforge.generate import SamplingParams, generate, last_logits, transposed_output
from llamaforge.model import IGNORE_INDEX, ModelArgs, Transformer, chunked_cross_entropy


def test_chunked_cross_entropy_matches_plain_loss_and_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(3, 11, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    targets = torch.randint(0, 40, (3, 11))
    targets[0, :4] = IGNORE_INDEX
    plain = F.cross_entropy((hidden @ weight.t()).flatten(0, 1), targets.flatten(), reduction="sum")
    (2.5 * plain).backward()
    expected = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    chunked = chunked_cross_entropy(hidden, weight, targets, chunk_rows=7)  # chunks straddle rows
    (2.5 * chunked).backward()
    assert torch.allclose(chunked, plain, rtol=1e-6)
    assert torch.allclose(hidden.grad, expected[0], atol=1e-5)
    assert torch.allclose(weight.grad, expected[1], atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(chunked_cross_entropy(hidden, weight, targets), plain, rtol=1e-6)


def test_model_with_targets_returns_the_summed_loss_of_its_logits():
    model = Transformer(ModelArgs.from_preset("tiny", vocab_size=64))
    tokens = torch.randint(0, 64, (2, 12))
    logits = model(tokens)
    expected = F.cross_entropy(logits.flatten(0, 1), tokens.flatten(), reduction="sum")
    assert torch.allclose(model(tokens, targets=tokens), expected, rtol=1e-5)


def test_decode_helpers_match_the_full_forward():
    model = Transformer(ModelArgs.from_preset("tiny", vocab_size=64)).eval()
    tokens = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        full = model(tokens)[:, -1]
        assert torch.allclose(last_logits(model, tokens, 0), full, atol=1e-5)
        assert torch.allclose(last_logits(model, tokens, 0, output_t=transposed_output(model)), full, atol=1e-5)
        first = transposed_output(model)
        assert transposed_output(model) is first  # kept between calls
        model.output.weight.mul_(2)  # an in-place change (an optimizer step) invalidates it
        assert torch.equal(transposed_output(model), model.output.weight.t())


def test_generate_is_unchanged_by_the_decode_fast_path():
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_preset("tiny", vocab_size=64)).eval()
    prompt = [1, 5, 9, 3]
    out = generate(model, [prompt], SamplingParams(max_new_tokens=6))[0].tokens
    tokens = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(6):  # no cache, no fast path: the whole sequence each time
            tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert out == tokens[0, len(prompt):].tolist()


def test_bench_report_on_a_tiny_config():
    pytest.importorskip("transformers")
    report = bench.run(
        ["tiny"], suites=("train", "generate"), repeats=1, precisions=("fp32",), peak_sizes=(256,), log=lambda m: None
    )
    rows = [r for r in report["rows"] if r["impl"] != "note"]
    assert {r["what"] for r in rows} >= {"train fp32", "prefill float32 b1", "prefill float32 b8", "decode float32 b1",
                                         "decode float32 b8", "time to first token float32 b1 (ms)"}
    for what in {r["what"] for r in rows}:
        group = {r["impl"]: r for r in rows if r["what"] == what}
        assert group["transformers"]["vs_transformers"] == pytest.approx(1.0)
        key = "ms" if "(ms)" in what else "tokens_per_s"
        ours, ref = group["llamaforge"][key], group["transformers"][key]
        expected = ref / ours if key == "ms" else ours / ref
        assert ours > 0 and group["llamaforge"]["vs_transformers"] == pytest.approx(expected)
    train = {r["impl"]: r for r in rows if r["what"] == "train fp32"}
    assert set(train) == {"transformers", "llamaforge", "llamaforge act. checkpointing"}
    assert all(0 < r["mfu"] < 10 for r in train.values())
    notes = [r["note"] for r in report["rows"] if r["impl"] == "note"]
    assert any("agree with transformers" in n for n in notes)  # same weights, same greedy tokens
    assert report["matmul_peak"]["fp32"] > 0
    text = bench.markdown(report)
    assert "| tiny | train fp32 | llamaforge |" in text and "vs transformers" in text


def test_training_memory_is_measured_in_a_subprocess():
    pytest.importorskip("transformers")
    memory = bench.training_peak_memory(bench.CONFIGS["tiny"], torch.device("cpu"), "llamaforge", "fp32")
    assert memory["peak_mib"] > memory["train_mib"] > 0
