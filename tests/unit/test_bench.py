"""`llamaforge bench` plumbing on a tiny config (no timing is asserted), and the fast paths
it measures: the chunked cross-entropy and the decode helpers give the plain results."""

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from llamaforge import bench
from llamaforge import cpu_kernels
from llamaforge.cpu_kernels import decode_layout, use_decode_layout
from llamaforge.generate import SamplingParams, generate, last_logits
from llamaforge.model import IGNORE_INDEX, Linear, ModelArgs, Transformer, chunked_cross_entropy


@pytest.fixture(params=["onednn", "torch"])
def cpu_matmuls(request, monkeypatch):
    """Both fp32 CPU matmul paths: oneDNN's (where this torch has it) and torch's default."""
    if request.param == "onednn" and not cpu_kernels._onednn_works():
        pytest.skip("this torch has no usable oneDNN linear op")
    monkeypatch.setattr(cpu_kernels, "_onednn", request.param == "onednn")
    return request.param


def test_chunked_cross_entropy_matches_plain_loss_and_gradients(cpu_matmuls):
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


def test_chunked_cross_entropy_under_bf16_autocast_stays_near_fp32():
    # bf16 logits and softmax: the loss and the gradients within bf16 rounding of fp32's.
    torch.manual_seed(0)
    hidden = torch.randn(4, 9, 32, requires_grad=True)
    weight = (0.3 * torch.randn(300, 32)).requires_grad_()
    targets = torch.randint(0, 300, (4, 9))
    plain = F.cross_entropy((hidden @ weight.t()).flatten(0, 1), targets.flatten(), reduction="sum")
    want = torch.autograd.grad(plain, (hidden, weight))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked = chunked_cross_entropy(hidden, weight, targets, chunk_rows=10)
    got = torch.autograd.grad(chunked, (hidden, weight))
    assert chunked.dtype == torch.float32 and abs(chunked.item() / plain.item() - 1) < 5e-3
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        assert (g - w).norm() / w.norm() < 2e-2


