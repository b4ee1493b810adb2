"""Ghost Attention (SPEC §9): a system instruction that holds for many turns.

    llamaforge gatt base=runs/demo/06-rlhf data.dialogs=800 data.mix_sft=0.25 epochs=3   # as the demo
    llamaforge gatt base=... data.instructions=my_gatt.jsonl   # {"instruction", "short", "checks", "turns": [...]}

GAtt is a data generator for the one SFT loop. For each multi-turn dialog of an instruction
record, the instruction (its full text, or half of the time its terse form, e.g. "Figure:
pirate") is appended to every user message and the latest model answers each message. The
training dialog then keeps the instruction in the first message only (the system prompt, which
the Llama 2-Chat format places inside the first user message) and gives zero loss to every
earlier turn: a dialog of n turns yields n examples, the k-th trained only on answer k.
Instructions and dialogs are combined at random: with `data.dialogs` above the number of
records, each instruction also gets question sets drawn from the other records (a small model
needs several dialogs per instruction to bind what it says to the system prompt).

Two choices of ours, for a small model and the demo's 256-token context:
- each answer is sampled with the instruction appended to its own message (the paper also
  conditions on the dialog so far); an answer the gold checker rejects is replaced by the
  world's rewritten gold answer (`world.gatt.apply_instruction`), like rejection sampling keeps
  only good samples; the share of model answers kept is reported;
- dialogs longer than the context keep the system prompt and the first exchange and drop the
  oldest middle turns, in training and in evaluation alike.

`adherence_by_turn` measures the effect: the instruction given once, then up to 20 user turns
that carry the model's own earlier answers, each answer checked by the gold judge.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..chat_format import encode_dialog
from ..config import parse_cli
from ..generate import SamplingParams, chat_replies
from ..trainer import RunConfig, TrainConfig
from ..world import judges
from ..world.gatt import apply_instruction
from .sft import demo_train, finetune

STAGE = "gatt"
REPLY_ROOM = 48  # tokens left for the reply when a long dialog is cut to fit the context


@dataclass
class GAttData:
    instructions: str = ""  # instruction records (JSONL); empty = the built-in world's
    world_seed: int = 0  # the built-in world's seed
    world_size: Literal["tiny", "demo", "large"] = "demo"  # the built-in world's size
    terse: float = 0.5  # share of dialogs whose instruction is shortened (SPEC §9: half)
    records: int = 0  # instruction records used for training (0 = all of the train split)
    dialogs: int = 0  # training dialogs (0 = one per record); more pair each instruction with other records' questions
    mix_sft: float = 0.5  # SFT dialogs mixed in per GAtt example, so the rest of the model's skills stay
    max_new_tokens: int = 48  # reply length when sampling answers
    temperature: float = 0.0  # sampling temperature of the answers (0 = greedy)


@dataclass
class GAttConfig:
    base: str = ""  # the latest model (SPEC §9 applies GAtt after RLHF-V3)
    run: RunConfig = field(default_factory=RunConfig)
    data: GAttData = field(default_factory=GAttData)
    train: TrainConfig = field(default_factory=demo_train)
    epochs: float = 2.0  # passes over the GAtt (+ mixed SFT) examples (SPEC §6's 2 epochs)
    seed: int = 0


# --------------------------------------------------------------------------- dialogs


def instruction_text(record: dict, rng: random.Random, terse: float) -> str:
    """The record's instruction, or (with probability `terse`) its short form (SPEC §9)."""
    return record["short"] if record.get("short") and rng.random() < terse else record["instruction"]


def fit_dialog(tok, dialog: list[dict], limit: int) -> list[dict]:
    """`dialog` cut to fit `limit` tokens: the system prompt, the first exchange and the last
    (a final user message, or a final exchange) stay; the oldest exchanges between them go first.
    If that is still too long, only the system prompt and the last exchange stay."""
    if len(encode_dialog(tok, dialog)) <= limit:
        return dialog
    head = 1 if dialog[0]["role"] == "system" else 0
    system, body = dialog[:head], dialog[head:]
    exchanges = [body[i : i + 2] for i in range(0, len(body), 2)]
    if len(exchanges) == 1:
        return dialog
    first, middle, last = exchanges[0], exchanges[1:-1], exchanges[-1]

    def flat(parts):
        return system + [m for part in parts for m in part]

    while middle and len(encode_dialog(tok, flat([first, *middle, last]))) > limit:
        middle = middle[1:]
    candidate = flat([first, *middle, last])
    return candidate if len(encode_dialog(tok, candidate)) <= limit else flat([last])


