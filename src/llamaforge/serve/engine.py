"""Continuous batching: one thread owns the model; requests join and leave between decode steps.

The batch runs on a *slot clock*. Every active row writes its newest token's key/value at the
same cache slot, `clock`, so one `model(tokens[B, 1], clock, ...)` call advances all rows and
the model's own `KVCache.update(start_pos=clock)` serves them. Each row's history is
right-aligned to the clock: row r holds its sequence at slots `start_r .. clock-1`, its rotary
position at slot s is `s - start_r`, and its key mask hides the slots before `start_r` (left
over from earlier occupants). A joining request is prefilled on its own, in a scratch cache,
and its keys/values are copied into its row so that they end at the clock.

When the clock reaches the end of the cache, every row is shifted left until the longest one
starts at slot 0 (compaction). RoPE is applied to keys by *position* before they are cached,
and attention does not care where a key sits, so moving slots changes no result.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..cpu_kernels import use_decode_layout
from ..generate import SamplingParams, TextStream, last_logits, sample_next
from ..model import KVCache, Transformer

log = logging.getLogger("llamaforge.serve")

# finish_reason values beyond OpenAI's "stop" and "length"; the server maps them to HTTP.
TIMEOUT, CANCELLED, ERROR = "timeout", "cancelled", "error"


class QueueFull(RuntimeError):
    """The engine's waiting queue is at its bound; the caller should retry later."""


@dataclass(frozen=True)
class Event:
    """What one sequence produced: new final text, and on its last event why it finished."""

    index: int  # which sequence of the request (choice index)
    text: str  # with finish_reason "error": the error message
    finish_reason: str | None = None
    n_tokens: int = 0  # tokens generated so far (the stop token excluded)


@dataclass(eq=False)
class _Sequence:
    request: Request
    index: int
    prompt: list[int]
    max_new_tokens: int
    text: TextStream
    generator: torch.Generator | None
    row: int = -1
    start: int = 0  # cache slot of the sequence's position 0
    pending: int = 0  # last sampled token: fed to the model at the next step
    n_tokens: int = 0
    finished: bool = False


@dataclass(eq=False)
class Request:
    """A submitted request: one or more prompts, each sampled `n` times (OpenAI's choices).

    `cancel()` from any thread frees its rows before the next decode step.
    """

    params: SamplingParams
    on_event: Callable[[Event], None]
    deadline: float
    sequences: list[_Sequence] = field(default_factory=list)
    unstarted: deque = field(default_factory=deque)
    cancelled: bool = False
    _engine: Engine | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self._engine is not None:
            self._engine._notify()