def test_chunked_cross_entropy_in_fp16_stays_exact_where_probabilities_leave_fp16s_range():
    # p_t = e^-16 is subnormal in fp16 (two significant bits): the loss must still be right.
    hidden = torch.tensor([[1.0]], dtype=torch.float16)
    weight = torch.tensor([[0.0], [-16.0]], dtype=torch.float16)
    loss = chunked_cross_entropy(hidden, weight, torch.tensor([[1]]))
    assert loss.item() == pytest.approx(16 + torch.log1p(torch.tensor(-16.0).exp()).item(), rel=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_cross_entropy_of_a_hopeless_token_is_finite_and_right(dtype):
    # Target logit 300 below the others: softmax gives p_t = 0, and the loss must still be 300 + log(2).
    hidden = torch.tensor([[1.0]])
    weight = torch.tensor([[0.0], [0.0], [-300.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        loss = chunked_cross_entropy(hidden, weight, torch.tensor([[2]]))
    assert loss.item() == pytest.approx(300 + torch.log(torch.tensor(2.0)).item(), rel=1e-3)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (6, 1)])
def test_bf16_causal_attention_matches_flash_attention_in_fp32(monkeypatch, heads, kv_heads):
    monkeypatch.setattr(cpu_kernels, "cpu_has_bf16_matmul", lambda: True)  # the math, on any CPU
    torch.manual_seed(0)
    B, T, D = 2, 24, 16
    q32, k32, v32 = torch.randn(B, heads, T, D), torch.randn(B, kv_heads, T, D), torch.randn(B, kv_heads, T, D)
    grad = torch.randn(B, heads, T, D)
    ref = [t.clone().requires_grad_() for t in (q32, k32, v32)]
    want = F.scaled_dot_product_attention(*ref, is_causal=True, enable_gqa=heads != kv_heads)
    want_grads = torch.autograd.grad(want, ref, grad)
    low = [t.bfloat16().requires_grad_() for t in (q32, k32, v32)]
    got = cpu_kernels.causal_attention(*low)
    got_grads = torch.autograd.grad(got, low, grad.bfloat16())
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    for g, w in zip((got, *got_grads), (want, *want_grads)):
        assert g.shape == w.shape
        assert (g.float() - w).norm() / w.norm() < 2e-2


@pytest.mark.parametrize("block,T", [(64, 24), (8, 24), (7, 24), (5, 11)])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_fp32_causal_attention_in_query_blocks_equals_flash_attention(monkeypatch, block, T, heads, kv_heads):
    # Blocks that divide T, that do not, and one block for all: the same values as SDPA.
    monkeypatch.setattr(cpu_kernels, "FP32_QUERY_BLOCK", block)
    torch.manual_seed(0)
    q = torch.randn(2, heads, T, 8, requires_grad=True)
    k, v = torch.randn(2, kv_heads, T, 8, requires_grad=True), torch.randn(2, kv_heads, T, 8, requires_grad=True)
    grad = torch.randn(2, heads, T, 8)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=heads != kv_heads)
    want_grads = torch.autograd.grad(want, (q, k, v), grad)
    got = cpu_kernels.causal_attention(q, k, v)
    got_grads = torch.autograd.grad(got, (q, k, v), grad)
    for g, w in zip((got, *got_grads), (want, *want_grads)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_causal_attention_leaves_other_inputs_to_sdpa(monkeypatch):
    b = torch.randn(1, 2, 8, 4).bfloat16()
    assert cpu_kernels.causal_attention(b, b[:, :, :5], b[:, :, :5]) is None  # keys != queries
    assert cpu_kernels.causal_attention(b.half(), b.half(), b.half()) is None  # fp16: no fast CPU matmuls
    assert cpu_kernels.causal_attention(b, b.float(), b) is None  # mixed dtypes
    monkeypatch.setattr(cpu_kernels, "cpu_has_bf16_matmul", lambda: True)
    assert cpu_kernels.causal_attention(b, b, b) is not None
    assert cpu_kernels.causal_attention(b.float(), b.float(), b.float()) is not None
    # Without bf16 matrix units a bf16 batched matmul is emulated (many times slower): flash takes it.
    monkeypatch.setattr(cpu_kernels, "cpu_has_bf16_matmul", lambda: False)
    assert cpu_kernels.causal_attention(b, b, b) is None
    assert cpu_kernels.causal_attention(b.float(), b.float(), b.float()) is not None
    monkeypatch.setattr(cpu_kernels, "cpu_has_bf16_matmul", lambda: True)
    monkeypatch.setattr(cpu_kernels, "MAX_SCORES", 2 * 8 * 8 - 1)
    assert cpu_kernels.causal_attention(b, b, b) is None


def test_causal_attention_under_compile_asks_nothing_of_the_cpu(monkeypatch):
    # Compiling is tested first: a compiled bf16 step never traces the CPU capability query.
    def untraceable():
        raise AssertionError("queried the CPU while compiling")

    monkeypatch.setattr(cpu_kernels, "cpu_has_bf16_matmul", untraceable)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    b = torch.randn(1, 2, 8, 4).bfloat16()
    assert cpu_kernels.causal_attention(b, b, b) is None


def test_keep_freed_memory_reports_and_respects_the_switch(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_kept", None)
    monkeypatch.setenv("LLAMAFORGE_MALLOC", "0")
    assert cpu_kernels.keep_freed_memory() is False
    monkeypatch.setattr(cpu_kernels, "_kept", None)
    monkeypatch.delenv("LLAMAFORGE_MALLOC")
    import platform

    expected = platform.libc_ver()[0] == "glibc"
    assert cpu_kernels.keep_freed_memory() is expected
    assert cpu_kernels.keep_freed_memory() is expected  # decided once


def test_onednn_is_the_default_on_avx512_cpus_only_and_the_switch_overrides(monkeypatch):
    wants = cpu_kernels._wants_onednn
    assert wants("", "AVX512") and wants("auto", "avx512")
    assert not wants("", "AVX2") and not wants("", "DEFAULT")
    assert wants("1", "AVX2") and not wants("0", "AVX512")
    # onednn_matmuls() asks torch for this CPU's capability, once per process.
    monkeypatch.setattr(cpu_kernels, "_onednn", None)
    monkeypatch.setenv("LLAMAFORGE_ONEDNN", "0")
    assert cpu_kernels.onednn_matmuls() is False
    monkeypatch.setattr(cpu_kernels, "_onednn", None)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.delenv("LLAMAFORGE_ONEDNN")
    assert cpu_kernels.onednn_matmuls() is cpu_kernels._onednn_works()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert cpu_kernels.onednn_matmuls() is cpu_kernels._onednn_works()  # decided once
    monkeypatch.setattr(cpu_kernels, "_onednn", None)
    assert cpu_kernels.onednn_matmuls() is False


def test_model_with_targets_returns_the_summed_loss_of_its_logits():
    model = Transformer(ModelArgs.from_preset("tiny", vocab_size=64))
    tokens = torch.randint(0, 64, (2, 12))
    logits = model(tokens)
    expected = F.cross_entropy(logits.flatten(0, 1), tokens.flatten(), reduction="sum")
    assert torch.allclose(model(tokens, targets=tokens), expected, rtol=1e-5)


def test_decode_helpers_match_the_full_forward(cpu_matmuls):
    model = Transformer(ModelArgs.from_preset("tiny", vocab_size=64)).eval()
    tokens = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        full = model(tokens)[:, -1]
        assert torch.allclose(last_logits(model, tokens, 0), full, atol=1e-5)
        use_decode_layout(model)
        assert torch.allclose(last_logits(model, tokens, 0), full, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 3, 40])
def test_fused_decode_projections_equal_the_separate_ones(cpu_matmuls, rows):
    model = Transformer(ModelArgs.from_preset("tiny", vocab_size=64, n_kv_heads=2)).eval()
    attention, ffn = model.layers[0].attention, model.layers[0].feed_forward
    x = torch.randn(1, rows, model.args.dim)
    with torch.no_grad():
        want = [m(x) for m in (attention.wq, attention.wk, attention.wv, ffn.w1, ffn.w3)]
        assert cpu_kernels.fused_rows_linear(x, (attention.wq, attention.wk)) is None  # not side by side
        with decode_layout(model):
            qkv = cpu_kernels.fused_rows_linear(x, (attention.wq, attention.wk, attention.wv))
            gate_up = cpu_kernels.fused_rows_linear(x, (ffn.w1, ffn.w3))
            assert cpu_kernels.fused_rows_linear(x, (attention.wk, attention.wv)) is None  # not the whole matrix
            for got, expected in zip((*qkv, *gate_up), want):  # few rows split, a prefill's not
                assert got.shape == expected.shape
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_prefill_under_the_decode_layout_gives_onednn_no_strided_weight(monkeypatch):
    # oneDNN runs a column block of a wider matrix through its reference kernel (minutes for a
    # demo's prompts): every operand it gets must be dense, or the transpose of a dense matrix.
    if not cpu_kernels._onednn_works():
        pytest.skip("this torch has no usable oneDNN linear op")
    monkeypatch.setattr(cpu_kernels, "_onednn", True)
    model = Transformer(ModelArgs.from_preset("tiny", vocab_size=64, n_kv_heads=2)).eval()
    tokens = torch.randint(0, 64, (2, 12))
    operands = []
    real = cpu_kernels.onednn_mm
    monkeypatch.setattr(cpu_kernels, "onednn_mm", lambda a, b: operands.append(b) or real(a, b))
    with torch.no_grad():
        want = model(tokens)
        with decode_layout(model):
            got = model(tokens)  # 24 rows: no split-rows path
            assert not cpu_kernels.onednn_applies(model.layers[0].attention.wk.weight)
    assert operands and all(b.is_contiguous() or b.t().is_contiguous() for b in operands)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [3, 7, 256])
def test_transposed_copy_in_row_blocks_is_the_contiguous_transpose(monkeypatch, rows):
    monkeypatch.setattr(cpu_kernels, "TRANSPOSE_ROWS", rows)
    m = torch.randn(10, 6)
    for source in (m, m[:, 1:4], m.t()):  # contiguous, a column block, a transposed view
        out = cpu_kernels.transposed_copy(source)
        assert out.is_contiguous() and torch.equal(out, source.t())
    wide = torch.zeros(6, 14)
    written = cpu_kernels.transposed_copy(m, out=wide[:, 2:12])  # into a column block of a wider matrix
    assert written.data_ptr() == wide[:, 2:12].data_ptr() and torch.equal(wide[:, 2:12], m.t())
    assert not wide[:, :2].any() and not wide[:, 12:].any()


def test_decode_layout_lasts_one_generation_and_keeps_training_exact():
    torch.manual_seed(0)
    a = Transformer(ModelArgs.from_preset("tiny", vocab_size=64))
    b = Transformer(ModelArgs.from_preset("tiny", vocab_size=64))
    b.load_state_dict(a.state_dict())
    wq = a.layers[0].attention.wq
    with decode_layout(a):
        assert not wq.weight.is_contiguous() and wq.weight.stride(0) == 1 and not wq.weight.is_inference()
        wo = a.layers[0].attention.wo
        assert wo.weight.t().is_contiguous()  # alone; wq, wk and wv side by side in one matrix:
        wk = a.layers[0].attention.wk
        assert wk.weight.untyped_storage().data_ptr() == wq.weight.untyped_storage().data_ptr()
        with decode_layout(a):  # nested (chat_replies around generate): nothing converted twice
            assert use_decode_layout(a) == []
        assert not wq.weight.is_contiguous()  # the inner exit restored nothing
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert wq.weight.is_contiguous()
    tokens = torch.randint(0, 64, (2, 17))
    opts = bench.make_optimizer(a), bench.make_optimizer(b)  # fused AdamW on CPU: state made before sampling
    for step in range(4):
        if step == 2:  # sampling in the middle of training leaves the weights as they were
            generate(a, [[1, 2, 3]], SamplingParams(max_new_tokens=3))
            assert all(p.is_contiguous() for p in a.parameters())
        for model, opt in zip((a, b), opts):
            model(tokens[:, :-1], targets=tokens[:, 1:].contiguous()).backward()
            opt.step()
            opt.zero_grad()
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("threads, splits", [(2, 3), (3, 3), (5, 0)])  # 5 does not divide 48: plain path
def test_split_decode_matmul_equals_linear(threads, splits, monkeypatch):
    torch.manual_seed(0)
    layer = Linear(48, 20)
    use_decode_layout(layer)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    calls = []
    monkeypatch.setattr(torch, "bmm", lambda *a, _bmm=torch.bmm: calls.append(1) or _bmm(*a))
    for shape in [(1, 48), (2, 1, 48), (8, 48), (9, 48)]:  # 9 rows: the plain path
        x = torch.randn(shape)
        assert torch.allclose(layer(x), F.linear(x, layer.weight), atol=1e-5)
    assert len(calls) == splits


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
    decode = {r["impl"] for r in rows if r["what"] == "decode float32 b1"}
    assert decode == {"transformers", "llamaforge", "llamaforge layout held"}  # as chat/serve keep the model
    assert all(0 < r["mfu"] < 10 for r in train.values())
    notes = [r["note"] for r in report["rows"] if r["impl"] == "note"]
    assert any("agree with transformers" in n for n in notes)  # same weights, same greedy tokens
    assert report["matmul_peak"]["fp32"] > 0
    # Decode rows: steps/s x (weights + the KV cache at its mean length) / the run's bandwidth.
    cfg = bench.CONFIGS["tiny"]
    weight_bytes = bench.decode_weight_bytes(bench.Transformer(cfg.args()))
    for r in rows:
        if r["what"].startswith("decode"):
            batch = int(r["what"].rsplit("b", 1)[1])
            kv = bench.kv_cache_read_bytes(cfg.args(), batch, cfg.prompt_len + cfg.new_tokens / 2, 4)
            expected = r["tokens_per_s"] / batch * (weight_bytes + kv) / report["memory_bandwidth"]
            assert r["bandwidth_bound"] == pytest.approx(expected) and "datasheet_bound" not in r
        else:
            assert "bandwidth_bound" not in r
    text = bench.markdown(report)
    assert "| tiny | train fp32 | llamaforge |" in text and "vs transformers" in text
    assert "% of bound |" in text and "Memory read bandwidth measured in this run" in text


def test_decode_weight_bytes_skip_the_embedding_table_unless_the_output_layer_reads_it():
    args = bench.CONFIGS["tiny"].args()
    model = bench.Transformer(args)
    everything = sum(p.numel() * p.element_size() for p in model.parameters())
    table = args.vocab_size * args.dim * 4
    assert bench.decode_weight_bytes(model) == everything - table
    model.tok_embeddings.to(torch.float64)  # the table alone changes: the count must not
    assert bench.decode_weight_bytes(model) == everything - table
    model.output.to(torch.float64)  # the output layer is read: its bytes double
    assert bench.decode_weight_bytes(model) == everything - table + table
    model = bench.Transformer(args)
    model.output.weight = model.tok_embeddings.weight  # tied: the output layer reads the whole table
    assert bench.decode_weight_bytes(model) == sum(p.numel() * p.element_size() for p in model.parameters())
    model.setup_cache(2)  # the cache is not weights
    assert bench.decode_weight_bytes(model) == sum(p.numel() * p.element_size() for p in model.parameters())


def test_decode_weight_bytes_of_an_int8_model_count_its_int8_weights_and_scales():
    from llamaforge.quantize import quantize_int8

    args = bench.CONFIGS["tiny"].args()
    model = bench.Transformer(args)
    fp32 = bench.decode_weight_bytes(model)
    quantize_int8(model)
    block = sum(p.numel() for n, p in bench.Transformer(args).named_parameters() if n.startswith("layers.") and "norm" not in n)
    rows = sum(m.weight_int8.shape[0] for m in model.modules() if hasattr(m, "weight_int8"))
    assert bench.decode_weight_bytes(model) == fp32 - 4 * block + block + 4 * rows  # int8 values, fp32 row scales


def test_kv_cache_read_bytes_by_hand():
    args = bench.ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=32)  # head_dim 16
    # keys and values x 2 layers x batch 8 x 2 KV heads x 16 dims x 4 bytes x 10 positions
    assert bench.kv_cache_read_bytes(args, 8, 10, 4) == 2 * 2 * 8 * 2 * 16 * 4 * 10


