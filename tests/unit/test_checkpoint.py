import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from llamaforge.checkpoint import (
    CheckpointError,
    atomic_dir,
    describe,
    detect_format,
    export_llama2c,
    load_model,
    merge_shards,
    save_model,
    split_shards,
)
from llamaforge.model import ModelArgs, Transformer


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = Transformer(ModelArgs.from_preset("tiny", vocab_size=64, n_kv_heads=2))
    for layer in m.layers:  # non-trivial norms so a swapped norm shows up
        layer.attention_norm.weight.data.uniform_(0.5, 1.5)
        layer.ffn_norm.weight.data.uniform_(0.5, 1.5)
    return m


def test_split_and_merge_follow_meta_layout(model):
    state = model.state_dict()
    shards = split_shards(state, 2)
    assert shards[0]["layers.0.attention.wq.weight"].shape == (32, 64)  # column parallel: dim 0
    assert shards[0]["layers.0.attention.wo.weight"].shape == (64, 32)  # row parallel: dim 1
    assert shards[0]["tok_embeddings.weight"].shape == (64, 32)  # embedding dim split
    assert shards[1]["norm.weight"].shape == (64,)  # replicated
    merged = merge_shards(shards)
    assert all(torch.equal(merged[k], v) for k, v in state.items())


def test_meta_save_writes_params_and_checklist(tmp_path, model):
    save_model(model, tmp_path / "m", format="meta", shards=2)
    params = json.loads((tmp_path / "m" / "params.json").read_text())
    assert params["dim"] == 64 and params["n_kv_heads"] == 2 and params["vocab_size"] == 64
    lines = (tmp_path / "m" / "checklist.chk").read_text().splitlines()
    assert sorted(line.split()[1] for line in lines) == ["consolidated.00.pth", "consolidated.01.pth", "params.json"]
    assert detect_format(tmp_path / "m") == "meta"


def test_checksum_mismatch_is_caught(tmp_path, model):
    save_model(model, tmp_path / "m", format="meta")
    shard = tmp_path / "m" / "consolidated.00.pth"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch.*consolidated.00.pth"):
        load_model(tmp_path / "m")


def test_vocab_size_minus_one_is_taken_from_the_tokenizer(tmp_path, llama2_tokenizer_path):
    args = ModelArgs.from_preset("tiny", vocab_size=32000)
    model = Transformer(args)
    save_model(model, tmp_path / "llama" / "llama-2-tiny", format="meta")
    (tmp_path / "llama" / "tokenizer.model").write_bytes(llama2_tokenizer_path.read_bytes())
    params_file = tmp_path / "llama" / "llama-2-tiny" / "params.json"
    params = json.loads(params_file.read_text())
    params["vocab_size"] = -1
    params_file.write_text(json.dumps(params))
    loaded = load_model(tmp_path / "llama" / "llama-2-tiny", verify_checksums=False)
    assert loaded.args.vocab_size == 32000


def test_meta_rope_freqs_buffer_is_ignored(tmp_path, model):
    save_model(model, tmp_path / "m", format="meta")
    path = tmp_path / "m" / "consolidated.00.pth"
    state = torch.load(path, weights_only=True)
    state["rope.freqs"] = torch.zeros(16)
    torch.save(state, path)
    assert torch.equal(load_model(tmp_path / "m", verify_checksums=False).output.weight, model.output.weight)


def test_shape_mismatch_names_tensor_and_shapes(tmp_path, model):
    save_model(model, tmp_path / "m", format="native")
    params_file = tmp_path / "m" / "params.json"
    params = json.loads(params_file.read_text())
    params["vocab_size"] = 80
    params_file.write_text(json.dumps(params))
    with pytest.raises(CheckpointError, match=r"tok_embeddings.weight: expected shape \[80, 64\], found \[64, 64\]"):
        load_model(tmp_path / "m")


def test_unknown_params_key_and_bad_json(tmp_path, model):
    save_model(model, tmp_path / "m", format="meta")
    params_file = tmp_path / "m" / "params.json"
    params_file.write_text(json.dumps({**json.loads(params_file.read_text()), "use_scaled_rope": True}))
    with pytest.raises(CheckpointError, match="use_scaled_rope"):
        load_model(tmp_path / "m", verify_checksums=False)
    params_file.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path / "m", verify_checksums=False)