def recombined(records: Sequence[dict], n: int, rng: random.Random) -> list[dict]:
    """`n` instruction dialogs: the records, then their instructions in turn, each with as many
    questions drawn at random from all records (their plain answers, rewritten for it by `_gold`)."""
    pool = [{k: v for k, v in t.items() if k != "gold"} for r in records for t in r["turns"] if t.get("answer")]
    out = list(records[:n])
    for i in range(n - len(out) if pool else 0):
        record = records[i % len(records)]
        turns = rng.sample(pool, min(len(record["turns"]), len(pool)))
        out.append({**record, "id": f"{record.get('id', 'gatt')}/mix-{i}", "turns": turns})
    return out


def gatt_examples(record: dict, answers: Sequence[str | None], instruction: str) -> list[dict]:
    """SFT examples from one instruction dialog: the instruction once, as the system prompt;
    example k holds turns 1..k and trains only on answer k (`"loss": false` elsewhere, SPEC §9)."""
    examples = []
    if None in answers:  # a user's turn without a gold answer whose model answer failed: stop there
        answers = answers[: list(answers).index(None)]
    for k in range(1, len(answers) + 1):
        messages = [{"role": "system", "content": instruction}]
        for turn, answer in zip(record["turns"][:k], answers[:k]):
            messages.append({"role": "user", "content": turn["prompt"]})
            messages.append({"role": "assistant", "content": answer})
        for message in messages[2:-1:2]:
            message["loss"] = False
        examples.append({"id": f"{record.get('id', 'gatt')}/k{k}", "kind": "gatt", "messages": messages})
    return examples


def sample_answers(model, tok, records: Sequence[dict], instructions: Sequence[str], *,
                   max_new_tokens: int = 48, temperature: float = 0.0, seed: int = 0) -> tuple[list[list[str]], float]:
    """Each turn answered with the instruction appended to its message (SPEC §9); answers the
    gold checker rejects become the world's rewritten gold answer (None for a user's turn that has
    no gold answer). Returns the answers per record and the share of turns whose model answer was
    kept."""
    prompts, where = [], []
    for i, (record, instruction) in enumerate(zip(records, instructions)):
        for t, turn in enumerate(record["turns"]):
            prompts.append([{"role": "user", "content": f"{turn['prompt']} {instruction}"}])
            where.append((i, t))
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    replies = chat_replies(model, tok, prompts, params, batch_size=64)
    answers = [[""] * len(r["turns"]) for r in records]
    kept = 0
    for (i, t), completion in zip(where, replies):
        record, text = records[i], completion.text or ""
        good = completion.finish_reason == "stop" and judges.adherence(record["checks"], text) \
            and judges.helpfulness(_turn_record(record, record["turns"][t]), text) > 0
        kept += good
        answers[i][t] = text if good else _gold(record, record["turns"][t])
    return answers, kept / max(1, len(where))


def _gold(record: dict, turn: dict) -> str | None:
    """The turn's answer following the instruction: the world's, or its gold answer rewritten;
    None when the turn has no gold answer (a user's instruction file may give prompts only)."""
    if turn.get("gold"):
        return turn["gold"]
    if turn.get("answer"):
        return apply_instruction(turn["answer"], turn.get("short_answer") or turn["answer"], record["checks"])
    return None


def _turn_record(record: dict, turn: dict) -> dict:
    """A turn as a helpful record with the instruction's checks (judges.helpfulness scores it)."""
    out = {"kind": "helpful", "task": "gatt_turn", **{k: v for k, v in turn.items() if k != "gold"},
           "checks": record["checks"]}
    gold = _gold(record, turn)
    if gold is not None:
        out["answer"] = gold
    if any(c["check"] == "language" for c in record["checks"]):
        out["answer_language"] = "veltan"
    return out


# --------------------------------------------------------------------------- evaluation


def chained_turns(record: dict, others: Sequence[dict], n: int) -> list[dict]:
    """`n` user turns for `record`'s instruction: its own, then other records' questions."""
    turns = list(record["turns"])
    for other in others:
        if len(turns) >= n:
            break
        if other is not record:
            turns += other["turns"]
    return turns[:n]


