"""The vLLM engine: c2c fuses, vLLM decodes (with its paged KV cache and continuous batching).

:class:`VLLMEngine` is an :class:`~c2c.serve.engine.Engine` (same admission, limits, queue, request handles
and events, so the OpenAI app, the page and the terminal chat work unchanged) whose work is done elsewhere:

- a C2C request is fused in this process (receiver prefill, sharer prefill, fusion, batched over the
  requests that wait together), its fused rows of the prompt minus its last token are handed to the
  receiver's vLLM server through shared memory and C2C's KV connector, and vLLM computes the last prompt
  token on them and decodes;
- receiver and sharer requests go to the receiver's / sharer's vLLM server directly; T2T asks the sharer's
  server for the note, then the receiver's for the answer.

Up to ``limits.max_batch_size`` requests are in flight at once (vLLM batches them continuously); the rest
wait in the queue. Tokens stream back as ids and are detokenized here, with the same stop-string and
end-of-sequence logic as the built-in engine. A request that cannot get its fused rows fails; it is never
answered without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from c2c.inputs import normalise
from c2c.serve.backend import chat_ids, text_ids
from c2c.serve.engine import DoneEvent, Engine, ErrorEvent, NoteEvent, RequestHandle, ServeLimits, TextEvent
from c2c.serve.schema import is_text
from c2c.serve.streaming import RowText
from c2c.serve.vllm.client import Chunk, CompletionRequest, VLLMClient, VLLMError
from c2c.serve.vllm.handover import Handover, HandoverStore
from c2c.serve.vllm.prefill import check_receiver, fused_prefixes
from c2c.serve.vllm.server import VLLMServer

log = logging.getLogger("c2c.serve")

T = TypeVar("T")

_STAGES = ("sharer_prefill", "fusion", "receiver_prefill")


@dataclass
class Prepared:
    """A request ready for vLLM: its prompt ids, the fused rows' hand-over (C2C only) and stage timings."""

    prompt_ids: list[int]
    handover: Handover | None = None
    timings: dict[str, float] = field(default_factory=dict)
    batch_size: int = 1


