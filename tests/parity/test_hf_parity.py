"""Agreement with Hugging Face `transformers` on the same weights (acceptance: foundation 2-4)."""

import pytest
import torch

from llamaforge.checkpoint import load_model, save_model
from llamaforge.generate import SamplingParams, generate

transformers = pytest.importorskip("transformers")


def random_hf_model(tmp_path, n_kv_heads, *, vocab=128, seed=0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=n_kv_heads,
        vocab_size=vocab,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        attn_implementation="eager",
    )
    hf = transformers.LlamaForCausalLM(config).eval()
    # Norm weights start at 1: randomise them so a misplaced norm cannot hide.
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    hf.save_pretrained(tmp_path / "hf")
    return hf, tmp_path / "hf"


@pytest.mark.parametrize("n_kv_heads", [8, 2], ids=["MHA", "GQA"])
def test_logits_match_transformers_and_survive_meta_round_trip(tmp_path, n_kv_heads):
    hf, hf_dir = random_hf_model(tmp_path, n_kv_heads)
    tokens = torch.randint(0, 128, (3, 40))
    with torch.no_grad():
        expected = hf(tokens).logits
        ours = load_model(hf_dir)
        assert (ours(tokens) - expected).abs().max().item() <= 1e-4

        save_model(ours, tmp_path / "meta", format="meta")
        from_meta = load_model(tmp_path / "meta")
        assert (from_meta(tokens) - expected).abs().max().item() <= 1e-4
        save_model(from_meta, tmp_path / "hf2", format="hf")
        reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf2").eval()
        assert (reloaded(tokens).logits - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("shards", [2, 8])
def test_meta_shards_load_to_the_same_logits(tmp_path, shards):
    _, hf_dir = random_hf_model(tmp_path, 8)
    model = load_model(hf_dir)
    save_model(model, tmp_path / "one", format="meta", shards=1)
    save_model(model, tmp_path / "many", format="meta", shards=shards)
    assert len(list((tmp_path / "many").glob("consolidated.*.pth"))) == shards
    tokens = torch.randint(0, 128, (2, 30))
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "one")(tokens), load_model(tmp_path / "many")(tokens))


def test_sharded_hf_checkpoint_round_trip(tmp_path):
    hf, hf_dir = random_hf_model(tmp_path, 2)
    model = load_model(hf_dir)
    save_model(model, tmp_path / "sharded", format="hf", max_shard_bytes=200_000)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    tokens = torch.randint(0, 128, (1, 20))
    with torch.no_grad():
        reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "sharded").eval()
        assert (reloaded(tokens).logits - hf(tokens).logits).abs().max().item() <= 1e-5
        assert (load_model(tmp_path / "sharded")(tokens) - hf(tokens).logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize("n_kv_heads", [8, 2], ids=["MHA", "GQA"])
def test_greedy_generation_equals_transformers(tmp_path, n_kv_heads):
    hf, hf_dir = random_hf_model(tmp_path, n_kv_heads, seed=3)
    ours = load_model(hf_dir)
    prompt = torch.randint(3, 128, (1, 9))
    with torch.no_grad():
        theirs = hf.generate(
            prompt, max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0, min_new_tokens=24
        )[0, 9:].tolist()
    mine = generate(ours, [prompt[0].tolist()], SamplingParams(max_new_tokens=24), eos_id=-1)[0].tokens
    assert mine == theirs
