"""`llamaforge <command>`: one command per stage or tool; `llamaforge <command> --help` for each."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

# name -> (module with `main(argv) -> int`, one-line summary). Modules load only when used.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("llamaforge.cli:info_main", "describe a checkpoint: format, shapes, parameters, dtype, size"),
    "convert": ("llamaforge.cli:convert_main", "convert a checkpoint to Meta, Hugging Face or llama2.c format"),
    "generate": ("llamaforge.cli:generate_main", "complete a prompt (or a chat message) with a model"),
    "chat": ("llamaforge.cli:chat_main", "chat with a model in the terminal (streaming, multi-turn)"),
    "download": ("llamaforge.download:main", "download Meta's Llama 2 weights with a signed URL (like download.sh)"),
    "tokenizer": ("llamaforge.tokenizer:main", "train a Llama-style SentencePiece BPE tokenizer"),
    "world": ("llamaforge.world.cli:main", "generate the built-in world: corpus, dialogs, prompts, judges' data"),
    "pretrain": ("llamaforge.stages.pretrain:main", "pretrain (or continue pretraining) a model"),
    "sft": ("llamaforge.stages.sft:main", "supervised fine-tuning on dialogs (loss on assistant tokens only)"),
    "reward": ("llamaforge.stages.reward:main", "train a helpfulness or safety reward model (margin ranking loss)"),
    "rejection": ("llamaforge.stages.rejection:main", "rejection sampling: best of K by the reward model, then SFT"),
    "ppo": ("llamaforge.stages.ppo:main", "PPO against the reward models with a KL penalty"),
    "rlhf": ("llamaforge.stages.rlhf:main", "the iterative RLHF loop: reward models, rejection sampling, PPO"),
    "gatt": ("llamaforge.stages.gatt:main", "Ghost Attention: multi-turn instruction data, then SFT"),
    "distill": ("llamaforge.stages.distill:main", "safety context distillation, gated by the safety reward model"),
    "eval": ("llamaforge.eval.cli:main", "evaluate a model: multiple choice, generation, perplexity"),
    "report": ("llamaforge.report:main", "one HTML page (and a Markdown twin) with a run's plots and tables"),
    "carbon": ("llamaforge.carbon:main", "energy and CO2 accounting (the paper's Table 2, your runs)"),
    "demo": ("llamaforge.demo:main", "run the pipeline end to end on the built-in world"),
    "serve": ("llamaforge.serve:main", "OpenAI-compatible HTTP server with a web chat page"),
    "bench": ("llamaforge.bench:main", "speed benchmarks against transformers, measured in the same run"),
}


def _load(target: str):
    module_name, _, func = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("llamaforge"):
            raise SystemExit(f"llamaforge: this command is not available in this version ({e.name} is missing)") from e
        if "pip install" in str(e):  # an optional extra; the module says how to install it
            raise SystemExit(f"llamaforge: {e}") from e
        raise
    return getattr(module, func)


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return (
        "usage: llamaforge <command> [options]\n\n"
        "The Llama 2 system: model, checkpoints, tokenizer, chat format and training stages.\n\n"
        "commands:\n" + "\n".join(lines) + "\n\nRun `llamaforge <command> --help` for a command's options."
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"llamaforge {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"llamaforge: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    result = _load(COMMANDS[command][0])(rest)
    return int(result or 0)


# --------------------------------------------------------------------------- shared helpers


def _dtype(name: str):
    import torch

    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if name not in table:
        raise SystemExit(f"unknown dtype {name!r}; choose fp32, bf16 or fp16")
    return table[name]


def _default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def find_tokenizer(model_path: str | Path, explicit: str | None = None) -> Path:
    """The tokenizer next to a checkpoint: in it, or up to three folders above (Meta, runs)."""
    if explicit:
        if not Path(explicit).exists():
            raise SystemExit(f"tokenizer {explicit} does not exist")
        return Path(explicit)
    from .checkpoint import latest_checkpoint

    here = Path(model_path).resolve()
    newest = latest_checkpoint(here) if here.is_dir() else None  # a run folder: its checkpoints carry it
    for folder in [here, *([newest] if newest else []), *list(here.parents)[:3]]:
        if (folder / "tokenizer.model").exists():
            return folder / "tokenizer.model"
    raise SystemExit(f"no tokenizer.model found in {model_path} or the folders above it; pass --tokenizer FILE")


def _load_for_inference(args):
    from .checkpoint import CheckpointError, load_model
    from .cpu_kernels import use_decode_layout
    from .tokenizer import Tokenizer

    device = args.device or _default_device()
    dtype = _dtype(args.dtype)
    _warn_if_emulated(dtype, device)
    try:
        model = load_model(args.model, device=device, dtype=dtype)
    except CheckpointError as e:
        raise SystemExit(f"llamaforge: {e}") from e
    if getattr(args, "int8", False):
        from .quantize import quantize_int8

        quantize_int8(model)
    # An inference-only process keeps the CPU decode layout from here on (cpu_kernels), as the server
    # does: each chat reply would otherwise copy the weights into it and back (110M bench config:
    # ~0.3 s a reply). A one-shot `generate` pays the copy in once and never the copy back.
    use_decode_layout(model)
    return model, Tokenizer(find_tokenizer(args.model, args.tokenizer))


def _warn_if_emulated(dtype, device: str) -> None:
    """bf16 (fp16) weights on a CPU without bf16 (fp16) matrix units run through emulated
    kernels: on an AVX2-only EPYC a 200-token prefill took 4-6x as long as in fp32, where
    --int8 decoded 1.27-1.40x faster than fp32 (benchmarks/RESULTS.md)."""
    import torch

    from .cpu_kernels import cpu_has_bf16_matmul, cpu_has_fp16_matmul

    if torch.device(device).type != "cpu" or dtype not in (torch.bfloat16, torch.float16):
        return
    name, units, fast = (("bf16", "AVX512-BF16 or AMX", cpu_has_bf16_matmul()) if dtype == torch.bfloat16
                         else ("fp16", "AMX-FP16", cpu_has_fp16_matmul()))
    if not fast:
        print(f"llamaforge: this CPU has no {name} matrix units ({units}), so {name} matmuls are emulated "
              f"and several times slower than fp32; --dtype fp32 is faster here (--int8 too, for decoding)",
              file=sys.stderr)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint: Meta dir, Hugging Face dir, or llamaforge run/checkpoint dir")
    p.add_argument("--tokenizer", help="tokenizer.model (default: found next to the checkpoint)")
    p.add_argument("--device", help="cpu, cuda or mps (default: the best available)")
    p.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16")
    p.add_argument("--int8", action="store_true",
                   help="int8 weight-only projections: faster decoding on CPU (llamaforge.quantize; bf16 activations)")


def _add_sampling_options(p: argparse.ArgumentParser, *, chat: bool) -> None:
    # SPEC §4: the reference chat samples at temperature 0.6, top-p 0.9.
    p.add_argument("--temperature", type=float, default=0.6 if chat else 0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.9 if chat else 1.0, help="nucleus sampling mass")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default: max_seq_len - 1 for chat (SPEC §4), 256 otherwise")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling")


def _sampling(args, model, prompt_len: int):
    from .generate import SamplingParams

    room = model.args.max_seq_len - prompt_len
    wanted = args.max_new_tokens or (model.args.max_seq_len - 1 if getattr(args, "chat_defaults", False) else 256)
    return SamplingParams(
        max_new_tokens=max(1, min(wanted, room)),
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        stop_strings=args.stop,
        seed=args.seed,
    )


# --------------------------------------------------------------------------- info / convert


def info_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="llamaforge info", description="Describe a checkpoint without building the model.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("path", help="Meta dir, Hugging Face dir, or llamaforge run/checkpoint dir")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--tensors", action="store_true", help="list every tensor with its shape")
    args = p.parse_args(argv)
    from .checkpoint import CheckpointError, describe

    try:
        info = describe(args.path)
    except CheckpointError as e:
        print(f"llamaforge info: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    a = info["args"]
    print(f"path        {info['path']}")
    print(f"format      {info['format']}")
    print(f"parameters  {info['parameters']:,}")
    print(f"dtype       {', '.join(info['dtype'])}")
    print(f"on disk     {info['bytes_on_disk'] / 2**20:,.1f} MiB")
    print(f"shape       dim {a['dim']}, {a['n_layers']} layers, {a['n_heads']} heads, "
          f"{a['n_kv_heads'] or a['n_heads']} kv heads, vocab {a['vocab_size']}, context {a['max_seq_len']}")
    if args.tensors:
        for name, shape in info["tensors"].items():
            print(f"  {name:<40} {shape}")
    return 0


def convert_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="llamaforge convert",
        description="Convert a checkpoint between formats. Meta: params.json + consolidated.NN.pth (+ checklist.chk); "
        "hf: config.json + safetensors (transformers loads it); llama2c: a version-0 .bin for llama2.c's run.c "
        "(DST is a file; tokenizer.bin is written beside it when a tokenizer is found).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--to", required=True, choices=["meta", "hf", "llama2c"])
    p.add_argument("--shards", type=int, default=1, help="model-parallel shards for --to meta (13B: 2, 70B: 8)")
    p.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 (default: keep; Meta ships bf16)")
    p.add_argument("--tokenizer", help="tokenizer.model to copy along (default: found next to SRC)")
    args = p.parse_args(argv)
    from .checkpoint import CheckpointError, export_llama2c_tokenizer, load_state_dict, save_state_dict

    try:
        model_args, state = load_state_dict(args.src, tokenizer_path=args.tokenizer)
        tok = None
        try:
            tok = find_tokenizer(args.src, args.tokenizer)
        except SystemExit:
            pass
        dtype = _dtype(args.dtype) if args.dtype else None
        out = save_state_dict(model_args, state, args.dst, args.to, shards=args.shards, dtype=dtype,
                              tokenizer_path=tok if args.to != "llama2c" else None)
        if args.to == "llama2c" and tok is not None:
            from .tokenizer import Tokenizer

            export_llama2c_tokenizer(Tokenizer(tok), Path(args.dst).with_name("tokenizer.bin"))
    except CheckpointError as e:
        print(f"llamaforge convert: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.to} checkpoint to {out}")
    return 0


# --------------------------------------------------------------------------- generate / chat


def generate_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="llamaforge generate", description="Complete prompts with a model.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_model_options(p)
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable: one batch)")
    p.add_argument("--chat", action="store_true", help="wrap each prompt as a user message in the Llama 2-Chat format")
    p.add_argument("--system", help="system prompt (with --chat)")
    p.add_argument("--no-stream", action="store_true", help="print the whole completion at the end")
    p.add_argument("--compile", action="store_true",
                   help="decode steps through torch.compile (one graph a step; the first call compiles for tens "
                        "of seconds). For GPUs, where eager decoding is bound by launching ops; on a CPU the eager "
                        "paths are as fast or faster (benchmarks/RESULTS.md)")
    _add_sampling_options(p, chat=False)
    args = p.parse_args(argv)
    from .chat_format import ChatFormatError, encode_dialog
    from .generate import generate, stream_text

    model, tok = _load_for_inference(args)
    try:
        if args.chat:
            dialogs = [([{"role": "system", "content": args.system}] if args.system else []) + [{"role": "user", "content": t}]
                       for t in args.prompt]
            prompts = [encode_dialog(tok, d) for d in dialogs]
        else:
            prompts = [tok.encode(t, bos=True, eos=False) for t in args.prompt]
    except ChatFormatError as e:
        print(f"llamaforge generate: {e}", file=sys.stderr)
        return 1
    params = _sampling(args, model, max(map(len, prompts)))
    if len(prompts) == 1 and not args.no_stream:
        if not args.chat:
            print(args.prompt[0], end="", flush=True)
        for piece in stream_text(model, tok, prompts[0], params, compile=args.compile, continuation=not args.chat):
            print(piece, end="", flush=True)
        print()
        return 0
    # Without --chat a completion continues its prompt: its text keeps the leading space.
    completions = generate(model, prompts, params, tokenizer=tok, compile=args.compile, continuation=not args.chat)
    for text, completion in zip(args.prompt, completions):
        print(json.dumps({"prompt": text, "completion": completion.text, "finish_reason": completion.finish_reason}))
    return 0


def chat_main(argv: list[str], stdin=None, stdout=None) -> int:
    p = argparse.ArgumentParser(
        prog="llamaforge chat",
        description="Chat in the terminal. Commands: /system TEXT (set the system prompt and reset), /reset, "
        "/save FILE (the dialog as JSON), /quit.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_model_options(p)
    p.add_argument("--system", help="system prompt")
    _add_sampling_options(p, chat=True)
    args = p.parse_args(argv)
    args.chat_defaults = True
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    from .chat_format import ChatFormatError, encode_dialog
    from .generate import stream_text

    model, tok = _load_for_inference(args)
    system = args.system
    dialog: list[dict[str, str]] = []

    def say(text: str = "", end: str = "\n") -> None:
        stdout.write(text + end)
        stdout.flush()

    say("llamaforge chat: /system TEXT, /reset, /save FILE, /quit")
    while True:
        say("> ", end="")
        line = stdin.readline()
        if not line:
            say()
            return 0
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.startswith("/"):
            command, _, value = line.partition(" ")
            if command == "/quit":
                return 0
            if command == "/reset":
                dialog = []
                say("(dialog reset)")
            elif command == "/system":
                system, dialog = value or None, []
                say(f"(system prompt {'set' if system else 'cleared'}; dialog reset)")
            elif command == "/save":
                target = Path(value or "dialog.json")
                full = ([{"role": "system", "content": system}] if system else []) + dialog
                target.write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n")
                say(f"(saved {len(dialog)} messages to {target})")
            else:
                say(f"(unknown command {command}; use /system, /reset, /save, /quit)")
            continue
        turn = dialog + [{"role": "user", "content": line}]
        full = ([{"role": "system", "content": system}] if system else []) + turn
        try:
            prompt = encode_dialog(tok, full)
        except ChatFormatError as e:
            say(f"(not sent: {e})")
            continue
        if len(prompt) >= model.args.max_seq_len:
            say(f"(the dialog is {len(prompt)} tokens, over the context of {model.args.max_seq_len}; use /reset)")
            continue
        pieces = []
        for piece in stream_text(model, tok, prompt, _sampling(args, model, len(prompt))):
            pieces.append(piece)
            say(piece, end="")
        say()
        dialog = turn + [{"role": "assistant", "content": "".join(pieces).strip()}]


if __name__ == "__main__":
    sys.exit(main())
