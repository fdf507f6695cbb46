"""Generation engine: a bounded request queue, micro-batching and per-request event streams.

One worker thread owns the model. Requests wait in a FIFO queue (at most ``max_queue``); the worker
takes the oldest one plus every queued request that can share its ``generate`` call (same mode and
sampling settings, no seed) up to ``max_batch_size`` and runs them as one left-padded batch. Each request
receives its own events (:class:`NoteEvent`, :class:`TextEvent`, then one :class:`DoneEvent` or
:class:`ErrorEvent`), on an ``asyncio`` queue when it was submitted from an event loop (the server) or
a thread-safe queue otherwise (the terminal chat). Generation never runs on the event loop.

Cancellation (a client that disconnects, Ctrl-C in the chat) sets the request's flag: a queued request is
dropped, a running row is finished at its next token, and a batch whose rows are all finished stops.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import torch
from transformers import StoppingCriteriaList

from c2c.serve.streaming import CancelStopping, RowStreamer, RowText
from c2c.serve.schema import (
    MODES,
    Backend,
    BackendOutput,
    DoneEvent,
    EngineClosed,
    ErrorEvent,
    Event,
    NoteEvent,
    PromptTooLong,
    QueueFull,
    RequestError,
    SamplingParams,
    ServeLimits,
    TextEvent,
)

__all__ = [  # the types are re-exported: callers import everything serving-related from here
    "MODES", "Backend", "BackendOutput", "DoneEvent", "Engine", "EngineClosed", "ErrorEvent", "Event",
    "NoteEvent", "PromptTooLong", "QueueFull", "RequestError", "RequestHandle", "SamplingParams",
    "ServeLimits", "TextEvent",
]

log = logging.getLogger("c2c.serve")

# -- requests ---------------------------------------------------------------------------------------------


class RequestHandle:
    """One submitted request: its event stream and its cancellation flag."""

    def __init__(self, rid: int, messages: list[dict[str, str]], params: SamplingParams, prompt_tokens: int) -> None:
        self.id = rid
        self.messages = messages
        self.params = params
        self.prompt_tokens = prompt_tokens
        self.cancelled = threading.Event()
        self.submitted = time.perf_counter()
        self.started: float | None = None
        self.first_token: float | None = None
        self.finished = False
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._aq: asyncio.Queue[Event] | None = asyncio.Queue() if self._loop else None
        self._q: queue.SimpleQueue[Event] = queue.SimpleQueue()

    def cancel(self) -> None:
        """Stop this request (no-op once finished)."""
        self.cancelled.set()

    def emit(self, event: Event) -> None:
        """Called from the worker thread."""
        if isinstance(event, TextEvent) and self.first_token is None:
            self.first_token = time.perf_counter()
        if isinstance(event, (DoneEvent, ErrorEvent)):
            self.finished = True
        if self._loop is not None and self._aq is not None:
            try:
                self._loop.call_soon_threadsafe(self._aq.put_nowait, event)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                self.cancelled.set()
        else:
            self._q.put(event)

    async def events(self) -> AsyncIterator[Event]:
        """Events until (and including) the final Done/Error event. Submit from the same loop."""
        if self._aq is None:
            raise RuntimeError("this request was submitted outside an event loop; use iter_events()")
        while True:
            ev = await self._aq.get()
            yield ev
            if isinstance(ev, (DoneEvent, ErrorEvent)):
                return

    def iter_events(self) -> Iterator[Event]:
        """Blocking iteration for synchronous callers (the terminal chat)."""
        if self._aq is not None:
            raise RuntimeError("this request was submitted from an event loop; use events()")
        while True:
            try:  # a short timeout keeps the wait interruptible by Ctrl-C
                ev = self._q.get(timeout=0.1)
            except queue.Empty:
                continue
            yield ev
            if isinstance(ev, (DoneEvent, ErrorEvent)):
                return


# -- the engine -------------------------------------------------------------------------------------------


class Engine:
    """Queue + micro-batching worker around a :class:`Backend`. Start with ``start()`` (or ``with``)."""

    def __init__(self, backend: Backend, limits: ServeLimits | None = None) -> None:
        self.backend = backend
        self.limits = limits or ServeLimits()
        self._pending: collections.deque[RequestHandle] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._next_id = 0
        self.active = 0
        self.completed = 0
        self._running: list[RequestHandle] = []
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=256)
        """Last finished requests: id, mode, finish_reason, completion_tokens (for health and tests)."""

    # lifecycle
    def start(self) -> Engine:
        if self._thread is None:
            self._closing = False
            self._thread = threading.Thread(target=self._worker, name="c2c-engine", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Fail queued requests, stop the running batch at its next token, stop the worker."""
        with self._cond:
            self._closing = True
            pending = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for h in pending:
            h.emit(ErrorEvent("the server is shutting down"))
        for h in list(self._running):  # the running batch stops at its next token
            h.cancel()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def queued(self) -> int:
        return len(self._pending)

    # submission
    def make_params(
        self,
        *,
        mode: str = "c2c",
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: list[str] | tuple[str, ...] = (),
        seed: int | None = None,
    ) -> SamplingParams:
        """Validated :class:`SamplingParams` (OpenAI defaults: temperature 1, top_p 1)."""
        if mode not in self.backend.modes:
            raise RequestError(
                f"mode {mode!r} is not available; this server offers {', '.join(self.backend.modes)}", param="mode"
            )
        lim = self.limits
        if max_tokens is None:
            max_tokens = min(lim.default_max_tokens, lim.max_new_tokens)
        elif max_tokens > lim.max_new_tokens:
            raise RequestError(
                f"max_tokens={max_tokens} exceeds this server's limit of {lim.max_new_tokens} new tokens",
                param="max_tokens",
                code="max_tokens_exceeded",
            )
        return SamplingParams(
            mode=mode,
            max_new_tokens=max_tokens,
            temperature=1.0 if temperature is None else float(temperature),
            top_p=1.0 if top_p is None else float(top_p),
            stop=tuple(stop),
            seed=seed,
        )

    def submit(self, messages: list[dict[str, str]], params: SamplingParams) -> RequestHandle:
        """Queue a request. Raises :class:`PromptTooLong`, :class:`RequestError` or :class:`QueueFull`."""
        if self._closing or self._thread is None:
            raise EngineClosed("the engine is not running")
        n_prompt = self.backend.count_prompt_tokens(messages, params.mode)
        if n_prompt > self.limits.max_prompt_tokens:
            raise PromptTooLong(
                f"the prompt has {n_prompt} tokens, more than this server's limit of "
                f"{self.limits.max_prompt_tokens}; shorten the messages",
                param="messages",
                code="context_length_exceeded",
            )
        ctx = self.backend.context_length
        if ctx is not None and n_prompt + params.max_new_tokens > ctx:
            raise RequestError(
                f"prompt ({n_prompt} tokens) + max_tokens ({params.max_new_tokens}) exceeds the model's "
                f"context of {ctx} tokens; lower max_tokens or shorten the messages",
                param="max_tokens",
                code="context_length_exceeded",
            )
        with self._cond:
            if len(self._pending) >= self.limits.max_queue:  # abandoned requests do not hold places
                live = collections.deque(h for h in self._pending if not h.cancelled.is_set())
                for h in self._pending:
                    if h.cancelled.is_set():
                        self._drop(h)
                self._pending = live
            if len(self._pending) >= self.limits.max_queue:
                raise QueueFull(
                    f"the server is busy ({self.active} generating, {len(self._pending)} queued); retry shortly",
                    code="queue_full",
                )
            self._next_id += 1
            handle = RequestHandle(self._next_id, messages, params, n_prompt)
            self._pending.append(handle)
            self._cond.notify()
        return handle

    # worker
    def _take_batch(self) -> list[RequestHandle]:
        """Oldest live request plus compatible queued ones (FIFO order kept for the rest)."""
        while self._pending and self._pending[0].cancelled.is_set():
            self._drop(self._pending.popleft())
        if not self._pending:
            return []
        first = self._pending.popleft()
        batch = [first]
        key = first.params.batch_key()
        if key is not None:
            keep: collections.deque[RequestHandle] = collections.deque()
            while self._pending:
                h = self._pending.popleft()
                if h.cancelled.is_set():
                    self._drop(h)
                elif len(batch) < self.limits.max_batch_size and h.params.batch_key() == key:
                    batch.append(h)
                else:
                    keep.append(h)
            self._pending = keep
        return batch

    def _drop(self, h: RequestHandle) -> None:
        self.recent.append({"id": h.id, "mode": h.params.mode, "finish_reason": "cancelled", "completion_tokens": 0})
        h.emit(DoneEvent("cancelled", h.prompt_tokens, 0, {}))

    def _worker(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                need_window = len(self._pending) < self.limits.max_batch_size and self.limits.batch_window_s > 0
            if need_window:  # let near-simultaneous requests join the batch
                time.sleep(self.limits.batch_window_s)
            with self._cond:
                batch = self._take_batch()
                self.active = len(batch)
                self._running = batch
            if batch:
                try:
                    self._execute(batch)
                finally:
                    with self._cond:
                        self.active = 0
                        self._running = []
                        self.completed += len(batch)

    def _execute(self, batch: list[RequestHandle]) -> None:
        t0 = time.perf_counter()
        for h in batch:
            h.started = t0
        if batch[0].params.seed is not None:  # seeded requests run alone (see SamplingParams.batch_key)
            torch.manual_seed(batch[0].params.seed)
        try:
            if batch[0].params.mode == "t2t":
                self._run_t2t(batch)
            else:
                self._run(batch, batch[0].params.mode, [h.messages for h in batch], {})
        except Exception as exc:  # a model error fails this batch only; the server keeps serving
            log.exception("generation failed")
            for h in batch:
                if not h.finished:
                    h.emit(ErrorEvent(f"generation failed: {type(exc).__name__}: {exc}"))

    def _run(
        self,
        batch: list[RequestHandle],
        mode: str,
        prompts: list[list[dict[str, str]]],
        extra_timings: dict[str, float],
    ) -> None:
        p = batch[0].params
        rows = [
            RowText(
                self.backend.tokenizer_for(mode),
                eos_token_ids=self.backend.eos_token_ids(mode),
                stop=h.params.stop,
                max_new_tokens=h.params.max_new_tokens,
                cancelled=h.cancelled,
            )
            for h in batch
        ]
        def finish(i: int, stages: dict[str, float] | None, n_prompt: int | None = None) -> None:
            h, row = batch[i], rows[i]
            tail = row.finish("length")
            if tail:
                h.emit(TextEvent(tail))
            now = time.perf_counter()
            t: dict[str, float | int | None] = dict(stages or {})
            t.update(extra_timings)
            t["queue"] = (h.started or now) - h.submitted
            t["first_token"] = None if h.first_token is None else h.first_token - h.submitted
            t["total"] = now - h.submitted
            t["batch_size"] = len(batch)
            reason = row.finish_reason or "length"
            self.recent.append(
                {"id": h.id, "mode": h.params.mode, "finish_reason": reason, "completion_tokens": row.n_tokens}
            )
            h.emit(DoneEvent(reason, h.prompt_tokens if n_prompt is None else n_prompt, row.n_tokens, t))

        # A row that finishes before its batch-mates is answered at once; the model's per-stage split is
        # only known when the call returns, so such a row reports queue / first-token / total times only.
        streamer = RowStreamer(
            rows, lambda i, text: batch[i].emit(TextEvent(text)), on_early_finish=lambda i: finish(i, None)
        )
        batch_max = max(h.params.max_new_tokens for h in batch)
        out = self.backend.generate(
            prompts,
            mode=mode,
            max_new_tokens=batch_max,
            do_sample=p.do_sample,
            temperature=p.temperature,
            top_p=p.top_p,
            stopping=StoppingCriteriaList([streamer]),
        )
        stages = {k: float(out.timings.get(k, 0.0)) for k in ("sharer_prefill", "fusion", "receiver_prefill", "decode")}
        for i, (h, row) in enumerate(zip(batch, rows)):
            if h.finished:
                continue
            # Tokens the criterion did not see (a loop that ends before calling it) are fed now.
            seq = out.sequences[i] if i < len(out.sequences) else []
            for tok in seq[row.n_tokens :]:
                piece = row.feed(tok)
                if piece:
                    h.emit(TextEvent(piece))
            if not row.done:
                row.finish("length" if len(seq) >= batch_max else "stop")
            finish(i, stages, out.prompt_tokens[i] if i < len(out.prompt_tokens) else None)

    def _run_t2t(self, batch: list[RequestHandle]) -> None:
        """Text-to-text: the sharer writes a note per request, then the receiver answers with it."""
        p = batch[0].params
        t0 = time.perf_counter()
        note_out = self.backend.generate(
            [self.backend.t2t_messages(h.messages, None) for h in batch],
            mode="sharer",
            max_new_tokens=self.limits.note_max_tokens,
            do_sample=p.do_sample,
            temperature=p.temperature,
            top_p=p.top_p,
            stopping=StoppingCriteriaList([CancelStopping([h.cancelled for h in batch])]),
        )
        note_s = time.perf_counter() - t0
        prompts = []
        for h, note in zip(batch, note_out.texts):
            note = note.strip()
            h.emit(NoteEvent(note))
            msgs = self.backend.t2t_messages(h.messages, note)
            h.prompt_tokens = self.backend.count_prompt_tokens(msgs, "receiver")
            prompts.append(msgs)
        self._run(batch, "receiver", prompts, {"sharer_note": note_s})
