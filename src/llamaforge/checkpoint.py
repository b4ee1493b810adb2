"""Checkpoint formats: Meta (`consolidated.NN.pth` shards), Hugging Face (`config.json` +
safetensors), llamaforge's own run checkpoints, and llama2.c's `.bin` export.

Every path in and out goes through Meta's parameter names (the names of `model.py`); the
Hugging Face names and the rotary q/k row order are converted at the edge (SPEC §1-2).
Loading never unpickles code: `.pth` files are read with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .model import ModelArgs, Transformer, precompute_rope

# Meta's model-parallel layout (SPEC §2): the dimension each tensor is split along.
_SHARD_DIM = {
    "tok_embeddings.weight": 1,
    "output.weight": 0,
    "attention.wq.weight": 0,
    "attention.wk.weight": 0,
    "attention.wv.weight": 0,
    "attention.wo.weight": 1,
    "feed_forward.w1.weight": 0,
    "feed_forward.w3.weight": 0,
    "feed_forward.w2.weight": 1,
}
# Buffers some Meta checkpoints carry that the model recomputes.
_IGNORED_KEYS = {"rope.freqs"}

_HF_LAYER_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_HF_TOP_NAMES = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}

NATIVE_WEIGHTS = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as asked; the message says what to do."""


# --------------------------------------------------------------------------- detection


def detect_format(path: str | os.PathLike) -> str:
    """'meta', 'hf', 'native' (a llamaforge checkpoint dir) or 'run' (a run dir with checkpoints/)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    if path.is_file():
        raise CheckpointError(f"{path} is a file; pass the checkpoint directory that contains it")
    if (path / "params.json").exists() and list(path.glob("consolidated.*.pth")):
        return "meta"
    if (path / "config.json").exists():
        return "hf"
    if (path / "params.json").exists() and (path / NATIVE_WEIGHTS).exists():
        return "native"
    if latest_checkpoint(path) is not None:
        return "run"
    raise CheckpointError(
        f"{path} is not a checkpoint: expected params.json + consolidated.NN.pth (Meta), "
        f"config.json + *.safetensors (Hugging Face), params.json + {NATIVE_WEIGHTS} (llamaforge), "
        "or a run directory with checkpoints/step-N/"
    )


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest `checkpoints/step-N` under a run dir (searching stage subfolders too)."""
    run_dir = Path(run_dir)
    candidates = list(run_dir.glob("checkpoints/step-*")) + list(run_dir.glob("*/checkpoints/step-*"))
    candidates = [c for c in candidates if (c / NATIVE_WEIGHTS).exists() or (c / "model").is_dir()]
    if not candidates:
        return None
    # Later stages (NN- prefix) beat earlier ones; within a stage the highest step wins.
    return max(candidates, key=lambda c: (c.parent.parent.name, _step_number(c)))


def _step_number(path: Path) -> int:
    match = re.fullmatch(r"step-(\d+)", path.name)
    return int(match.group(1)) if match else -1


# --------------------------------------------------------------------------- public API


def load_state_dict(
    path: str | os.PathLike, *, tokenizer_path: str | os.PathLike | None = None, verify_checksums: bool = True
) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """Read any supported checkpoint into (args, state dict with Meta names), without a model."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "meta":
        return load_meta(path, tokenizer_path=tokenizer_path, verify_checksums=verify_checksums)
    if fmt == "hf":
        return load_hf(path)
    if fmt == "run":
        path = latest_checkpoint(path)
        if (path / "model").is_dir():
            path = path / "model"
    return load_native(path)


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = torch.float32,
    *,
    max_seq_len: int | None = None,
    tokenizer_path: str | os.PathLike | None = None,
    verify_checksums: bool = True,
) -> Transformer:
    """Load a Meta dir (any number of shards), an HF dir, or a llamaforge run/checkpoint dir.

    The model is built on the `meta` device and filled from the checkpoint, so no memory is
    spent on a random initialisation. dtype None keeps the checkpoint's dtype.
    """
    args, state = load_state_dict(path, tokenizer_path=tokenizer_path, verify_checksums=verify_checksums)
    if max_seq_len is not None:
        args.max_seq_len = max_seq_len
    return model_from_state_dict(args, state, device=device, dtype=dtype)


def model_from_state_dict(
    args: ModelArgs, state: dict[str, torch.Tensor], *, device="cpu", dtype: torch.dtype | None = torch.float32
) -> Transformer:
    with torch.device("meta"):
        model = Transformer(args)
    check_state_dict(model, state)
    if dtype is None:
        dtype = state["tok_embeddings.weight"].dtype
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(state, assign=True)
    return model.eval()


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Raise naming each missing/unexpected tensor and each shape mismatch (expected vs found)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    for name in sorted(set(expected) & set(state)):
        if tuple(state[name].shape) != expected[name]:
            problems.append(f"{name}: expected shape {list(expected[name])}, found {list(state[name].shape)}")
    if problems:
        raise CheckpointError(
            "checkpoint does not match the model built from its params: "
            + "; ".join(problems)
            + ". Check that params.json/config.json belongs to these weights."
        )


def save_model(
    model: Transformer,
    path: str | os.PathLike,
    format: str = "meta",
    *,
    shards: int = 1,
    dtype: torch.dtype | None = None,
    tokenizer_path: str | os.PathLike | None = None,
    max_shard_bytes: int = 5 * 2**30,
) -> Path:
    """Write `model` as format 'meta', 'hf', 'native' or 'llama2c' (a file path for the last)."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return save_state_dict(
        model.args, state, path, format, shards=shards, dtype=dtype, tokenizer_path=tokenizer_path, max_shard_bytes=max_shard_bytes
    )


