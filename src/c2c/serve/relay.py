"""From an engine's request handles to an HTTP request: their events merged as they come, one answer
collected whole, the requests cancelled when the client goes away, usage summed, and the server-sent
events of a stream (a stream that cannot finish ends with an error event, never a cut connection)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from c2c.serve.protocol import ErrorDetail, ErrorResponse, Usage
from c2c.serve.schema import DoneEvent, ErrorEvent, Event, Handle, NoteEvent, TextEvent


def sse(payload: str) -> str:
    """One server-sent event."""
    return f"data: {payload}\n\n"


def error_chunk(ev: ErrorEvent) -> str:
    """The event that ends a stream which cannot finish."""
    return sse(ErrorResponse(error=ErrorDetail(message=ev.message, type=ev.type, code=ev.code)).model_dump_json())


def streaming(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


async def collect(handle: Handle, request: Request) -> tuple[DoneEvent | ErrorEvent, str, str | None]:
    """Wait for one request's answer: (final event, text, T2T note)."""
    parts: list[str] = []
    note: str | None = None
    async with contextlib.aclosing(merged([handle], request)) as events:
        async for _, ev in events:
            if isinstance(ev, TextEvent):
                parts.append(ev.text)
            elif isinstance(ev, NoteEvent):
                note = ev.text
            elif isinstance(ev, (DoneEvent, ErrorEvent)):
                return ev, "".join(parts), note
    return ErrorEvent("generation ended without a result", code="no_result"), "".join(parts), note


async def merged(handles: list[Handle], request: Request) -> AsyncGenerator[tuple[int, Event], None]:
    """Events of several requests as they come, tagged with the request's index. The requests are
    cancelled when the client goes away or the consumer stops early (a stream's connection closed)."""
    watcher = asyncio.create_task(cancel_on_disconnect(request, handles))
    out: asyncio.Queue[tuple[int, Event] | None] = asyncio.Queue()

    async def pump(i: int, h: Handle) -> None:
        try:
            async for ev in h.events():
                await out.put((i, ev))
        finally:
            await out.put(None)

    pumps = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
    try:
        open_ = len(handles)
        while open_:
            item = await out.get()
            if item is None:
                open_ -= 1
                continue
            yield item
    finally:
        watcher.cancel()
        for p in pumps:
            p.cancel()
        for h in handles:
            h.cancel()  # no-op when finished; stops the generation if the consumer left


async def cancel_on_disconnect(request: Request, handles: list[Handle], interval: float = 0.1) -> None:
    """Cancel ``handles`` as soon as the client goes away (checked while they wait or stream)."""
    try:
        while not all(h.finished for h in handles):
            if await request.is_disconnected():
                for h in handles:
                    h.cancel()
                return
            await asyncio.sleep(interval)
    except asyncio.CancelledError:
        pass


def total_usage(dones: list[DoneEvent]) -> Usage:
    p = sum(d.prompt_tokens for d in dones)
    c = sum(d.completion_tokens for d in dones)
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)