class VLLMEngine(Engine):
    """Engine whose receiver (and sharer) decode in vLLM servers; see the module docstring.

    ``backend`` is the :class:`~c2c.serve.backend.C2CBackend` of the loaded fuser (its HF models run the
    fusion; its tokenizers count, render and detokenize). ``receiver`` is the client of a vLLM server that
    loaded C2C's KV connector; ``sharer`` (optional) of a plain vLLM server with the sharer model. The engine
    stops ``servers`` (the ones it was given to own) when it closes.
    """

    name = "vllm"

    def __init__(
        self,
        backend: Any,
        limits: ServeLimits | None = None,
        *,
        receiver: VLLMClient,
        sharer: VLLMClient | None = None,
        handover: HandoverStore | None = None,
        servers: Sequence[VLLMServer] = (),
    ) -> None:
        check_receiver(backend.model)
        super().__init__(backend, limits)
        self.model: Any = backend.model
        if sharer is None:  # sharer-only and T2T need the sharer's own server
            self.info = dataclasses.replace(
                self.info, modes=tuple(m for m in self.info.modes if m in ("c2c", "receiver"))
            )
        self.receiver = receiver
        self.sharer = sharer
        self.handover = handover or HandoverStore()
        self.servers = list(servers)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._io: threading.Thread | None = None
        self._inflight: set[RequestHandle] = set()
        self._salt = uuid.uuid4().hex
        # Tokenization runs on the dispatcher and on helper threads; a fast tokenizer must not be used by two
        # threads at once (its Rust state is borrowed mutably while it encodes).
        self._tok_lock = threading.Lock()

    def describe(self) -> str:
        """One line for the logs: which vLLM servers decode, and where their logs are."""
        parts = [f"receiver {self.receiver.model} at {self.receiver.base_url}"]
        if self.sharer is not None:
            parts.append(f"sharer {self.sharer.model} at {self.sharer.base_url}")
        logs = ", ".join(s.log_path for s in self.servers)
        own = f"; started by c2c, logs: {logs}" if logs else "; attached (started elsewhere)"
        return f"vLLM engine: {', '.join(parts)}; hand-over via {self.handover.directory}{own}"

    def health(self) -> dict[str, Any]:
        """The built-in engine's health, the engine's name, and whether the vLLM servers it started still run."""
        out = super().health()
        out["engine"] = self.name
        dead = [s.cfg.served_name for s in self.servers if s.proc is not None and s.proc.poll() is not None]
        if dead:
            out["status"] = "unhealthy"
            out["error"] = f"vLLM server(s) {', '.join(dead)} exited; see {', '.join(s.log_path for s in self.servers)}"
        return out

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> VLLMEngine:
        if self._io is None:
            self._loop = asyncio.new_event_loop()
            self._io = threading.Thread(target=self._loop.run_forever, name="c2c-vllm-io", daemon=True)
            self._io.start()
        super().start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Fail queued requests, abort running ones, stop the threads, delete hand-overs, stop owned servers."""
        super().close(timeout)  # fails the queue, cancels in-flight handles, joins the dispatcher
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._inflight and time.monotonic() < deadline:
                self._cond.wait(0.1)
        if self._loop is not None and self._io is not None:
            loop = self._loop
            clients = [c for c in (self.receiver, self.sharer) if c is not None]
            try:
                asyncio.run_coroutine_threadsafe(_close_all(clients), loop).result(10)
            except Exception:
                log.exception("closing the vLLM clients failed")
            loop.call_soon_threadsafe(loop.stop)
            self._io.join(10)
            loop.close()
            self._loop, self._io = None, None
        self.handover.close()
        for server in self.servers:
            server.stop()

    # -- dispatch --------------------------------------------------------------------------------------------

    def _worker(self) -> None:
        try:
            self._dispatch()
        except BaseException as exc:  # never expected; keep nobody waiting all the same
            self._worker_error = f"the dispatcher stopped: {type(exc).__name__}: {exc}"
            log.exception("the vLLM engine's dispatcher stopped")
            with self._cond:
                stranded = [*self._pending, *self._inflight]
                self._pending.clear()
            for h in stranded:
                h.fail(self._worker_error, code="worker_dead")

    def _dispatch(self) -> None:
        """Takes queued requests while fewer than ``max_batch_size`` are in flight; fuses C2C ones in batches."""
        lim = self.limits
        while True:
            with self._cond:
                while not self._closing and (not self._pending or len(self._inflight) >= lim.max_batch_size):
                    self._cond.wait()
                if self._closing:
                    return
                need_window = len(self._pending) < lim.max_batch_size and lim.batch_window_s > 0
            if need_window:  # let near-simultaneous C2C requests share one fusion batch
                time.sleep(lim.batch_window_s)
            with self._cond:
                taken: list[RequestHandle] = []
                while self._pending and len(self._inflight) + len(taken) < lim.max_batch_size:
                    h = self._pending.popleft()
                    if h.cancelled.is_set():
                        self._drop(h)
                    else:
                        taken.append(h)
                self._inflight.update(taken)
                self._sync_counts()
            now = time.perf_counter()
            for h in taken:
                h.started = now
            fused = [h for h in taken if h.params.mode == "c2c"]
            for h in taken:
                if h.params.mode != "c2c":
                    self._spawn(h, self._serve_direct(h))
            for kind in (True, False):  # one fusion batch per prompt kind (plain text, conversations)
                group = [h for h in fused if is_text(h.prompt) is kind]
                if group:
                    self._fuse_and_send(group)

    def _sync_counts(self) -> None:
        self.active = len(self._inflight)
        self._running = list(self._inflight)

    def _finished(self, h: RequestHandle) -> None:
        with self._cond:
            self._inflight.discard(h)
            self.completed += 1
            self._sync_counts()
            self._cond.notify_all()

    def _spawn(self, h: RequestHandle, coro: Awaitable[None], handover: Handover | None = None) -> None:
        """Serve ``h`` on the event loop. ``handover`` is released when it ends, however it ends (even when
        it is cancelled before ``coro`` ever started)."""
        assert self._loop is not None

        async def guarded() -> None:
            try:
                await self._until_cancelled(h, coro)
            except Exception as exc:
                log.exception("request %d failed", h.id)
                if not h.finished:
                    h.emit(ErrorEvent(f"generation failed: {type(exc).__name__}: {exc}"))
            finally:
                if handover is not None:  # before the final event: a client that has its answer finds no file
                    self.handover.release(handover.path)
                if not h.finished:  # cancelled (or aborted by shutdown) before its answer ended
                    self._drop(h)
                self._finished(h)

        asyncio.run_coroutine_threadsafe(guarded(), self._loop)

    @staticmethod
    async def _until_cancelled(h: RequestHandle, coro: Awaitable[None]) -> None:
        """Run ``coro``; cancel it (closing its vLLM stream, which aborts the request there) once ``h`` is."""
        task = asyncio.ensure_future(coro)
        while not task.done():
            await asyncio.wait({task}, timeout=0.05)
            if h.cancelled.is_set() and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return
        task.result()

    # -- C2C: fuse here, decode in vLLM ----------------------------------------------------------------------

    def _fuse_and_send(self, handles: list[RequestHandle]) -> None:
        try:
            prepared = self.prepare([h.prompt for h in handles], "c2c")
        except Exception as exc:
            log.exception("fusion failed")
            for h in handles:
                h.emit(ErrorEvent(f"fusion failed: {type(exc).__name__}: {exc}"))
                self._finished(h)
            return
        for h, prep in zip(handles, prepared):
            if self._closing:  # shut down while fusing: nobody will stream this
                if prep.handover is not None:
                    self.handover.release(prep.handover.path)
                self._drop(h)
                self._finished(h)
                continue
            self._spawn(h, self._serve_prepared(h, prep, self.receiver, "c2c"), prep.handover)

    def prepare(self, prompts: Sequence[Any], mode: str) -> list[Prepared]:
        """Prompt ids per prompt (text, messages or ids) for ``mode``; for C2C also fuse and write the hand-overs.

        Hand-overs belong to the caller, who releases them (``handover.release``) when the request has ended.
        """
        model = self.model
        with self._tok_lock:
            if mode == "sharer":
                return [Prepared(self._sharer_ids(p)) for p in prompts]
            batch = model.encode(list(prompts))
        if mode != "c2c":
            return [Prepared(row) for row in _rows(batch)]
        prefixes, timings = fused_prefixes(model, batch)
        out: list[Prepared] = []
        try:
            for pre in prefixes:
                hand = self.handover.write_with(pre.shape, pre.dtype, pre.copy_into) if pre.length > 0 else None
                stages = {k: timings.get(k, 0.0) for k in _STAGES}
                stages["handover"] = hand.seconds if hand is not None else 0.0
                out.append(Prepared(pre.prompt_ids, hand, stages, len(prefixes)))
        except BaseException:
            for p in out:
                if p.handover is not None:
                    self.handover.release(p.handover.path)
            raise
        return out

    def _sharer_ids(self, prompt: Any) -> list[int]:
        """The sharer's own tokenization of a prompt (as ``C2CModel.generate(mode="sharer")`` reads it)."""
        tok = self.backend.tokenizer_for("sharer")
        if is_text(prompt):
            return text_ids(tok, prompt)
        norm = normalise(prompt)
        return chat_ids(tok, norm.prompts[0]) if norm.kind == "messages" else list(norm.prompts[0])

    def request_for(self, prep: Prepared, mode: str, *, max_tokens: int, temperature: float, top_p: float,
                    seed: int | None, logprobs: bool = False) -> CompletionRequest:  # fmt: skip
        """The vLLM request of a prepared prompt. A C2C request carries its hand-over and its own cache salt
        (vLLM's prefix cache must never share its fused blocks with another request)."""
        req = CompletionRequest(
            prompt_ids=prep.prompt_ids,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop_token_ids=sorted(self.backend.eos_token_ids(mode)),
            logprobs=logprobs,
        )
        if mode == "c2c":
            req.cache_salt = f"c2c-{self._salt}-{uuid.uuid4().hex}"
            if prep.handover is not None:
                req.kv_transfer_params = {"c2c": prep.handover.params}
        return req

    # -- serving one request -----------------------------------------------------------------------------------

    async def _serve_direct(self, h: RequestHandle) -> None:
        mode = h.params.mode
        if mode == "t2t":
            await self._serve_t2t(h)
            return
        prep = (await asyncio.to_thread(self.prepare, [h.prompt], mode))[0]
        client = self.sharer if mode == "sharer" else self.receiver
        assert client is not None
        await self._serve_prepared(h, prep, client, mode)

    async def _serve_t2t(self, h: RequestHandle) -> None:
        assert self.sharer is not None
        p = h.params
        t0 = time.perf_counter()
        note_prompt = self.backend.t2t_note_prompt(h.prompt)
        note_prep = (await asyncio.to_thread(self.prepare, [note_prompt], "sharer"))[0]
        note_req = self.request_for(
            note_prep, "sharer", max_tokens=self.limits.note_max_tokens, temperature=p.temperature, top_p=p.top_p,
            seed=p.seed,
        )  # fmt: skip
        row = RowText(self.backend.tokenizer_for("sharer"), eos_token_ids=self.backend.eos_token_ids("sharer"),
                      max_new_tokens=self.limits.note_max_tokens)  # fmt: skip
        async with contextlib.aclosing(self.sharer.stream(note_req)) as chunks:
            async for chunk in chunks:
                for tok in chunk.token_ids:
                    row.feed(tok)
                if row.done or chunk.finish_reason:
                    break
        row.finish("length")
        # The admission reserved note_max_tokens receiver tokens for the note; hold the note to them.
        reserved = h.cost.segments[-1].tokens
        prompt, note, h.prompt_tokens = await asyncio.to_thread(
            self.backend.t2t_answer_prompt, h.prompt, row.text.strip(), reserved
        )
        h.emit(NoteEvent(note))
        prep = (await asyncio.to_thread(self.prepare, [prompt], "receiver"))[0]
        prep.timings["sharer_note"] = time.perf_counter() - t0
        await self._serve_prepared(h, prep, self.receiver, "receiver")

    async def _serve_prepared(self, h: RequestHandle, prep: Prepared, client: VLLMClient, mode: str) -> None:
        p = h.params

        def release() -> None:
            if prep.handover is not None:
                self.handover.release(prep.handover.path)

        n_new = p.max_new_tokens
        assert n_new is not None  # fixed at admission
        try:
            req = self.request_for(prep, mode, max_tokens=n_new, temperature=p.temperature, top_p=p.top_p,
                                   seed=p.seed)  # fmt: skip
            row = RowText(self.backend.tokenizer_for(mode), eos_token_ids=self.backend.eos_token_ids(mode),
                          stop=p.stop, max_new_tokens=n_new, cancelled=h.cancelled)  # fmt: skip
            t0 = time.perf_counter()
            finish: str | None = None
            # aclosing: leaving the loop early (stop string, max_tokens, cancellation) closes the HTTP stream now,
            # and vLLM aborts the request, instead of whenever the generator is garbage-collected.
            async with contextlib.aclosing(client.stream(req)) as chunks:
                async for chunk in chunks:
                    for tok in chunk.token_ids:
                        piece = row.feed(tok)
                        if piece:
                            h.emit(TextEvent(piece))
                        if row.done:
                            break
                    if row.done:
                        break
                    if chunk.finish_reason:
                        finish = chunk.finish_reason
                        break
            if finish not in (None, "stop", "length"):
                # "error": the connector could not load the fused rows (vLLM failed the request rather than
                # computing it without them); "abort": vLLM dropped it.
                what = "the fused rows could not be loaded into vLLM" if mode == "c2c" else "vLLM failed it"
                raise VLLMError(f"request ended with finish_reason={finish!r}: {what}; see the vLLM log")
            tail = row.finish("length" if finish == "length" else "stop")
            if tail:
                h.emit(TextEvent(tail))
            timings: dict[str, float | int | None] = dict(prep.timings)
            timings["decode"] = time.perf_counter() - t0
            timings["batch_size"] = prep.batch_size
            release()  # the hand-over is gone before the request's final event goes out
            self._done(h, row.finish_reason or "stop", row.n_tokens, timings, n_prompt=len(prep.prompt_ids))
        except VLLMError as exc:
            release()
            hint = ""
            if mode == "c2c":  # vLLM answers "Internal server error"; the connector logged the reason
                hint = "; a C2C request fails when vLLM cannot load its fused rows (the reason is in the vLLM log"
                hint += f": {self.servers[0].log_path})" if self.servers else ")"
            h.emit(ErrorEvent(f"{exc}{hint}"))
        finally:
            release()

    def _done(self, h: RequestHandle, reason: str, n_tokens: int, timings: dict[str, float | int | None],
              n_prompt: int | None = None) -> None:  # fmt: skip
        now = time.perf_counter()
        t = dict(timings)
        t["queue"] = (h.started or now) - h.submitted
        t["first_token"] = None if h.first_token is None else h.first_token - h.submitted
        t["total"] = now - h.submitted
        t.setdefault("batch_size", 1)
        self.recent.append({"id": h.id, "mode": h.params.mode, "finish_reason": reason, "completion_tokens": n_tokens})
        h.emit(DoneEvent(reason, h.prompt_tokens if n_prompt is None else n_prompt, n_tokens, t))

    def warmup(self) -> None:
        """One short generation per mode (fusion, hand-over, connector, both servers), so the first client
        does not pay one-off costs."""
        prompt: Any = "Hello" if self.info.chat_refusal else [{"role": "user", "content": "Hello"}]
        for mode in ("c2c", "receiver", "sharer"):
            if mode in self.info.modes:
                self.generate_ids(prompt, mode=mode, max_tokens=2)

    # -- direct use (Python API, tests, benchmarks) --------------------------------------------------------------

    def call(self, fn: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        """Run ``fn()`` on the engine's event loop from another thread and wait for its result."""
        if self._loop is None:
            raise RuntimeError("the engine is not running; call start() first")
        return asyncio.run_coroutine_threadsafe(_invoke(fn), self._loop).result(timeout)

    def generate_ids(
        self,
        prompt: Any,
        *,
        mode: str = "c2c",
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        logprobs: bool = False,
    ) -> Chunk:
        """One generation, bypassing the queue: ``prompt`` is text, chat messages or receiver token ids (as for
        ``C2CModel.generate``). Returns the new token ids (end-of-sequence included when produced) and, with
        ``logprobs``, each one's log-probability. Thread-safe: concurrent calls batch in vLLM."""
        if mode not in ("c2c", "receiver", "sharer"):
            raise ValueError(f"mode must be 'c2c', 'receiver' or 'sharer', got {mode!r}")
        client = self.sharer if mode == "sharer" else self.receiver
        if client is None:
            raise ValueError("this engine has no sharer server; mode='sharer' is not available")
        prep = self.prepare([prompt], mode)[0]
        req = self.request_for(prep, mode, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                               logprobs=logprobs)  # fmt: skip
        try:
            return self.call(lambda: client.complete(req))
        finally:
            if prep.handover is not None:
                self.handover.release(prep.handover.path)


def _rows(batch: Any) -> list[list[int]]:
    """Each row's real (unpadded) ids of a left-padded batch."""
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch.input_ids, batch.attention_mask)]


async def _invoke(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()


async def _close_all(clients: list[VLLMClient]) -> None:
    for c in clients:
        await c.aclose()
