"""Sampling from a `Transformer`: greedy, temperature, top-k, top-p, stop tokens and strings.

Prompts of different lengths are left-padded into one batch; each row keeps its own rotary
positions and never attends to its padding, so a batch produces the same tokens as the
prompts one at a time. The prompt is run once (prefill) into a preallocated KV cache, then
one token per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .cpu_kernels import decode_layout
from .model import Transformer

# Decode steps that repay the decode layout's two weight copies (see generate_steps).
DECODE_LAYOUT_MIN_STEPS = 8


@dataclass
class SamplingParams:
    """temperature 0 means greedy. The reference chat uses 0.6 / top-p 0.9 (SPEC §4)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop_tokens: Sequence[int] = ()
    stop_strings: Sequence[str] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")


def chat_sampling(max_seq_len: int, **overrides) -> SamplingParams:
    """Defaults of Meta's reference chat (SPEC §4): T 0.6, top-p 0.9, max_seq_len - 1 new tokens."""
    return SamplingParams(**{"temperature": 0.6, "top_p": 0.9, "max_new_tokens": max_seq_len - 1, **overrides})


@dataclass
class Completion:
    tokens: list[int]  # generated ids, the stop token excluded
    finish_reason: str  # "stop" (EOS, stop token or stop string) or "length"
    text: str | None = None  # decoded, cut before a stop string (when a tokenizer is given)
    logprobs: list[float] = field(default_factory=list)  # log-prob of each generated token


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token for each row of logits [B, V]."""
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / params.temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        # Nucleus: keep the smallest set of most likely tokens whose mass reaches top_p.
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > params.top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return order.gather(-1, choice).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def last_logits(
    model: Transformer,
    tokens: torch.Tensor,
    start_pos: int,
    positions: torch.Tensor | None = None,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """fp32 logits [B, vocab] of the last position only: a prefill never forms [B, T, vocab]."""
    h = model.hidden_states(tokens, start_pos, positions=positions, key_mask=key_mask)[:, -1]
    return model.output(h).float()


_compiled_last_logits = None


def compiled_last_logits():
    """`last_logits` under torch.compile, shapes dynamic from the start: one compilation
    serves every step and cache length (per model and batch layout)."""
    global _compiled_last_logits
    if _compiled_last_logits is None:
        _compiled_last_logits = torch.compile(last_logits, dynamic=True)
    return _compiled_last_logits


@torch.inference_mode()
def generate_steps(
    model: Transformer, prompts: Sequence[Sequence[int]], params: SamplingParams, *, compile: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (next tokens [B], their log-probs [B]) once per step; the caller decides when to stop.

    Stops by itself after max_new_tokens or when the context (max_seq_len) is full.
    compile: run the steps through torch.compile; the first call compiles (tens of seconds
    on a CPU, again for the first padded batch), later ones run faster.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    device = model.output.weight.device
    lengths = [len(p) for p in prompts]
    longest = max(lengths)
    total = min(model.args.max_seq_len, longest + params.max_new_tokens)
    if longest >= model.args.max_seq_len:
        raise ValueError(f"prompt of {longest} tokens leaves no room in max_seq_len {model.args.max_seq_len}")
    B = len(prompts)
    pad = torch.tensor([longest - n for n in lengths], device=device)
    tokens = torch.zeros(B, longest, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
    slots = torch.arange(total, device=device)
    padded = bool(pad.any())
    key_mask = slots.unsqueeze(0) >= pad.unsqueeze(1) if padded else None
    positions = (slots.unsqueeze(0) - pad.unsqueeze(1)).clamp(min=0) if padded else None
    generator = None
    if params.seed is not None:
        generator = torch.Generator(device=device).manual_seed(params.seed)

    # Compiled decoding keeps one cache shape (the full context), so no call recompiles.
    model.setup_cache(B, model.args.max_seq_len if compile else total)
    model.rope_table(device)  # built (or rebuilt) here, outside any compiled step
    step = compiled_last_logits() if compile else last_logits
    # On CPU the weights take the decode layout for this generation's decode steps (see
    # cpu_kernels). The prefill does not need it (its matmuls have many rows), and switching costs
    # two copies of the weights, so it is taken after the prefill and only when enough decode steps
    # remain to repay them (GQA bench config: time to first token 129 -> 26 ms). The prefill runs
    # eagerly under compile too: one call, whose matmuls the eager paths serve better (stories15M:
    # time to first token 36 -> 11 ms), and the compiled graph only ever sees decode steps, always
    # in the decode layout.
    steps = total - longest
    layout = contextlib.ExitStack()
    with layout:
        try:
            cur, step_tokens = 0, tokens
            for i in range(steps):
                if i == 1 and (compile or steps - 1 >= DECODE_LAYOUT_MIN_STEPS):
                    layout.enter_context(decode_layout(model))
                end = cur + step_tokens.shape[1]
                keys = None if key_mask is None else key_mask[:, :end]
                if compile and keys is not None:
                    torch._dynamo.mark_dynamic(keys, 1)  # it grows each step: not specialised on the first
                logits = (step if i else last_logits)(
                    model,
                    step_tokens,
                    cur,
                    None if positions is None else positions[:, cur:end],
                    keys,
                )
                next_tokens = sample_next(logits, params, generator)
                logprobs = torch.log_softmax(logits, dim=-1).gather(-1, next_tokens[:, None]).squeeze(-1)
                yield next_tokens, logprobs
                cur, step_tokens = end, next_tokens[:, None]
        finally:
            model.clear_cache()


def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | None = None,
    *,
    tokenizer=None,
    eos_id: int | None = None,
    compile: bool = False,
    continuation: bool = False,
) -> list[Completion]:
    """Generate for a batch of token prompts. EOS (the tokenizer's unless `eos_id` is given) and
    `params.stop_tokens` end a row; `params.stop_strings` need a tokenizer to be recognised.
    compile: decode through torch.compile (see `generate_steps`). continuation: each text as it
    reads after its prompt's text, with the leading space that decoding the new tokens alone drops
    (`decode_after`); stop strings are looked for in that text."""
    params = params or SamplingParams()
    if params.stop_strings and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer to decode the generated text")
    stops = set(params.stop_tokens)
    if eos_id is None and tokenizer is not None:
        eos_id = tokenizer.eos_id
    if eos_id is not None and eos_id >= 0:
        stops.add(eos_id)
    out = [Completion(tokens=[], finish_reason="length") for _ in prompts]
    anchors = [list(p)[-1:] if continuation else [] for p in prompts]
    active = [True] * len(prompts)
    # Stop strings are found in each row's text as it grows, decoded incrementally (rows
    # without them are decoded once, at the end).
    streams = [TextStream(tokenizer, params.stop_strings, prefix=a) for a in anchors] if params.stop_strings else []
    for next_tokens, logprobs in generate_steps(model, prompts, params, compile=compile):
        for row, (token, logprob) in enumerate(zip(next_tokens.tolist(), logprobs.tolist())):
            if not active[row]:
                continue
            completion = out[row]
            if token in stops:
                completion.finish_reason, active[row] = "stop", False
                continue
            completion.tokens.append(token)
            completion.logprobs.append(logprob)
            if streams and streams[row].push(token)[1]:
                completion.text, completion.finish_reason, active[row] = streams[row].released, "stop", False
        if not any(active):
            break
    if tokenizer is not None:
        for completion, anchor in zip(out, anchors):
            if completion.text is None:
                completion.text = decode_after(tokenizer, anchor, completion.tokens)
    return out


def decode_after(tokenizer, anchor: Sequence[int], ids: Sequence[int]) -> str:
    """The text `ids` add after `anchor`: SentencePiece drops the leading space of a decode's first
    piece ("the cat" + " sat" would read "the catsat"), so a continuation is decoded behind the
    token before it."""
    anchor, ids = list(anchor), list(ids)
    if not anchor:
        return tokenizer.decode(ids)
    head, full = tokenizer.decode(anchor), tokenizer.decode(anchor + ids)
    return full[len(head):] if full.startswith(head) else tokenizer.decode(ids)


def stream_text(
    model: Transformer, tokenizer, prompt: Sequence[int], params: SamplingParams | None = None, *,
    compile: bool = False, continuation: bool = False,
) -> Iterator[str]:
    """Stream the reply to one prompt as text pieces, stopping at EOS, stop tokens or strings.
    compile: decode through torch.compile (see `generate_steps`). continuation: the text as it
    reads after the prompt's text (see `generate`), for printing the two together.

    Text is released only once it is final (`TextStream`): a piece whose bytes are incomplete (a
    multi-byte character split across byte tokens) or that could still be the start of a
    stop string is held back until the next tokens decide it.
    """
    params = params or SamplingParams()
    stops = set(params.stop_tokens) | {tokenizer.eos_id}
    text = TextStream(tokenizer, params.stop_strings, prefix=list(prompt)[-1:] if continuation else ())
    for next_tokens, _ in generate_steps(model, [prompt], params, compile=compile):
        token = int(next_tokens[0])
        if token in stops:
            break
        piece, stopped = text.push(token)
        if piece:
            yield piece
        if stopped:
            return
    rest = text.flush()
    if rest:
        yield rest


class TextStream:
    """Incremental text of generated tokens, releasing only text that can no longer change.

    Held back: a trailing incomplete UTF-8 character (decoded as U+FFFD), the start of a
    possible stop string, and with `strip` (chat replies) surrounding whitespace, which
    `chat_format.parse_reply` strips. `prefix` (the prompt's last token) lets a completion keep
    the space SentencePiece drops at the start of a decoded sequence: "the cat" -> " sat".
    Decoding is incremental: settled tokens are not decoded again, so a step costs the same
    at token 4000 as at token 40.
    """

    SETTLE_AFTER, KEEP = 64, 8  # tail length that triggers settling, and tokens left in the tail

    def __init__(self, tokenizer, stop_strings: Sequence[str] = (), *, prefix: Sequence[int] = (), strip: bool = False):
        self.tokenizer, self.stop_strings, self.strip = tokenizer, [s for s in stop_strings if s], strip
        self.prefix = list(prefix)
        self.tokens: list[int] = []
        self.settled, self.settled_text = 0, ""  # tokens[:settled] decode to settled_text, for good
        self.released = ""  # the text handed out so far (final: later text only extends it)

    def text(self) -> str:
        anchor = self.tokens[self.settled - 1 : self.settled] if self.settled else self.prefix
        tail = decode_after(self.tokenizer, anchor, self.tokens[self.settled :])
        text = self.settled_text + tail
        if len(self.tokens) - self.settled >= self.SETTLE_AFTER:
            # Settle all but the last few tokens, if decoding them apart changes nothing.
            cut = len(self.tokens) - self.KEEP
            head = decode_after(self.tokenizer, anchor, self.tokens[self.settled : cut])
            if head + decode_after(self.tokenizer, self.tokens[cut - 1 : cut], self.tokens[cut:]) == tail:
                self.settled, self.settled_text = cut, self.settled_text + head
        return text.lstrip() if self.strip else text

    def push(self, token: int) -> tuple[str, bool]:
        """Add a token; return (newly final text, whether a stop string was reached)."""
        self.tokens.append(token)
        text = self.text()
        cut = min((text.find(s) for s in self.stop_strings if s in text), default=-1)
        if cut >= 0:
            return self._release(text[:cut].rstrip() if self.strip else text[:cut]), True
        return self._release(text[: len(text) - self._unsettled(text)]), False

    def flush(self) -> str:
        """The rest of the text, at the end of the sequence."""
        text = self.text()
        return self._release(text.rstrip() if self.strip else text)

    def _release(self, final: str) -> str:
        delta = final[len(self.released) :]
        if delta:
            self.released = final
        return delta

    def _unsettled(self, text: str) -> int:
        hold = len(text) - len(text.rstrip("\ufffd"))
        if self.strip:
            hold = max(hold, len(text) - len(text.rstrip()))
        for stop in self.stop_strings:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        return hold


def chat_replies(
    model: Transformer,
    tokenizer,
    dialogs: Sequence[Sequence[dict]],
    params: SamplingParams | None = None,
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> list[Completion]:
    """The assistant's next reply to each dialog (each ends with a user message), through
    `chat_format`, in batches. `Completion.text` is the parsed reply; `finish_reason` "stop"
    means the model ended its answer with EOS. A prompt that does not fit the context raises
    (a cut dialog is no longer the dialog asked about); replies are capped by the room left.

    Every stage that samples from a chat model uses this: SFT and GAtt evaluation, rejection
    sampling, PPO rollouts, context distillation and the safety evaluations.
    """
    from .chat_format import encode_dialog, parse_reply

    params = params or SamplingParams(max_new_tokens=64)
    prompts = [encode_dialog(tokenizer, dialog) for dialog in dialogs]
    limit = model.args.max_seq_len
    for i, prompt in enumerate(prompts):
        if len(prompt) >= limit:
            raise ValueError(f"dialog {i} encodes to {len(prompt)} tokens, the model's context is {limit}; shorten it")
    # Longest prompts first: rows of one batch then need little padding. Results keep input order.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[Completion | None] = [None] * len(prompts)
    starts = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="sampling", unit="batch", leave=False)
    with decode_layout(model):  # once for all batches, not per generate() call
        for start in starts:
            rows = order[start : start + batch_size]
            room = limit - max(len(prompts[i]) for i in rows)
            batch_params = params if params.max_new_tokens <= room else _with_max_new(params, room)
            for i, completion in zip(rows, generate(model, [prompts[i] for i in rows], batch_params, tokenizer=tokenizer)):
                completion.text = _cut_at_chat_tag(parse_reply(tokenizer, completion.tokens) if completion.tokens else "")
                out[i] = completion
    return out  # type: ignore[return-value]


def _cut_at_chat_tag(text: str) -> str:
    """A reply ends where the model starts writing chat markup ("[INST]", "<<SYS>>", ...): it has
    begun a turn that is not its own. Cut there, so replies can go back into dialogs."""
    from .chat_format import SPECIAL_TAGS

    cut = min((i for i in (text.find(tag) for tag in SPECIAL_TAGS) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut].strip()


def _with_max_new(params: SamplingParams, n: int) -> SamplingParams:
    from dataclasses import replace

    return replace(params, max_new_tokens=max(1, n))