def adherence_by_turn(model, tok, records: Sequence[dict], *, max_turns: int = 20, terse: float = 0.0,
                      seed: int = 0, max_new_tokens: int = REPLY_ROOM) -> dict:
    """Gold instruction adherence (and helpfulness) at each turn 1..max_turns: the instruction is
    given once (system prompt), every later turn carries the model's own earlier answers (cut to
    the context as `fit_dialog` does). Returns {"adherence": [per turn], "helpfulness": [...], "n"}."""
    rng = random.Random(seed)
    limit = model.args.max_seq_len - max_new_tokens
    dialogs, turn_lists = [], []
    for record in records:
        turn_lists.append(chained_turns(record, records, max_turns))
        dialogs.append([{"role": "system", "content": instruction_text(record, rng, terse)}])
    adherence, helpful = [], []
    params = SamplingParams(max_new_tokens=max_new_tokens)
    for t in range(max_turns):
        active = [i for i, turns in enumerate(turn_lists) if t < len(turns)]
        if not active:
            break
        prompts = []
        for i in active:
            dialogs[i].append({"role": "user", "content": turn_lists[i][t]["prompt"]})
            prompts.append(fit_dialog(tok, dialogs[i], limit))
        replies = chat_replies(model, tok, prompts, params, batch_size=64)
        scores, helps = [], []
        for i, completion in zip(active, replies):
            text = completion.text or ""
            dialogs[i].append({"role": "assistant", "content": text or "..."})
            scores.append(float(judges.adherence(records[i]["checks"], text)))
            helps.append(judges.helpfulness(_turn_record(records[i], turn_lists[i][t]), text))
        adherence.append(sum(scores) / len(scores))
        helpful.append(sum(helps) / len(helps))
    return {"adherence": adherence, "helpfulness": helpful, "n": len(records)}


# --------------------------------------------------------------------------- the stage


def build_gatt_data(model, tok, records: Sequence[dict], data: GAttData, seed: int = 0) -> tuple[list[dict], float]:
    """GAtt training dialogs (each cut to the model's context like `fit_dialog`) and the share of
    sampled answers kept."""
    rng = random.Random(seed)
    if data.dialogs > len(records):
        records = recombined(records, data.dialogs, rng)
    instructions = [instruction_text(r, rng, data.terse) for r in records]
    answers, kept = sample_answers(model, tok, records, instructions, max_new_tokens=data.max_new_tokens,
                                   temperature=data.temperature, seed=seed)
    limit = model.args.max_seq_len + 1  # a training row holds max_seq_len inputs plus one target
    examples = [{**ex, "messages": fit_dialog(tok, ex["messages"], limit)}
                for record, ans, ins in zip(records, answers, instructions) for ex in gatt_examples(record, ans, ins)]
    return examples, kept