class Engine:
    """Serve many generation requests on one model with continuous batching.

    `submit()` is thread-safe and returns at once; results arrive as `Event`s through the
    request's callback, called from the engine's thread. At most `max_batch` sequences decode
    together; at most `max_queue` requests wait for a row (`QueueFull` beyond that). `context`
    (default: the model's max_seq_len) bounds prompt + reply; the KV cache holds
    max_batch x context positions per layer, allocated once.
    """

    def __init__(self, model: Transformer, tokenizer, *, max_batch: int = 8, max_queue: int = 64,
                 context: int | None = None):
        context = context or model.args.max_seq_len
        if max_batch < 1 or max_queue < 0 or not 2 <= context <= model.args.max_seq_len:
            raise ValueError(f"need max_batch >= 1, max_queue >= 0 and 2 <= context <= {model.args.max_seq_len} "
                             f"(the model's max_seq_len); got {max_batch}, {max_queue} and {context}")
        self.model, self.tokenizer = model.eval(), tokenizer
        use_decode_layout(model)  # on CPU, for as long as it serves (see cpu_kernels)
        self.max_batch, self.max_queue = max_batch, max_queue
        self.context = context  # tokens per sequence, prompt included; the cache holds this many slots a row
        weight = model.output.weight
        self._cache = [
            KVCache(max_batch, self.context, model.args.kv_heads, model.args.head_dim, weight.dtype, weight.device)
            for _ in model.layers
        ]
        self.device = weight.device
        self.clock = 0
        self.rows: list[_Sequence | None] = [None] * max_batch
        self._waiting: deque[Request] = deque()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.stats = EngineStats()

    # ------------------------------------------------------------------ public, any thread

    def start(self) -> Engine:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="llamaforge-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        on_event: Callable[[Event], None],
        *,
        n: int = 1,
        timeout: float | None = None,
        reply: bool = False,
    ) -> Request:
        """Queue `n` samples of each prompt; sequence `j * n + i` is sample i of prompt j.

        Each sequence generates up to `params.max_new_tokens`, capped by the context left after
        its prompt. `reply=True` (chat): the text is the assistant's reply, stripped.
        With a seed, sample k uses seed + k, so the choices differ but are reproducible.
        """
        if not prompts or n < 1:
            raise ValueError("submit needs at least one prompt and n >= 1")
        request = Request(params, on_event, time.monotonic() + (timeout if timeout else float("inf")), _engine=self)
        eos = self.tokenizer.eos_id
        for j, prompt in enumerate(prompts):
            prompt = [int(t) for t in prompt]
            if not 0 < len(prompt) < self.context:
                raise ValueError(f"a prompt needs 1 to {self.context - 1} tokens, got {len(prompt)}")
            prefix = [] if reply or prompt[-1] in (self.tokenizer.bos_id, eos) else prompt[-1:]
            for i in range(n):
                k = j * n + i
                generator = None
                if params.seed is not None and params.temperature > 0:
                    generator = torch.Generator(device=self.device).manual_seed((params.seed + k) % 2**64)
                request.sequences.append(
                    _Sequence(
                        request, k, prompt, min(params.max_new_tokens, self.context - len(prompt)),
                        TextStream(self.tokenizer, params.stop_strings, prefix=prefix, strip=reply), generator,
                    )
                )
        request.unstarted.extend(request.sequences)
        with self._lock:
            if self._stopping:
                raise QueueFull("the engine is shutting down")
            if len(self._waiting) >= self.max_queue + self._free_rows():
                # Full: a request that would wait behind max_queue others is turned away now.
                self.stats.rejected += 1
                raise QueueFull(f"{len(self._waiting)} requests are already waiting (max_queue={self.max_queue})")
            self._waiting.append(request)
            self.stats.requests += 1
            self._lock.notify_all()
        return request

    @property
    def cache_bytes(self) -> int:
        return sum(cache.k.nbytes + cache.v.nbytes for cache in self._cache)

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return sum(row is not None for row in self.rows)

    # ------------------------------------------------------------------ the engine thread

    def _notify(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def _free_rows(self) -> int:
        return self.rows.count(None)

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._lock:
                    while not self._stopping and not self._waiting and not self.active:
                        self._lock.wait()
                    if self._stopping:
                        break
                    joiners = self._take_joiners()
                try:
                    self._drop_finished_rows()
                    if joiners:
                        self._admit(joiners)
                    if self.active:
                        self._step()
                except Exception as e:  # a failed step must not take the server down with it
                    log.exception("generation step failed; failing the requests in the batch")
                    self._fail_batch(joiners, e)
        for request in self._waiting:
            for seq in request.unstarted:
                self._finish(seq, CANCELLED)
        for seq in [s for s in self.rows if s is not None]:
            self._finish(seq, CANCELLED)
        self._waiting.clear()

    def _take_joiners(self) -> list[_Sequence]:
        """Waiting sequences for the free rows, oldest first; drops cancelled and expired ones."""
        now = time.monotonic()
        for request in [r for r in self._waiting if r.cancelled or now > r.deadline]:
            for seq in request.unstarted:
                self._finish(seq, CANCELLED if request.cancelled else TIMEOUT)
            request.unstarted.clear()
            self._waiting.remove(request)
        joiners: list[_Sequence] = []
        free = self._free_rows()
        while self._waiting:
            request = self._waiting[0]
            while request.unstarted and len(joiners) < free:
                joiners.append(request.unstarted.popleft())
            if request.unstarted:
                break
            self._waiting.popleft()
        return joiners

    def _drop_finished_rows(self) -> None:
        now = time.monotonic()
        for seq in self.rows:
            if seq is not None and (seq.request.cancelled or now > seq.request.deadline):
                self._finish(seq, CANCELLED if seq.request.cancelled else TIMEOUT)

    def _use(self, caches: list[KVCache]) -> None:
        for layer, cache in zip(self.model.layers, caches):
            layer.attention.cache = cache

    def _admit(self, joiners: list[_Sequence]) -> None:
        """Prefill the joiners together (left-padded) in a scratch cache, then copy each one's
        keys/values into a free row so that they end at the clock."""
        self._compact_if_full()
        lengths = [len(s.prompt) for s in joiners]
        longest = max(lengths)
        self._realign(max(self.clock, longest))
        k = len(joiners)
        pad = torch.tensor([longest - n for n in lengths], device=self.device)
        tokens = torch.zeros(k, longest, dtype=torch.long, device=self.device)
        for i, seq in enumerate(joiners):
            tokens[i, longest - lengths[i] :] = torch.tensor(seq.prompt)
        positions = key_mask = None
        if pad.any():
            slots = torch.arange(longest, device=self.device)
            key_mask = slots.unsqueeze(0) >= pad.unsqueeze(1)
            positions = (slots.unsqueeze(0) - pad.unsqueeze(1)).clamp(min=0)
        args, weight = self.model.args, self.model.output.weight
        scratch = [KVCache(k, longest, args.kv_heads, args.head_dim, weight.dtype, weight.device) for _ in self._cache]
        self._use(scratch)
        try:
            logits = last_logits(self.model, tokens, 0, positions, key_mask)
        finally:
            self._use(self._cache)
        for i, seq in enumerate(joiners):
            row = self.rows.index(None)
            n = lengths[i]
            for main, temp in zip(self._cache, scratch):
                main.k[row, :, self.clock - n : self.clock] = temp.k[i, :, longest - n :]
                main.v[row, :, self.clock - n : self.clock] = temp.v[i, :, longest - n :]
            seq.row, seq.start = row, self.clock - n
            self.rows[row] = seq
            self.stats.prompt_tokens += n
        self._sample(joiners, logits)

    def _realign(self, clock: int) -> None:
        """Move the clock to `clock`, shifting every row's history so that it still ends there."""
        active = [s for s in self.rows if s is not None]
        if not active:
            self.clock = clock
            return
        shift = clock - self.clock
        if shift == 0:
            return
        longest = max(self.clock - s.start for s in active)
        if clock < longest or clock > self.context:
            raise AssertionError(f"cannot realign rows of up to {longest} tokens to clock {clock}")
        for cache in self._cache:
            for buf in (cache.k, cache.v):
                buf[:, :, clock - longest : clock] = buf[:, :, self.clock - longest : self.clock].clone()
        for seq in active:
            seq.start += shift
        self.clock = clock
        self.stats.compactions += shift < 0

    def _compact_if_full(self) -> None:
        if self.clock == self.context:
            self._realign(max((self.clock - s.start for s in self.rows if s is not None), default=0))

    def _step(self) -> None:
        self._compact_if_full()
        self._use(self._cache)  # cheap, and robust to anyone having called model.clear_cache()
        batch = max(i for i, s in enumerate(self.rows) if s is not None) + 1
        rows = self.rows[:batch]
        tokens = torch.tensor([[s.pending if s else 0] for s in rows], device=self.device)
        # An empty row gets a start past the clock: it sees no key (the model lets it see itself).
        starts = torch.tensor([s.start if s else self.clock + 1 for s in rows], device=self.device)
        positions = (self.clock - starts).clamp(min=0).unsqueeze(1)
        key_mask = torch.arange(self.clock + 1, device=self.device).unsqueeze(0) >= starts.unsqueeze(1)
        logits = self.model(tokens, self.clock, positions=positions, key_mask=key_mask)[:, -1].float()
        self.clock += 1
        live = [s for s in rows if s is not None]
        self._sample(live, logits[[s.row for s in live]])
        self.stats.steps += 1

    def _sample(self, seqs: list[_Sequence], logits: torch.Tensor) -> None:
        greedy = logits.argmax(dim=-1).tolist()
        for i, seq in enumerate(seqs):
            params = seq.request.params
            token = greedy[i] if params.temperature == 0 else int(sample_next(logits[i : i + 1], params, seq.generator))
            self._advance(seq, token)
        self.stats.add_tokens(len(seqs))

    def _advance(self, seq: _Sequence, token: int) -> None:
        params = seq.request.params
        if token == self.tokenizer.eos_id or token in params.stop_tokens:
            self._finish(seq, "stop")
            return
        seq.n_tokens += 1
        seq.pending = token
        delta, hit_stop = seq.text.push(token)
        if hit_stop:
            self._finish(seq, "stop", delta)
        elif seq.n_tokens >= seq.max_new_tokens:
            self._finish(seq, "length", delta + seq.text.flush())
        elif delta:
            self._emit(seq, Event(seq.index, delta, None, seq.n_tokens))

    def _finish(self, seq: _Sequence, reason: str, text: str | None = None) -> None:
        if seq.finished:
            return
        seq.finished = True
        if seq.row >= 0 and self.rows[seq.row] is seq:
            self.rows[seq.row] = None
        if text is None:
            text = "" if reason in (CANCELLED, ERROR) else seq.text.flush()
        self._emit(seq, Event(seq.index, text, reason, seq.n_tokens))
        if not any(self.rows):
            self.clock = 0

    def _emit(self, seq: _Sequence, event: Event) -> None:
        try:
            seq.request.on_event(event)
        except Exception:  # e.g. the client's event loop is gone: nobody is listening any more
            log.debug("dropping an event for a request whose listener failed", exc_info=True)
            seq.request.cancelled = True

    def _fail_batch(self, joiners: list[_Sequence], error: Exception) -> None:
        self.stats.errors += 1
        for seq in [*joiners, *(s for s in self.rows if s is not None)]:
            self._finish(seq, ERROR, str(error))
        self.rows = [None] * self.max_batch
        self.clock = 0
        self._use(self._cache)


@dataclass
class EngineStats:
    """Counters for /metrics; tokens/s is over the last `window` seconds."""

    requests: int = 0
    rejected: int = 0
    errors: int = 0
    steps: int = 0
    compactions: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    window: float = 10.0
    _recent: deque = field(default_factory=deque, repr=False)

    def add_tokens(self, n: int) -> None:
        now = time.monotonic()
        self.generated_tokens += n
        self._recent.append((now, n))
        while self._recent and self._recent[0][0] < now - self.window:
            self._recent.popleft()

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        return sum(n for t, n in list(self._recent) if t >= now - self.window) / self.window

