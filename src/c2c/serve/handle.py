"""One submitted request as the engine and the server see it: its event stream (an ``asyncio`` queue for the
server, a thread-safe queue for the terminal chat), its cancellation flag, and how it ends when the worker
dies (an :class:`~c2c.serve.schema.ErrorEvent` within a second, never a wait forever)."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

from c2c.serve.schema import FINAL_EVENTS, ErrorEvent, Event, Prompt, PromptCost, SamplingParams, TextEvent

__all__ = ["RequestHandle"]


class RequestHandle:
    """One submitted request: its event stream and its cancellation flag."""

    def __init__(
        self,
        rid: int,
        prompt: Prompt,
        params: SamplingParams,
        cost: PromptCost,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> None:
        self.id = rid
        self.prompt = prompt
        self.params = params
        self.cost = cost
        self.prompt_tokens = cost.tokens
        self.cancelled = threading.Event()
        self.submitted = time.perf_counter()
        self.started: float | None = None
        self.first_token: float | None = None
        self.finished = False
        self.sent_any = False  # an event went out: the request can no longer be rerun
        self.abort_error: ErrorEvent | None = None  # set by shutdown: end with this instead of Done
        self._alive = alive or (lambda: True)
        self._lock = threading.Lock()
        self._loop = loop
        self._aq: asyncio.Queue[Event] | None = asyncio.Queue() if loop is not None else None
        self._q: queue.SimpleQueue[Event] = queue.SimpleQueue()

    def cancel(self) -> None:
        """Stop this request (no-op once finished)."""
        self.cancelled.set()

    def abort(self, error: ErrorEvent) -> None:
        """End this request with ``error`` instead of an answer (shutdown)."""
        self.abort_error = error
        self.cancelled.set()

    def emit(self, event: Event) -> None:
        """Called from the worker thread; events after the final one are dropped."""
        with self._lock:
            if self.finished:
                return
            if isinstance(event, FINAL_EVENTS):
                self.finished = True
            self.sent_any = True
        if isinstance(event, TextEvent) and self.first_token is None:
            self.first_token = time.perf_counter()
        if self._loop is not None and self._aq is not None:
            try:
                self._loop.call_soon_threadsafe(self._aq.put_nowait, event)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                self.cancelled.set()
        else:
            self._q.put(event)

    def fail(self, message: str, *, status: int = 500, code: str | None = None, type: str = "server_error") -> None:
        self.emit(self.abort_error or ErrorEvent(message, status=status, type=type, code=code))

    def _dead_worker_event(self) -> ErrorEvent | None:
        if self._alive():
            return None
        self.finished = True
        return ErrorEvent("the generation worker stopped; the server must be restarted", code="worker_dead")

    async def events(self) -> AsyncIterator[Event]:
        """Events until (and including) the final Done/Error event. Submit for the same loop."""
        if self._aq is None:
            raise RuntimeError("this request was submitted outside an event loop; use iter_events()")
        while True:
            try:
                ev = await asyncio.wait_for(self._aq.get(), timeout=1.0)
            except asyncio.TimeoutError:  # a dead worker never answers: do not wait for it forever
                if self._aq.empty() and (dead := self._dead_worker_event()) is not None:
                    yield dead
                    return
                continue
            yield ev
            if isinstance(ev, FINAL_EVENTS):
                return

    def iter_events(self) -> Iterator[Event]:
        """Blocking iteration for synchronous callers (the terminal chat)."""
        if self._aq is not None:
            raise RuntimeError("this request was submitted for an event loop; use events()")
        while True:
            try:  # a short timeout keeps the wait interruptible by Ctrl-C
                ev = self._q.get(timeout=0.1)
            except queue.Empty:
                if self._q.empty() and (dead := self._dead_worker_event()) is not None:
                    yield dead
                    return
                continue
            yield ev
            if isinstance(ev, FINAL_EVENTS):
                return