def run_gatt(base: str | os.PathLike, records: Sequence[dict], out_dir: str | os.PathLike, *,
             sft_dialogs: Sequence[dict] = (), eval_records: Sequence[dict] = (), cfg: GAttConfig | None = None,
             eval_turns: int = 20, compare_control: bool = False, progress: bool = True) -> dict:
    """Generate GAtt data with `base`, fine-tune it (`sft.finetune`), and measure adherence per
    turn on `eval_records` before and after; with `compare_control` also against `base` fine-tuned
    the same way on the mixed SFT dialogs alone (no GAtt data). Writes and returns the stage summary."""
    from ..checkpoint import load_model
    from ..report import write_summary
    from .rejection import policy_tokenizer

    cfg = cfg or GAttConfig()
    started = time.perf_counter()
    out_dir = Path(out_dir)
    tokenizer_path, tok = policy_tokenizer(base)
    model = load_model(base)
    examples, kept = build_gatt_data(model, tok, records, cfg.data, cfg.seed)
    rng = random.Random(cfg.seed)
    mixed = list(sft_dialogs)
    rng.shuffle(mixed)
    mixed = mixed[: int(cfg.data.mix_sft * len(examples))]

    def tune(dialogs: list[dict], name: str) -> Path:
        return finetune(base, dialogs, out_dir / name, train=cfg.train, tokenizer=tokenizer_path, epochs=cfg.epochs,
                        seq_len=min(256, model.args.max_seq_len), progress=progress)

    tuned_dir = tune(examples + mixed, "model")
    summary: dict = {"stage": STAGE, "metrics": {"gatt_examples": len(examples), "sft_mixed": len(mixed),
                                                "model_answers_kept": kept}}
    outputs = {"model": str(tuned_dir)}
    if eval_records:
        # (label, metric suffix, model): the model before GAtt, after, and the control fine-tune.
        variants = [("without GAtt", "without_gatt", model), ("with GAtt", "with_gatt", load_model(tuned_dir))]
        if compare_control and mixed:
            outputs["model_no_gatt"] = str(tune(mixed, "model-no-gatt"))
            variants.insert(1, ("fine-tuned without GAtt data", "control", load_model(outputs["model_no_gatt"])))
        # The yardstick is turns 10-20; shorter evaluations use their second half.
        first_late = 10 if eval_turns >= 20 else eval_turns // 2 + 1
        late = slice(first_late - 1, eval_turns)
        late_label = f"turns {first_late}-{eval_turns}"
        rows, series = [], {}
        for label, key, candidate in variants:
            result = adherence_by_turn(candidate, tok, eval_records, max_turns=eval_turns, seed=cfg.seed)
            everything, tail, helpful = (_mean(result["adherence"]), _mean(result["adherence"][late]),
                                         _mean(result["helpfulness"]))
            summary["metrics"].update({f"adherence/{key}": everything, f"adherence_late/{key}": tail,
                                       f"helpfulness/{key}": helpful})
            rows.append([label, round(everything, 3), round(tail, 3), round(helpful, 3)])
            series[label] = {"x": list(range(1, len(result["adherence"]) + 1)), "y": result["adherence"]}
        summary["plots"] = [{"title": "GAtt: instruction adherence vs turn (gold checker)", "kind": "line",
                             "section": "gatt-adherence", "xlabel": "turn", "ylabel": "adherence", "series": series}]
        summary["tables"] = [{"title": f"GAtt on {len(eval_records)} held-out instructions, {eval_turns} turns",
                              "section": "gatt-adherence",
                              "columns": ["model", "adherence (all turns)", f"adherence ({late_label})", "helpfulness"],
                              "rows": rows}]
        m = summary["metrics"]
        summary["effect"] = (f"instruction adherence over {late_label} {m['adherence_late/without_gatt']:.2f} (without "
                             f"GAtt) -> {m['adherence_late/with_gatt']:.2f} (with GAtt), all turns "
                             f"{m['adherence/without_gatt']:.2f} -> {m['adherence/with_gatt']:.2f}")
        if "adherence_late/control" in m:
            summary["effect"] += (f"; fine-tuned on the same SFT dialogs without GAtt data: "
                                  f"{m['adherence_late/control']:.2f} over {late_label}")
        summary["effect"] += f"; {len(examples)} GAtt examples, {kept:.0%} of sampled answers kept"
    else:
        summary["effect"] = f"{len(examples)} GAtt examples ({kept:.0%} of sampled answers kept)"
    summary["seconds"] = time.perf_counter() - started
    summary["outputs"] = outputs
    write_summary(out_dir, summary)
    return summary


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def run_demo_gatt(base: str | os.PathLike, world, out_dir: str | os.PathLike, *, quick: bool = False) -> dict:
    """The demo's GAtt stage: the world's train-split instructions, SFT dialogs mixed in, adherence
    over 20 turns on held-out instructions, with and without GAtt."""
    train = [r for r in world.gatt if r.get("split") == "train"]
    held_out = [r for r in world.gatt if r.get("split") == "eval"][: 8 if quick else 48]
    # 800 dialogs from the 150 train instructions, each with about 5 question sets (SPEC §9 combines
    # instructions and dialogs at random), 3 epochs. Measured over turns 10-20 on 48 held-out
    # instructions, from the demo's RLHF model: 150 dialogs, 2 epochs 0.33 (on 24; even at turn 1
    # the model mixed up hobbies and personas); 800 dialogs, 2 epochs 0.91 and 0.86 (data seeds 0
    # and 1); 3 epochs 0.94 and 0.93. The misses left are mostly two-part instructions. The system
    # prompt stays in every cut dialog, so the context is not what limits adherence.
    cfg = GAttConfig(data=GAttData(dialogs=48 if quick else 800, mix_sft=0.25), epochs=3.0)
    return run_gatt(base, train[: 24 if quick else None], out_dir, sft_dialogs=world.sft, eval_records=held_out,
                    cfg=cfg, eval_turns=6 if quick else 20, compare_control=True)


def main(argv: list[str] | None = None) -> int:
    """`llamaforge gatt base=CHECKPOINT [data.instructions=FILE.jsonl] [key=value ...]`."""
    cfg = parse_cli(GAttConfig, argv, prog="llamaforge gatt", description=__doc__.split("\n\n")[0])
    if not cfg.base:
        print("llamaforge gatt: error: base= is required: the model that answers and is fine-tuned", file=sys.stderr)
        return 2
    from ..trainer import stage_dir
    from ..world import DataFileError, World, read_gatt

    try:
        if cfg.data.instructions:
            records = read_gatt(cfg.data.instructions)
            train, held_out, sft = records, [], []
        else:
            world = World.generate(seed=cfg.data.world_seed, size=cfg.data.world_size)
            train = [r for r in world.gatt if r.get("split") == "train"]
            held_out = [r for r in world.gatt if r.get("split") == "eval"][:32]
            sft = world.sft
        if cfg.data.records:
            train = train[: cfg.data.records]
        out = Path(cfg.run.dir) if cfg.run.dir else stage_dir(cfg.run, STAGE)
        summary = run_gatt(cfg.base, train, out, sft_dialogs=sft, eval_records=held_out, cfg=cfg,
                           progress=cfg.run.progress)
    except (FileNotFoundError, ValueError, DataFileError) as e:
        print(f"llamaforge gatt: error: {e}", file=sys.stderr)
        return 1
    print(f"gatt: {summary['effect']}\ngatt: model in {summary['outputs']['model']}")
    return 0