def test_memory_read_bandwidth_takes_the_fastest_timing(monkeypatch):
    ends = iter([0.0, 5.0, 10.0, 11.0, 20.0, 23.0])  # start/end of three timings: 5 s, 1 s, 3 s
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(ends))
    assert bench.memory_read_bandwidth(torch.device("cpu"), nbytes=4096, trials=3, reads=1) == pytest.approx(4096 / 1.0)
    monkeypatch.undo()
    assert bench.memory_read_bandwidth(torch.device("cpu"), nbytes=1 << 20) > 0


def test_generation_runs_the_batch_sizes_asked_for():
    pytest.importorskip("transformers")
    report = bench.run(["tiny"], suites=("generate",), repeats=1, precisions=("fp32",), peak_sizes=(256,),
                       batches=(3,), log=lambda m: None)
    measured = {r["what"] for r in report["rows"] if r["impl"] != "note"}
    assert measured == {"prefill float32 b3", "decode float32 b3"}  # no batch-1 time to first token either
    with pytest.raises(SystemExit):
        bench.main(["--configs", "tiny", "--batches", "0"])


def test_a_config_without_checkpointing_times_no_checkpointing_variant(monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setitem(bench.CONFIGS, "tiny", replace(bench.CONFIGS["tiny"], checkpointing=False))
    report = bench.run(["tiny"], suites=("train",), repeats=1, precisions=("fp32",), peak_sizes=(256,), log=lambda m: None)
    impls = {r["impl"] for r in report["rows"] if r["what"] == "train fp32" and r["impl"] != "note"}
    assert impls == {"transformers", "llamaforge"}


def test_an_interrupted_bench_still_writes_the_rows_measured(monkeypatch, tmp_path):
    def interrupted_run(configs, *, report, **kwargs):
        report.update({"environment": bench.environment(torch.device("cpu")), "repeats": 1, "skipped": [],
                       "matmul_peak": {"fp32": 1e11}, "rows": [{"config": "tiny", "what": "decode float32 b1",
                                                                 "impl": "llamaforge", "tokens_per_s": 123.0}]})
        raise KeyboardInterrupt  # as SIGTERM from `timeout` does, through the handler main installs

    monkeypatch.setattr(bench, "run", interrupted_run)
    out = tmp_path / "r.md"
    assert bench.main(["--configs", "tiny", "--out", str(out), "--json", str(tmp_path / "r.json")]) == 1
    assert "| tiny | decode float32 b1 | llamaforge | 123 tok/s |" in out.read_text()
    assert "interrupted" in out.read_text() and json.loads((tmp_path / "r.json").read_text())["rows"]


def test_training_memory_is_measured_in_a_subprocess():
    pytest.importorskip("transformers")
    memory = bench.training_peak_memory(bench.CONFIGS["tiny"], torch.device("cpu"), "llamaforge", "fp32")
    assert memory["peak_mib"] > memory["train_mib"] > 0


def test_cpu_fp32_matmuls_match_torch_with_gradients(cpu_matmuls):
    """The oneDNN path (where torch has it) gives torch's values and gradients, for the
    projections and for the fused cross-entropy's vocabulary matmuls."""
    torch.manual_seed(0)
    layer = Linear(24, 40)
    x = torch.randn(3, 5, 24, requires_grad=True)
    layer(x).square().sum().backward()
    got = x.grad.clone(), layer.weight.grad.clone()
    x.grad = layer.weight.grad = None
    F.linear(x, layer.weight).square().sum().backward()
    assert torch.allclose(got[0], x.grad, atol=1e-5) and torch.allclose(got[1], layer.weight.grad, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(layer(x), F.linear(x, layer.weight), atol=1e-5)
    a, b = torch.randn(300, 17), torch.randn(17, 9)
    assert torch.allclose(cpu_kernels.matmul(a, b), a @ b, atol=1e-5)
    assert torch.allclose(cpu_kernels.matmul(a.t().contiguous().t(), b.t().contiguous().t()), a @ b, atol=1e-5)


@pytest.mark.parametrize("outs", [(16, 4, 4), (6,), (3, 2), (4, 16, 2)])  # in 8: x^T shared; x^T alone; each g^T; the frozen 16 does not count
def test_projections_sharing_an_input_give_torchs_values_and_gradients(cpu_matmuls, outs, monkeypatch):
    """`shared_input_linear` (the q/k/v and w1/w3 projections in training) against F.linear,
    with one weight frozen; where x^T is copied for the weight gradients, it is copied once,
    and an output left unused gives its weight no gradient (None, as F.linear)."""
    if cpu_matmuls != "onednn":
        pytest.skip("without oneDNN shared_input_linear is F.linear itself")
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, requires_grad=True)
    weights = [torch.randn(o, 8, requires_grad=i != 1) for i, o in enumerate(outs)]
    probes = [torch.randn(3, 5, o) for o in outs]
    left = []
    real = cpu_kernels.onednn_mm
    monkeypatch.setattr(cpu_kernels, "onednn_mm", lambda a, b: left.append(a) or real(a, b))
    got = cpu_kernels.shared_input_linear(x, weights)
    grads = torch.autograd.grad(sum((o * p).sum() for o, p in zip(got, probes)), [x, weights[0]])
    want = [F.linear(x, w) for w in weights]
    expected = torch.autograd.grad(sum((o * p).sum() for o, p in zip(want, probes)), [x, weights[0]])
    for a, b in zip((*got, *grads), (*want, *expected)):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    transposed_x = {id(a) for a in left if a.shape == (8, 15)}
    assert len(transposed_x) == (1 if 8 < sum(o for i, o in enumerate(outs) if i != 1) else 0)

    got = cpu_kernels.shared_input_linear(x, weights)
    (got[0] * probes[0]).sum().backward()
    want = torch.autograd.grad((F.linear(x, weights[0]) * probes[0]).sum(), weights[0])[0]
    assert torch.allclose(weights[0].grad, want, atol=1e-5)
    assert all(w.grad is None for w in weights[1:])


def test_cpu_matmul_edge_cases(cpu_matmuls):
    layer = Linear(8, 4)
    empty = torch.randn(0, 8, requires_grad=True)  # no rows (an SFT batch without answers)
    layer(empty).sum().backward()
    assert empty.grad.shape == (0, 8) and torch.equal(layer.weight.grad, torch.zeros(4, 8))
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    cpu_kernels._onednn_works()  # the kernel check leaves the global RNG alone
    assert torch.equal(torch.rand(3), expected)
    x = torch.randn(2, 8, requires_grad=True)
    (grad,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    if cpu_matmuls == "onednn":  # no silent wrong second derivative
        with pytest.raises(RuntimeError):
            grad.square().sum().backward()
