"""``llamaforge world``: generate the built-in world (or swap in your own files) and write
it to a directory with its datacard."""

from __future__ import annotations

import argparse
import sys
import time

from llamaforge.world.world import SIZES, World


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="llamaforge world")
    parser.description = (
        "Generate the built-in world: a seeded universe with the data for every stage of the "
        "Llama 2 paper (pretraining corpus, SFT dialogs, helpful/adversarial/borderline prompts, "
        "GAtt instructions, context-distillation preprompts, eval suites, preference pairs) and "
        "a datacard. Any piece can be replaced by your own file.")
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--out", required=True, help="directory to write the world to (empty, or a previous world)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives byte-identical files")
    parser.add_argument("--size", choices=list(SIZES), default="demo",
                        help="tiny: tests, ~0.3 MB; demo: ~5 MB, learnable in minutes on a CPU; large: ~80 MB")
    parser.add_argument("--noise", type=float, default=0.1,
                        help="label noise of the simulated annotator (probability of a flipped choice)")
    own = parser.add_argument_group("your own data (replaces the generated piece)")
    own.add_argument("--corpus", help="pretraining text: .txt (blank-line separated documents), .jsonl {text}, or a directory")
    own.add_argument("--sft", help="SFT dialogs: JSONL with {\"messages\": [{\"role\", \"content\"}, ...]} per line")
    own.add_argument("--prompts", help="prompt records JSONL {prompt, kind?} (or a directory of them)")
    own.add_argument("--preferences", help="preference pairs JSONL {prompt, chosen, rejected, rating?, safety_label?}")
    own.add_argument("--eval", dest="evals", help="eval items JSONL {context, choices+gold | answers} or a directory")
    own.add_argument("--gatt", help="GAtt records JSONL {instruction, checks, turns}")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from llamaforge.world.datacard import build_datacard
    from llamaforge.world.io import DataFileError, replace_pieces, write_world

    if not 0.0 <= args.noise <= 0.5:
        print(f"error: --noise must be in [0, 0.5] (0.5 is a coin flip), got {args.noise}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    world = World.generate(seed=args.seed, size=args.size, annotator_noise=args.noise)
    generated = time.perf_counter() - start
    try:
        world = replace_pieces(world, corpus=args.corpus, sft=args.sft, prompts=args.prompts,
                               preferences=args.preferences, evals=args.evals, gatt=args.gatt)
    except DataFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    card = build_datacard(world)
    try:
        out = write_world(world, args.out, datacard=card)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    total = time.perf_counter() - start
    if not args.quiet:
        c = card["corpus"]
        print(f"world seed={args.seed} size={args.size} -> {out}")
        print(f"  corpus: {c['documents']} documents, {c['megabytes']} MB, {c['words']} words; "
              f"toxic {100 * c['toxicity']['toxic_share']:.1f}%, languages {c['languages']['documents']}")
        print(f"  sft: {len(world.sft)} dialogs; prompts: " + ", ".join(f"{k} {len(v)}" for k, v in world.prompts.items())
              + f"; gatt: {len(world.gatt)}; evals: " + ", ".join(f"{k} {len(v)}" for k, v in world.evals.items()))
        print("  preferences: " + ", ".join(f"{k} {len(v)}" for k, v in world.preferences.items())
              + f"; annotator agreement with gold {card['annotator'].get('agreement_with_gold')} at noise {args.noise}")
        print(f"  generated in {generated:.1f}s, written with datacard in {total:.1f}s; see {out / 'datacard.md'}")
    return 0
