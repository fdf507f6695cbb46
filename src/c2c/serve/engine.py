"""Generation engine: admission, a bounded request queue, micro-batching and per-request event streams.

Admission (:meth:`Engine.submit`): the prompt is tokenized as its mode reads it (off the event loop for
the server: :meth:`Engine.asubmit`) and refused before it queues when it cannot run: too long, a
``max_tokens`` beyond the limit or the model's context, a parameter out of range. A request without
``max_tokens`` gets ``min(default_max_tokens, what the context leaves after the prompt)``.

One worker thread owns the model. Requests wait in a FIFO queue (at most ``max_queue``); the worker
takes the oldest one plus every queued request that can share its ``generate`` call (same mode and
sampling settings, no seed, and the batch still fits every context: a left-padded batch reads its longest
prompt and decodes to its largest ``max_tokens``, see :func:`~c2c.serve.schema.batch_fits`) up to
``max_batch_size``. Each request receives its own events (:class:`NoteEvent`, :class:`TextEvent`, then
one :class:`DoneEvent` or :class:`ErrorEvent`), on an ``asyncio`` queue when it was submitted for an
event loop (the server) or a thread-safe queue otherwise (the terminal chat).

Nothing waits forever: an exception in a batch fails that batch's requests with an :class:`ErrorEvent`
(after retrying alone the rows that had not started streaming, so one bad row cannot fail its
batch-mates) and the worker goes on; if the worker thread dies all the same, every open request gets an
:class:`ErrorEvent` and :meth:`Engine.health` says so.

Cancellation (a client that disconnects, Ctrl-C in the chat) sets the request's flag: a queued request is
dropped, a running row is finished at its next token (the stopping criterion reports it finished, so
``generate`` stops extending it), a T2T row cancelled while its note is written skips the answer, and a
batch whose rows are all finished stops. :meth:`Engine.begin_shutdown` ends every open request with an
:class:`ErrorEvent` at once.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import StoppingCriteriaList

from c2c.serve.handle import RequestHandle
from c2c.serve.schema import (
    MODES,
    Backend,
    BackendOutput,
    DoneEvent,
    EngineClosed,
    ErrorEvent,
    Event,
    ModelInfo,
    NoteEvent,
    Prompt,
    PromptCost,
    PromptTooLong,
    QueueFull,
    RequestError,
    SamplingParams,
    ServeLimits,
    TextEvent,
    batch_fits,
    check_sampling,
)
from c2c.serve.streaming import CancelStopping, RowStreamer, RowText

__all__ = [  # the types are re-exported: callers import everything serving-related from here
    "MODES",
    "Backend",
    "BackendOutput",
    "DoneEvent",
    "Engine",
    "EngineClosed",
    "ErrorEvent",
    "Event",
    "ModelInfo",
    "NoteEvent",
    "PromptTooLong",
    "QueueFull",
    "RequestError",
    "RequestHandle",
    "SamplingParams",
    "ServeLimits",
    "TextEvent",
]

log = logging.getLogger("c2c.serve")

SHUTDOWN = "the server is shutting down; retry on another server or later"

# -- the engine -------------------------------------------------------------------------------------------


class Engine:
    """Queue + micro-batching worker around a :class:`Backend`; implements
    :class:`~c2c.serve.schema.ServingEngine`. Start with ``start()`` (or ``with``)."""

    def __init__(self, backend: Backend, limits: ServeLimits | None = None) -> None:
        self.backend = backend
        self.info: ModelInfo = backend.info
        self.limits = limits or ServeLimits()
        self._pending: collections.deque[RequestHandle] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._worker_error: str | None = None
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
            self._worker_error = None
            self._thread = threading.Thread(target=self._worker, name="c2c-engine", daemon=True)
            self._thread.start()
        return self

    def begin_shutdown(self, reason: str = SHUTDOWN) -> None:
        """Refuse new requests; end queued and running ones now with an :class:`ErrorEvent` (503)."""
        error = ErrorEvent(reason, status=503, type="server_error", code="shutting_down")
        with self._cond:
            self._closing = True
            pending = list(self._pending)
            self._pending.clear()
            running = list(self._running)
            self._cond.notify_all()
        for h in pending:
            h.abort(error)
            h.emit(error)
        for h in running:  # the running batch ends them at its next token (and stops once all are)
            h.abort(error)

    def close(self, timeout: float = 30.0) -> None:
        """Fail queued requests, end the running batch at its next token, stop the worker."""
        self.begin_shutdown()
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

    def alive(self) -> bool:
        """The worker thread is running (or was stopped on purpose)."""
        return self._worker_error is None and (self._thread is None or self._thread.is_alive() or self._closing)

    def health(self) -> dict[str, Any]:
        dead = self._thread is not None and not self._thread.is_alive()
        if dead and self._worker_error is None and not self._closing:
            self._worker_error = "the generation worker stopped"
        if self._worker_error is not None:
            status = "unhealthy"
        elif self._closing or self._thread is None:
            status = "shutting down" if self._closing else "not started"
        else:
            status = "ok"
        out: dict[str, Any] = {
            "status": status,
            "model": self.info.model_id,
            "active": self.active,
            "queued": self.queued,
        }
        if self._worker_error is not None:
            out["error"] = self._worker_error
        return out

    # submission
    def make_params(
        self,
        *,
        mode: str = "c2c",
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] = (),
        seed: int | None = None,
    ) -> SamplingParams:
        """Validated :class:`SamplingParams` (OpenAI defaults: temperature 1, top_p 1). ``max_tokens=None``:
        the server's default, fitted to the context at submission."""
        if mode not in self.info.modes:
            raise RequestError(
                f"mode {mode!r} is not available; this server offers {', '.join(self.info.modes)}", param="mode"
            )
        lim = self.limits
        if max_tokens is not None:
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
                raise RequestError(f"max_tokens must be an integer >= 1, got {max_tokens!r}", param="max_tokens")
            if max_tokens > lim.max_new_tokens:
                raise RequestError(
                    f"max_tokens={max_tokens} exceeds this server's limit of {lim.max_new_tokens} new tokens",
                    param="max_tokens",
                    code="max_tokens_exceeded",
                )
        temperature = 1.0 if temperature is None else temperature
        top_p = 1.0 if top_p is None else top_p
        stop = tuple(stop)
        check_sampling(temperature, top_p, seed, stop, lim.max_stop_chars)
        return SamplingParams(
            mode=mode,
            max_new_tokens=max_tokens,
            temperature=float(temperature),
            top_p=float(top_p),
            stop=stop,
            seed=seed,
        )

    def _admit(self, prompt: Prompt, params: SamplingParams) -> tuple[PromptCost, SamplingParams]:
        """Measure ``prompt`` and fix ``max_new_tokens``; raise :class:`RequestError` when it cannot run."""
        if self._closing or self._thread is None:
            raise EngineClosed(SHUTDOWN if self._closing else "the engine is not running", code="shutting_down")
        if params.mode not in self.info.modes:
            raise RequestError(f"mode {params.mode!r} is not available", param="mode")
        param = "prompt" if isinstance(prompt, str) else "messages"
        try:
            cost = self.backend.measure(prompt, params.mode, note_tokens=self.limits.note_max_tokens)
        except (ValueError, TypeError, UnicodeError) as exc:  # a template that refuses the roles, an empty prompt...
            raise RequestError(f"the prompt cannot be read: {exc}", param=param, code="invalid_prompt") from exc
        except Exception as exc:
            if type(exc).__module__.startswith("jinja2"):  # TemplateError ("roles must alternate" ...)
                raise RequestError(
                    f"the chat template refuses this conversation: {exc}", param=param, code="invalid_prompt"
                ) from exc
            raise
        if cost.tokens > self.limits.max_prompt_tokens:
            raise PromptTooLong(
                f"the prompt has {cost.tokens} tokens, more than this server's limit of "
                f"{self.limits.max_prompt_tokens}; shorten it",
                param=param,
                code="context_length_exceeded",
            )
        over = cost.overflow()
        if over is not None:
            raise PromptTooLong(
                f"the prompt has {over.tokens} tokens for the {over.model}, beyond its context of {over.context} "
                f"positions{' (with the note budget)' if params.mode == 't2t' else ''}; shorten it",
                param=param,
                code="context_length_exceeded",
            )
        budget = cost.budget()
        n = params.max_new_tokens
        if n is None:
            n = min(self.limits.default_max_tokens, self.limits.max_new_tokens)
            n = n if budget is None else min(n, budget)
        elif budget is not None and n > budget:
            model = next(
                s for s in cost.segments if s.grows and s.context is not None and s.context - s.tokens == budget
            )
            note = (
                f", counting the T2T note's budget of {self.limits.note_max_tokens} tokens"
                if params.mode == "t2t" and model.model == "receiver"
                else ""
            )
            raise RequestError(
                f"the prompt ({model.tokens} tokens for the {model.model}{note}) + max_tokens ({n}) exceeds its "
                f"context of {model.context} positions; lower max_tokens to at most {budget} or shorten the prompt",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return cost, dataclasses.replace(params, max_new_tokens=n)

    def submit(self, prompt: Prompt, params: SamplingParams) -> RequestHandle:
        """Measure and queue one request (blocking). Raises :class:`RequestError` (and subclasses)."""
        return self._enqueue([self._admit(prompt, params)], [prompt], None)[0]

    async def asubmit(self, prompts: list[Prompt], params: SamplingParams) -> list[RequestHandle]:
        """Measure the prompts off the event loop, then queue all of them or none."""
        loop = asyncio.get_running_loop()
        admitted = await asyncio.to_thread(lambda: [self._admit(p, params) for p in prompts])
        return self._enqueue(admitted, prompts, loop)

    def _enqueue(
        self,
        admitted: list[tuple[PromptCost, SamplingParams]],
        prompts: list[Prompt],
        loop: asyncio.AbstractEventLoop | None,
    ) -> list[RequestHandle]:
        with self._cond:
            if self._closing or self._thread is None:
                raise EngineClosed(SHUTDOWN, code="shutting_down")
            if len(self._pending) + len(prompts) > self.limits.max_queue:  # abandoned requests hold no place
                live = collections.deque(h for h in self._pending if not h.cancelled.is_set())
                for h in self._pending:
                    if h.cancelled.is_set():
                        self._drop(h)
                self._pending = live
            if len(self._pending) + len(prompts) > self.limits.max_queue:
                raise QueueFull(
                    f"the server is busy ({self.active} generating, {len(self._pending)} queued); retry shortly",
                    code="queue_full",
                )
            handles = []
            for prompt, (cost, params) in zip(prompts, admitted):
                self._next_id += 1
                h = RequestHandle(self._next_id, prompt, params, cost, loop=loop, alive=self.alive)
                self._pending.append(h)
                handles.append(h)
            self._cond.notify()
        return handles

    # worker
    def _take_batch(self) -> list[RequestHandle]:
        """Oldest live request plus queued ones that may share its call and keep the batch within every
        context (FIFO order kept for the rest)."""
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
                elif (
                    len(batch) < self.limits.max_batch_size
                    and h.params.batch_key() == key
                    and batch_fits([b.cost for b in [*batch, h]], [_max_new(b) for b in [*batch, h]])
                ):
                    batch.append(h)
                else:
                    keep.append(h)
            self._pending = keep
        return batch

    def _drop(self, h: RequestHandle) -> None:
        if h.abort_error is not None:
            h.emit(h.abort_error)
            return
        self.recent.append({"id": h.id, "mode": h.params.mode, "finish_reason": "cancelled", "completion_tokens": 0})
        h.emit(DoneEvent("cancelled", h.prompt_tokens, 0, {}))

    def _worker(self) -> None:
        try:
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
                try:
                    if batch:
                        self._execute(batch)
                finally:
                    with self._cond:
                        self.active = 0
                        self._running = []
                        self.completed += len(batch)
        except BaseException as exc:  # never expected: _execute catches; keep nobody waiting all the same
            self._worker_error = f"the generation worker stopped: {type(exc).__name__}: {exc}"
            log.exception("the generation worker stopped")
            with self._cond:
                stranded = [*self._pending, *self._running]
                self._pending.clear()
            for h in stranded:
                h.fail(self._worker_error, code="worker_dead")

    def _execute(self, batch: list[RequestHandle], *, retry: bool = True) -> None:
        t0 = time.perf_counter()
        for h in batch:
            h.started = t0
        try:
            if batch[0].params.seed is not None:  # seeded requests run alone (see SamplingParams.batch_key)
                torch.manual_seed(batch[0].params.seed)
            if batch[0].params.mode == "t2t":
                self._run_t2t(batch)
            else:
                self._run(batch, batch[0].params.mode, [h.prompt for h in batch], {})
        except Exception as exc:  # a model error fails this batch only; the server keeps serving
            log.exception("generation failed (batch of %d)", len(batch))
            fresh = [h for h in batch if not h.sent_any and not h.cancelled.is_set()]
            if retry and len(batch) > 1 and fresh:
                # Rows that sent nothing yet run again alone: one row's failure must not fail its batch-mates.
                for h in fresh:
                    self._execute([h], retry=False)
            oom = isinstance(exc, torch.OutOfMemoryError)
            for h in batch:
                if not h.finished:
                    if oom:
                        h.fail(
                            "the server ran out of memory for this batch; retry shortly",
                            status=503,
                            type="server_overloaded",
                            code="out_of_memory",
                        )
                    else:
                        h.fail(f"generation failed: {type(exc).__name__}: {exc}", code="generation_failed")

    def _run(
        self,
        batch: list[RequestHandle],
        mode: str,
        prompts: list[Prompt],
        extra_timings: dict[str, float],
    ) -> None:
        p = batch[0].params
        rows = [
            RowText(
                self.backend.tokenizer_for(mode),
                eos_token_ids=self.backend.eos_token_ids(mode),
                stop=h.params.stop,
                max_new_tokens=_max_new(h),
                cancelled=h.cancelled,
            )
            for h in batch
        ]

        def finish(i: int, stages: dict[str, float] | None, n_prompt: int | None = None) -> None:
            h, row = batch[i], rows[i]
            if h.abort_error is not None:
                h.emit(h.abort_error)
                return
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
        batch_max = max(_max_new(h) for h in batch)
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
                row.finish("length" if len(seq) >= _max_new(h) else "stop")
            finish(i, stages, out.prompt_tokens[i] if i < len(out.prompt_tokens) else None)

    def _run_t2t(self, batch: list[RequestHandle]) -> None:
        """Text-to-text: the sharer writes a note per request, then the receiver answers with it."""
        p = batch[0].params
        t0 = time.perf_counter()
        note_out = self.backend.generate(
            [self.backend.t2t_note_prompt(h.prompt) for h in batch],
            mode="sharer",
            max_new_tokens=self.limits.note_max_tokens,
            do_sample=p.do_sample,
            temperature=p.temperature,
            top_p=p.top_p,
            stopping=StoppingCriteriaList([CancelStopping([h.cancelled for h in batch])]),
        )
        note_s = time.perf_counter() - t0
        live, prompts = [], []
        for h, note in zip(batch, note_out.texts):
            if h.cancelled.is_set():  # gone while its note was written: no answer to compute
                self._drop(h)
                continue
            # The admission reserved note_max_tokens receiver tokens for the note; hold the note to them.
            reserved = h.cost.segments[-1].tokens
            prompt, note, h.prompt_tokens = self.backend.t2t_answer_prompt(h.prompt, note.strip(), reserved)
            h.emit(NoteEvent(note))
            live.append(h)
            prompts.append(prompt)
        if live:
            self._run(live, "receiver", prompts, {"sharer_note": note_s})


def _max_new(h: RequestHandle) -> int:
    n = h.params.max_new_tokens
    assert n is not None, "admission fixes max_new_tokens"
    return n
