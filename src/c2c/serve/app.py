"""FastAPI app: OpenAI-compatible chat completions over an :class:`~c2c.serve.engine.Engine`, plus the page.

Routes: ``POST /v1/chat/completions`` (streaming or not), ``GET /v1/models[/{id}]``, ``GET /health``, and
the comparison page at ``/`` (static files under ``/static``). With an API key set, every ``/v1`` route
needs ``Authorization: Bearer <key>``; ``/health`` and the page's static files stay open (a browser cannot
send a bearer header when it loads a page; the page asks for the key and sends it with each API call).

Every error has the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``: malformed JSON 400,
unknown or invalid fields 422, unsupported features and over-limit ``max_tokens`` 400, a too-long prompt or
body 413, a full queue 503 (with ``Retry-After``), a bad key 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from c2c.serve.engine import DoneEvent, Engine, ErrorEvent, NoteEvent, RequestError, RequestHandle, TextEvent
from c2c.serve.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ErrorDetail,
    ErrorResponse,
    ModelCard,
    ModelList,
    ResponseMessage,
    Timings,
    Usage,
    completion_id,
    now,
    unsupported_features,
)

log = logging.getLogger("c2c.serve")

STATIC_DIR = resources.files("c2c.serve") / "static"


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(message=message, type=type, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _from_request_error(e: RequestError) -> JSONResponse:
    headers = {"Retry-After": "1"} if e.status in (429, 503) else None
    return error_response(e.status, e.message, type=e.type, param=e.param, code=e.code, headers=headers)


def create_app(engine: Engine, *, api_key: str | None = None, manage_engine: bool = True) -> FastAPI:
    """The server app around ``engine``.

    ``manage_engine``: start the engine on app startup and close it on shutdown (the default; pass False
    when the caller owns the engine's lifecycle, e.g. several apps over one engine in tests).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_engine:
            engine.start()
        try:
            yield
        finally:
            if manage_engine:
                await asyncio.to_thread(engine.close)

    app = FastAPI(title="c2c", version="0.1.0", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.engine = engine
    backend = engine.backend
    created = now()

    # -- errors -----------------------------------------------------------------------------------------

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "the request body is not valid JSON", code="invalid_json")
        first = errors[0] if errors else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        if first.get("type") == "extra_forbidden":
            msg = f"unknown field {param!r}; see GET /docs for the accepted fields"
            code = "unknown_field"
        else:
            msg = f"invalid value for {param or 'body'}: {first.get('msg', 'validation error')}"
            code = "invalid_value"
        if len(errors) > 1:
            msg += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return error_response(422, msg, param=param, code=code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(exc.status_code, str(exc.detail), type=type_, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return _from_request_error(exc)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, f"internal error: {type(exc).__name__}", type="server_error")

    app.add_middleware(BodyLimit, max_bytes=engine.limits.max_body_bytes)

    # -- auth -------------------------------------------------------------------------------------------

    async def require_key(request: Request) -> None:
        if api_key is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise StarletteHTTPException(
                401,
                "missing or incorrect API key: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    # -- routes -----------------------------------------------------------------------------------------

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": backend.model_id, "engine": getattr(engine, "name", "builtin"),
                "active": engine.active, "queued": engine.queued}

    def card() -> ModelCard:
        return ModelCard(
            id=backend.model_id,
            created=created,
            receiver=backend.receiver_name,
            sharers=list(backend.sharer_names),
            modes=list(backend.modes),
        )

    @app.get("/v1/models", dependencies=[Depends(require_key)])
    async def list_models() -> ModelList:
        return ModelList(data=[card()])

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(require_key)])
    async def get_model(model_id: str) -> ModelCard:
        if model_id != backend.model_id:
            raise StarletteHTTPException(404, f"model {model_id!r} not found; this server serves {backend.model_id!r}")
        return card()

    @app.post("/v1/chat/completions", dependencies=[Depends(require_key)], response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        if body.model not in (None, "", backend.model_id):
            return error_response(
                404,
                f"model {body.model!r} not found; this server serves {backend.model_id!r}",
                param="model",
                code="model_not_found",
            )
        bad = unsupported_features(body)
        if bad:
            return error_response(400, f"not supported by this server: {', '.join(bad)}", code="unsupported")
        params = engine.make_params(
            mode=body.mode,
            max_tokens=body.requested_max_tokens(),
            temperature=body.temperature,
            top_p=body.top_p,
            stop=body.stop_list(),
            seed=body.seed,
        )
        handle = engine.submit(body.plain_messages(), params)
        cid = completion_id()
        if body.stream:
            return StreamingResponse(
                _stream(handle, request, cid, body),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await _complete(handle, request, cid, body)

    async def _complete(handle: RequestHandle, request: Request, cid: str, body: ChatCompletionRequest) -> Response:
        watcher = asyncio.create_task(_cancel_on_disconnect(request, handle))
        parts: list[str] = []
        note: str | None = None
        try:
            async for ev in handle.events():
                if isinstance(ev, TextEvent):
                    parts.append(ev.text)
                elif isinstance(ev, NoteEvent):
                    note = ev.text
                elif isinstance(ev, ErrorEvent):
                    return error_response(500, ev.message, type="server_error")
                elif isinstance(ev, DoneEvent):
                    return JSONResponse(
                        ChatCompletion(
                            id=cid,
                            created=now(),
                            model=backend.model_id,
                            choices=[
                                Choice(
                                    message=ResponseMessage(content="".join(parts)),
                                    finish_reason=ev.finish_reason,  # type: ignore[arg-type]
                                )
                            ],
                            usage=_usage(ev),
                            mode=body.mode,
                            timings=Timings(**ev.timings),
                            note=note,
                        ).model_dump(exclude_none=True)
                    )
        finally:
            watcher.cancel()
            handle.cancel()  # no-op when finished; stops the generation if this handler was cancelled
        return error_response(500, "generation ended without a result", type="server_error")

    async def _stream(
        handle: RequestHandle, request: Request, cid: str, body: ChatCompletionRequest
    ) -> AsyncIterator[str]:
        watcher = asyncio.create_task(_cancel_on_disconnect(request, handle))
        created_at = now()

        def chunk(delta: Delta, **extra: Any) -> str:
            finish = extra.pop("finish_reason", None)
            c = ChatCompletionChunk(
                id=cid,
                created=created_at,
                model=backend.model_id,
                choices=[ChunkChoice(delta=delta, finish_reason=finish)],
                mode=body.mode,
                **extra,
            )
            return f"data: {c.model_dump_json(exclude_none=True)}\n\n"

        try:
            yield chunk(Delta(role="assistant", content=""))
            async for ev in handle.events():
                if isinstance(ev, TextEvent):
                    yield chunk(Delta(content=ev.text))
                elif isinstance(ev, NoteEvent):
                    yield chunk(Delta(), note=ev.text)
                elif isinstance(ev, ErrorEvent):
                    err = ErrorResponse(error=ErrorDetail(message=ev.message, type="server_error"))
                    yield f"data: {err.model_dump_json()}\n\n"
                    break
                elif isinstance(ev, DoneEvent):
                    yield chunk(Delta(), finish_reason=ev.finish_reason, usage=_usage(ev), timings=Timings(**ev.timings))
            yield "data: [DONE]\n\n"
        finally:
            watcher.cancel()
            handle.cancel()

    # -- page -------------------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(STATIC_DIR / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    return app


class BodyLimit:
    """Pure ASGI middleware refusing bodies over ``max_bytes`` (declared or streamed) with a 413.

    Not a ``BaseHTTPMiddleware``: that wrapper hides client disconnects from the endpoints.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, int(declared))
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise StarletteHTTPException(413, f"request body exceeds the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, size: int) -> None:
        response = error_response(
            413, f"request body of {size} bytes exceeds the limit of {self.max_bytes}", code="body_too_large"
        )
        await response(scope, receive, send)


def _usage(ev: DoneEvent) -> Usage:
    return Usage(
        prompt_tokens=ev.prompt_tokens,
        completion_tokens=ev.completion_tokens,
        total_tokens=ev.prompt_tokens + ev.completion_tokens,
    )


async def _cancel_on_disconnect(request: Request, handle: RequestHandle, interval: float = 0.1) -> None:
    """Cancel ``handle`` as soon as the client goes away (checked while the request waits or streams)."""
    try:
        while not handle.finished:
            if await request.is_disconnected():
                handle.cancel()
                return
            await asyncio.sleep(interval)
    except asyncio.CancelledError:
        pass


__all__ = ["create_app", "error_response", "STATIC_DIR"]