def save_state_dict(
    args: ModelArgs,
    state: dict[str, torch.Tensor],
    path: str | os.PathLike,
    format: str = "meta",
    *,
    shards: int = 1,
    dtype: torch.dtype | None = None,
    tokenizer_path: str | os.PathLike | None = None,
    max_shard_bytes: int = 5 * 2**30,
) -> Path:
    if any(k.endswith(".weight_int8") for k in state):
        raise CheckpointError("this model is int8-quantised (llamaforge.quantize), and checkpoints hold float "
                              "weights: save it before quantize_int8, and quantise again after loading")
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    path = Path(path)
    if format == "llama2c":
        return export_llama2c(args, state, path)
    writers = {"meta": lambda d: write_meta(args, state, d, shards=shards),
               "hf": lambda d: write_hf(args, state, d, max_shard_bytes=max_shard_bytes),
               "native": lambda d: write_native(args, state, d)}
    if format not in writers:
        raise CheckpointError(f"unknown checkpoint format {format!r}; choose meta, hf, native or llama2c")
    with atomic_dir(path) as tmp:
        writers[format](tmp)
        if tokenizer_path is not None:
            shutil.copyfile(tokenizer_path, tmp / "tokenizer.model")
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Write a directory atomically: fill a temp sibling, then rename it into place.

    A crash leaves either the old directory or the new one, never a half-written mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- Meta format


def _tensor_kind(name: str) -> str:
    """The Meta name without its `layers.N.` prefix."""
    return re.sub(r"^layers\.\d+\.", "", name)


def merge_shards(shards: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Merge model-parallel shards (SPEC §2): concatenate split tensors, take norms once."""
    if len(shards) == 1:
        return {k: v for k, v in shards[0].items() if k not in _IGNORED_KEYS}
    merged = {}
    for name in shards[0]:
        if name in _IGNORED_KEYS:
            continue
        dim = _SHARD_DIM.get(_tensor_kind(name))
        merged[name] = shards[0][name] if dim is None else torch.cat([s[name] for s in shards], dim=dim)
    return merged


def split_shards(state: dict[str, torch.Tensor], n: int) -> list[dict[str, torch.Tensor]]:
    """Inverse of merge_shards: n model-parallel shards in Meta's layout."""
    if n < 1:
        raise CheckpointError(f"shards must be >= 1, got {n}")
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]
    for name, tensor in state.items():
        dim = _SHARD_DIM.get(_tensor_kind(name))
        if dim is None:
            for shard in out:
                shard[name] = tensor.clone()
            continue
        if tensor.shape[dim] % n:
            raise CheckpointError(
                f"cannot split {name} of shape {list(tensor.shape)} into {n} shards along dim {dim}; "
                "choose a shard count that divides it"
            )
        for shard, piece in zip(out, torch.chunk(tensor, n, dim=dim)):
            shard[name] = piece.clone()
    return out


def resolve_tokenizer_path(path: Path, tokenizer_path: str | os.PathLike | None = None) -> Path | None:
    """Meta keeps tokenizer.model one level above the model folder (SPEC §2)."""
    if tokenizer_path is not None:
        return Path(tokenizer_path)
    for candidate in (path / "tokenizer.model", path.parent / "tokenizer.model"):
        if candidate.exists():
            return candidate
    return None