def test_not_a_checkpoint_is_explained(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_model(tmp_path / "empty")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_loading_never_executes_pickled_code(tmp_path, model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_model(model, tmp_path / "m", format="meta")
    path = tmp_path / "m" / "consolidated.00.pth"
    with open(path, "wb") as f:
        pickle.dump({"tok_embeddings.weight": _Exploit()}, f)
    with pytest.raises(Exception):
        load_model(tmp_path / "m", verify_checksums=False)
    assert not (tmp_path / "pwned").exists()


def test_atomic_dir_keeps_the_old_checkpoint_on_failure(tmp_path, model):
    save_model(model, tmp_path / "m", format="native")
    before = sorted(p.name for p in (tmp_path / "m").iterdir())
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "m") as tmp:
            (tmp / "params.json").write_text("{}")
            raise RuntimeError("crash mid-write")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp leftovers
    load_model(tmp_path / "m")


def test_run_dir_loads_latest_checkpoint(tmp_path, model):
    save_model(model, tmp_path / "run" / "01-pretrain" / "checkpoints" / "step-5", format="native")
    newer = Transformer(model.args)
    save_model(newer, tmp_path / "run" / "01-pretrain" / "checkpoints" / "step-10", format="native")
    assert detect_format(tmp_path / "run") == "run"
    assert torch.equal(load_model(tmp_path / "run").output.weight, newer.output.weight)


def read_llama2c(path):
    """An independent reader written from run.c's memory_map_weights."""
    raw = open(path, "rb").read()
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = struct.unpack("7i", raw[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    floats = np.frombuffer(raw[28:], dtype=np.float32)
    head = dim // n_heads
    kv_dim = n_kv_heads * head
    sizes = [
        ("token_embedding_table", (vocab, dim)),
        ("rms_att_weight", (n_layers, dim)),
        ("wq", (n_layers, dim, dim)),
        ("wk", (n_layers, kv_dim, dim)),
        ("wv", (n_layers, kv_dim, dim)),
        ("wo", (n_layers, dim, dim)),
        ("rms_ffn_weight", (n_layers, dim)),
        ("w1", (n_layers, hidden, dim)),
        ("w2", (n_layers, dim, hidden)),
        ("w3", (n_layers, hidden, dim)),
        ("rms_final_weight", (dim,)),
        ("skip", (seq_len * head // 2 * 2,)),
    ]
    out, offset = {}, 0
    for name, shape in sizes:
        n = int(np.prod(shape))
        out[name] = floats[offset : offset + n].reshape(shape)
        offset += n
    if not shared:
        out["wcls"] = floats[offset : offset + vocab * dim].reshape(vocab, dim)
        offset += vocab * dim
    assert offset == len(floats), "file size does not match the header"
    return (dim, hidden, n_layers, n_heads, n_kv_heads, seq_len, shared), out


def test_llama2c_export_layout(tmp_path, model):
    path = export_llama2c(model.args, model.state_dict(), tmp_path / "model.bin")
    header, t = read_llama2c(path)
    a = model.args
    assert header == (a.dim, a.hidden_dim, a.n_layers, a.n_heads, a.kv_heads, a.max_seq_len, False)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    assert np.array_equal(t["token_embedding_table"], sd["tok_embeddings.weight"])
    assert np.array_equal(t["wcls"], sd["output.weight"])
    assert np.array_equal(t["rms_final_weight"], sd["norm.weight"])
    for i in range(a.n_layers):
        for ours, theirs in [
            ("attention_norm", "rms_att_weight"),
            ("attention.wq", "wq"),
            ("attention.wk", "wk"),
            ("attention.wv", "wv"),
            ("attention.wo", "wo"),
            ("ffn_norm", "rms_ffn_weight"),
            ("feed_forward.w1", "w1"),
            ("feed_forward.w2", "w2"),
            ("feed_forward.w3", "w3"),
        ]:
            assert np.array_equal(t[theirs][i], sd[f"layers.{i}.{ours}.weight"]), (ours, i)


def test_describe_reports_format_and_counts(tmp_path, model):
    save_model(model, tmp_path / "m", format="hf", dtype=torch.bfloat16)
    info = describe(tmp_path / "m")
    assert info["format"] == "hf"
    assert info["parameters"] == model.args.num_params()
    assert info["dtype"] == ["bfloat16"]
    assert info["tensors"]["layers.1.attention.wk.weight"] == [32, 64]
