import pytest
import torch

from llamaforge.model import ModelArgs, Transformer, apply_rope, precompute_rope, preset_names

# SPEC §1: exact parameter counts of the paper's models.
PAPER_COUNTS = {"7B": 6_738_415_616, "13B": 13_015_864_320, "34B": 33_743_970_304, "70B": 68_976_648_192}
PAPER_FFN = {"7B": 11008, "13B": 13824, "34B": 22016, "70B": 28672}


@pytest.mark.parametrize("name", list(PAPER_COUNTS))
def test_preset_parameter_counts_on_meta_device(name):
    args = ModelArgs.from_preset(name)
    with torch.device("meta"):
        model = Transformer(args)
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == PAPER_COUNTS[name]
    assert args.num_params() == PAPER_COUNTS[name]
    assert args.hidden_dim == PAPER_FFN[name]
    assert ModelArgs.from_preset(f"{name}-chat") == args


def test_paper_shapes():
    a70 = ModelArgs.from_preset("70B")
    assert (a70.dim, a70.n_layers, a70.n_heads, a70.kv_heads) == (8192, 80, 64, 8)
    assert a70.norm_eps == 1e-5 and a70.rope_theta == 10000.0 and a70.vocab_size == 32000 and a70.max_seq_len == 4096
    assert "7B-chat" in preset_names() and "tiny" in preset_names()


def test_bad_args_are_explained():
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelArgs(dim=64, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelArgs.from_preset("8B")
    with pytest.raises(ValueError, match="unknown key"):
        ModelArgs.from_dict({"dim": 64, "use_scaled_rope": True})


def test_rope_rotates_adjacent_pairs():
    head_dim, pos, theta = 8, 3, 10000.0
    x = torch.randn(1, 1, 1, head_dim)
    rope = precompute_rope(head_dim, 10, theta)[pos : pos + 1].unsqueeze(0)
    out = apply_rope(x, rope)
    for i in range(head_dim // 2):
        angle = torch.tensor(pos * theta ** (-2 * i / head_dim))
        z = torch.complex(x[0, 0, 0, 2 * i], x[0, 0, 0, 2 * i + 1]) * torch.polar(torch.tensor(1.0), angle)
        assert torch.allclose(out[0, 0, 0, 2 * i], z.real, atol=1e-6)
        assert torch.allclose(out[0, 0, 0, 2 * i + 1], z.imag, atol=1e-6)


def test_rmsnorm_matches_formula():
    model = Transformer(ModelArgs.from_preset("tiny", vocab_size=32))
    norm = model.norm
    norm.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 64)
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    assert torch.allclose(norm(x), expected, atol=1e-6)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_kv_cache_matches_full_forward(n_kv_heads):
    args = ModelArgs.from_preset("tiny", vocab_size=97, n_kv_heads=n_kv_heads)
    model = Transformer(args).eval()
    tokens = torch.randint(0, 97, (2, 24))
    with torch.no_grad():
        full = model(tokens)
        model.setup_cache(2, 32)
        pieces = [model(tokens[:, :7], 0), model(tokens[:, 7:15], 7)]  # prefill, then a chunk
        pieces += [model(tokens[:, i : i + 1], i) for i in range(15, 24)]  # one token at a time
        model.clear_cache()
    assert (torch.cat(pieces, dim=1) - full).abs().max().item() <= 1e-5


def test_cache_holds_only_kv_heads():
    args = ModelArgs.from_preset("tiny", vocab_size=32, n_kv_heads=1)
    model = Transformer(args)
    model.setup_cache(3, 16)
    k = model.layers[0].attention.cache.k
    assert k.shape == (3, 1, 16, args.head_dim)


def test_causality():
    model = Transformer(ModelArgs.from_preset("tiny", vocab_size=50)).eval()
    a = torch.randint(0, 50, (1, 12))
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % 50
    with torch.no_grad():
        assert torch.equal(model(a)[:, :8], model(b)[:, :8])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes_run_and_agree(dtype):
    model = Transformer(ModelArgs.from_preset("tiny", vocab_size=64)).eval()
    tokens = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        ref = model(tokens)
        low = model.to(dtype)(tokens)
    assert low.dtype == dtype
    assert (low.float() - ref).abs().max() < 0.05


def test_too_long_input_is_explained():
    model = Transformer(ModelArgs.from_preset("tiny", vocab_size=16, max_seq_len=8))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_activation_checkpointing_gives_same_gradients():
    torch.manual_seed(1)
    model = Transformer(ModelArgs.from_preset("tiny", vocab_size=40)).train()
    tokens = torch.randint(0, 40, (2, 16))

    def grads():
        model.zero_grad()
        model(tokens).float().logsumexp(-1).mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.activation_checkpointing = True
    checkpointed = grads()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, checkpointed))


@pytest.mark.parametrize("chunk_rows", [1, 5, 64])
@pytest.mark.parametrize("ignored_share", [0.0, 0.6, 1.0])
def test_chunked_cross_entropy_equals_logits_then_cross_entropy(chunk_rows, ignored_share):
    from llamaforge.model import IGNORE_INDEX, chunked_cross_entropy

    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(40, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 40, (3, 7))
    targets[torch.rand(3, 7) < ignored_share] = IGNORE_INDEX
    got = chunked_cross_entropy(hidden, weight, targets, chunk_rows=chunk_rows)
    got_grads = torch.autograd.grad(got * 1.7, (hidden, weight))
    logits = hidden @ weight.t()
    want = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    want_grads = torch.autograd.grad(want * 1.7, (hidden, weight))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