def read_params(path: Path, state: dict[str, torch.Tensor] | None = None, tokenizer_path=None) -> ModelArgs:
    params_file = path / "params.json"
    try:
        params = json.loads(params_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{params_file} is not valid JSON ({e}); restore it from the original download") from e
    if params.get("vocab_size", -1) == -1:
        # vocab_size -1 means "take it from the tokenizer" (SPEC §2).
        tok_file = resolve_tokenizer_path(path, tokenizer_path)
        if tok_file is not None:
            import sentencepiece

            params["vocab_size"] = sentencepiece.SentencePieceProcessor(model_file=str(tok_file)).vocab_size()
        elif state is not None:
            params["vocab_size"] = state["tok_embeddings.weight"].shape[0]
        else:
            raise CheckpointError(
                f"{params_file} has vocab_size -1 and no tokenizer.model was found in {path} or its parent; "
                "pass tokenizer_path="
            )
    try:
        return ModelArgs.from_dict(params, source=str(params_file))
    except (TypeError, ValueError) as e:
        raise CheckpointError(str(e)) from e


def load_meta(path: Path, *, tokenizer_path=None, verify_checksums: bool = True) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    files = sorted(path.glob("consolidated.*.pth"))
    numbers = [int(f.name.split(".")[1]) for f in files]
    if numbers != list(range(len(files))):
        raise CheckpointError(f"{path}: shard files {[f.name for f in files]} are not numbered 00..{len(files) - 1:02d}")
    if verify_checksums and (path / "checklist.chk").exists():
        verify_checklist(path / "checklist.chk")
    shards = [torch.load(f, map_location="cpu", weights_only=True, mmap=True) for f in files]
    state = merge_shards(shards)
    return read_params(path, state, tokenizer_path), state


def write_meta(args: ModelArgs, state: dict[str, torch.Tensor], out: Path, *, shards: int = 1) -> None:
    params = {k: v for k, v in args.to_dict().items() if v is not None}
    (out / "params.json").write_text(json.dumps(params, indent=2) + "\n")
    for i, shard in enumerate(split_shards(state, shards)):
        torch.save({k: v.contiguous() for k, v in shard.items()}, out / f"consolidated.{i:02d}.pth")
    write_checklist(out, sorted(p.name for p in out.iterdir()), out / "checklist.chk")


def md5_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_checklist(folder: Path, names: list[str], checklist: Path) -> None:
    lines = [f"{md5_file(folder / n)}  {n}\n" for n in names if n != checklist.name]
    checklist.write_text("".join(lines))


def verify_checklist(checklist: Path) -> None:
    """Check every `<md5>  <file>` line, like `md5sum -c`."""
    folder = checklist.parent
    for number, line in enumerate(checklist.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise CheckpointError(f"{checklist}:{number}: expected '<md5>  <file>', found {line!r}")
        expected, name = parts
        target = folder / name.lstrip("*")
        if not target.exists():
            raise CheckpointError(f"{checklist} lists {name}, which is missing from {folder}; re-download it")
        actual = md5_file(target)
        if actual != expected:
            raise CheckpointError(
                f"checksum mismatch for {target}: expected md5 {expected}, found {actual}; the file is corrupt or "
                "incomplete, re-download it"
            )


# --------------------------------------------------------------------------- llamaforge native


def load_native(path: Path) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    state = load_file(str(path / NATIVE_WEIGHTS))
    return read_params(path, state), state


def write_native(args: ModelArgs, state: dict[str, torch.Tensor], out: Path) -> None:
    from safetensors.torch import save_file

    (out / "params.json").write_text(json.dumps(args.to_dict(), indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / NATIVE_WEIGHTS), metadata={"format": "pt"})


# --------------------------------------------------------------------------- Hugging Face


def permute_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta's adjacent rotary pairs -> HF's rotate_half order: per head, even rows then odd rows."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def permute_from_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def meta_to_hf_name(name: str) -> str:
    if name in _HF_TOP_NAMES:
        return _HF_TOP_NAMES[name]
    match = re.fullmatch(r"layers\.(\d+)\.(.+)", name)
    if not match or match.group(2) not in _HF_LAYER_NAMES:
        raise CheckpointError(f"no Hugging Face name for tensor {name}")
    return f"model.layers.{match.group(1)}.{_HF_LAYER_NAMES[match.group(2)]}"


def _ffn_shape_for(dim: int, hidden: int) -> tuple[int, float | None]:
    """(multiple_of, ffn_dim_multiplier) that reproduce an FFN size: Meta's values when they fit."""
    for multiple_of, mult in ((256, None), (256, 1.0), (4096, 1.3), (1024, None), (64, None), (32, None)):
        probe = ModelArgs(dim=dim, n_layers=1, n_heads=1, multiple_of=multiple_of, ffn_dim_multiplier=mult)
        if probe.hidden_dim == hidden:
            return multiple_of, mult
    base = int(2 * 4 * dim / 3)
    # Rounding up to a multiple of `hidden` itself lands on `hidden` whenever 0 < h <= hidden.
    return hidden, (None if base <= hidden else hidden / base)


def hf_config_to_args(config: dict[str, Any], source: str = "config.json") -> ModelArgs:
    arch = config.get("architectures") or ["LlamaForCausalLM"]
    if config.get("model_type", "llama") != "llama" or "LlamaForCausalLM" not in arch:
        raise CheckpointError(f"{source}: expected a LlamaForCausalLM config, found {arch} / {config.get('model_type')}")
    for key, ok in (("attention_bias", False), ("mlp_bias", False), ("rope_scaling", None)):
        if config.get(key, ok) != ok:
            raise CheckpointError(f"{source}: {key}={config[key]!r} is not part of the Llama 2 architecture")
    if config.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{source}: hidden_act {config['hidden_act']!r}; Llama 2 uses silu (SwiGLU)")
    dim, n_heads = config["hidden_size"], config["num_attention_heads"]
    if config.get("head_dim") not in (None, dim // n_heads):
        raise CheckpointError(f"{source}: head_dim {config['head_dim']} != hidden_size / num_attention_heads")
    multiple_of, mult = _ffn_shape_for(dim, config["intermediate_size"])
    rope = config.get("rope_parameters") or {}
    return ModelArgs(
        dim=dim,
        n_layers=config["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=config.get("num_key_value_heads") or n_heads,
        vocab_size=config["vocab_size"],
        multiple_of=multiple_of,
        ffn_dim_multiplier=mult,
        norm_eps=config.get("rms_norm_eps", 1e-5),
        rope_theta=float(config.get("rope_theta", rope.get("rope_theta", 10000.0))),
        max_seq_len=config.get("max_position_embeddings", 4096),
    )


def args_to_hf_config(args: ModelArgs, dtype: torch.dtype) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.dim,
        "intermediate_size": args.hidden_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": args.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": args.max_seq_len,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "vocab_size": args.vocab_size,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": None,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def _read_hf_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index} is malformed ({e}); it needs a 'weight_map' object") from e
        tensors = {}
        for name in sorted(set(weight_map.values())):
            if not (path / name).exists():
                raise CheckpointError(f"{index} refers to {name}, which is missing from {path}")
            tensors.update(load_file(str(path / name)))
        return tensors
    if (path / "model.safetensors").exists():
        return load_file(str(path / "model.safetensors"))
    bins = sorted(path.glob("pytorch_model*.bin"))
    if bins:
        tensors = {}
        for b in bins:
            tensors.update(torch.load(b, map_location="cpu", weights_only=True, mmap=True))
        return tensors
    raise CheckpointError(f"{path} has config.json but no model.safetensors, index or pytorch_model*.bin")


def load_hf(path: Path) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_file} is not valid JSON ({e})") from e
    try:
        args = hf_config_to_args(config, str(config_file))
    except KeyError as e:
        raise CheckpointError(f"{config_file} lacks the key {e}; is this a Llama config?") from e
    tensors = _read_hf_tensors(path)
    if "lm_head.weight" not in tensors and config.get("tie_word_embeddings"):
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    from_hf = {}
    for name in _HF_TOP_NAMES:
        from_hf[_HF_TOP_NAMES[name]] = name
    for i in range(args.n_layers):
        for meta_name, hf_name in _HF_LAYER_NAMES.items():
            from_hf[f"model.layers.{i}.{hf_name}"] = f"layers.{i}.{meta_name}"
    state = {}
    for hf_name, tensor in tensors.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        if hf_name not in from_hf:
            raise CheckpointError(f"{path}: unexpected tensor {hf_name} for a {args.n_layers}-layer Llama")
        name = from_hf[hf_name]
        if name.endswith("attention.wq.weight"):
            tensor = permute_from_hf(tensor, args.n_heads)
        elif name.endswith("attention.wk.weight"):
            tensor = permute_from_hf(tensor, args.kv_heads)
        state[name] = tensor
    return args, state


def write_hf(args: ModelArgs, state: dict[str, torch.Tensor], out: Path, *, max_shard_bytes: int = 5 * 2**30) -> None:
    from safetensors.torch import save_file

    hf_state = {}
    for name, tensor in state.items():
        if name.endswith("attention.wq.weight"):
            tensor = permute_to_hf(tensor, args.n_heads)
        elif name.endswith("attention.wk.weight"):
            tensor = permute_to_hf(tensor, args.kv_heads)
        hf_state[meta_to_hf_name(name)] = tensor.contiguous()
    dtype = next(iter(hf_state.values())).dtype
    (out / "config.json").write_text(json.dumps(args_to_hf_config(args, dtype), indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}, indent=2) + "\n")
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(hf_state):
        nbytes = hf_state[name].numel() * hf_state[name].element_size()
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append({})
            size = 0
        groups[-1][name] = hf_state[name]
        size += nbytes
    if len(groups) == 1:
        save_file(groups[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, group in enumerate(groups, 1):
        file = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file(group, str(out / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in group})
    total = sum(t.numel() * t.element_size() for t in hf_state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# --------------------------------------------------------------------------- llama2.c


def llama2c_tensors(args: ModelArgs, state: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """The tensors of llama2.c's version-0 `.bin`, in the order its `run.c` reads them."""
    L = args.n_layers

    def stacked(kind: str) -> torch.Tensor:
        return torch.stack([state[f"layers.{i}.{kind}"] for i in range(L)])

    # run.c skips two tables of seq_len * head_dim/2 floats (the legacy freq_cis real/imag parts).
    rope = precompute_rope(args.head_dim, args.max_seq_len, args.rope_theta)
    return [
        ("token_embedding_table", state["tok_embeddings.weight"]),
        ("rms_att_weight", stacked("attention_norm.weight")),
        ("wq", stacked("attention.wq.weight")),
        ("wk", stacked("attention.wk.weight")),
        ("wv", stacked("attention.wv.weight")),
        ("wo", stacked("attention.wo.weight")),
        ("rms_ffn_weight", stacked("ffn_norm.weight")),
        ("w1", stacked("feed_forward.w1.weight")),
        ("w2", stacked("feed_forward.w2.weight")),
        ("w3", stacked("feed_forward.w3.weight")),
        ("rms_final_weight", state["norm.weight"]),
        ("freq_cis_real", rope[..., 0]),
        ("freq_cis_imag", rope[..., 1]),
        ("wcls", state["output.weight"]),
    ]


def export_llama2c(args: ModelArgs, state: dict[str, torch.Tensor], path: Path) -> Path:
    """Write llama2.c's legacy (version 0) checkpoint: a 7-int header, then fp32 weights.

    Llama 2 never ties the classifier to the embedding, so the vocab size is written
    negative: that is how run.c learns to read the separate `wcls` at the end.
    """
    header = struct.pack(
        "7i", args.dim, args.hidden_dim, args.n_layers, args.n_heads, args.kv_heads, -args.vocab_size, args.max_seq_len
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            for _, tensor in llama2c_tensors(args, state):
                f.write(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def export_llama2c_tokenizer(tokenizer, path: str | os.PathLike) -> Path:
    """llama2.c's `tokenizer.bin`: max piece length, then (score, length, bytes) per piece.

    Pieces are written as run.c expects them: '▁' as a space, BOS/EOS as their text.
    """
    sp = tokenizer.sp if hasattr(tokenizer, "sp") else tokenizer
    pieces = []
    for i in range(sp.vocab_size()):
        piece = sp.id_to_piece(i)
        if i == sp.bos_id():
            piece = "\n<s>\n"
        elif i == sp.eos_id():
            piece = "\n</s>\n"
        pieces.append((piece.replace("\u2581", " ").encode("utf-8"), sp.get_score(i)))
    path = Path(path)
    with open(path, "wb") as f:
        f.write(struct.pack("I", max(len(b) for b, _ in pieces)))
        for data, score in pieces:
            f.write(struct.pack("fI", score, len(data)))
            f.write(data)
    return path


# --------------------------------------------------------------------------- inspection


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """What `llamaforge info` prints: format, shapes, parameter count, dtype and size on disk."""
    path = Path(path)
    fmt = detect_format(path)
    args, state = load_state_dict(path, verify_checksums=False)
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in state.values()})
    size = sum(f.stat().st_size for f in (path.rglob("*") if path.is_dir() else [path]) if f.is_file())
    return {
        "path": str(path),
        "format": fmt,
        "args": args.to_dict(),
        "parameters": sum(t.numel() for t in state.values()),
        "dtype": dtypes,
        "bytes_on_disk": size,
        "tensors": {k: list(v.shape) for k, v in state.items()},
    }
