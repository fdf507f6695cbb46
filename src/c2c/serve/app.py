"""FastAPI app: OpenAI-compatible chat completions and completions over a
:class:`~c2c.serve.schema.ServingEngine`, plus the comparison page.

Routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (streaming or not), ``GET /v1/models[/{id}]``,
``GET /health``, the comparison page at ``/`` (static files under ``/static``) and the API docs at ``/docs``
(``/openapi.json``). Every GET route answers HEAD too. With an API key set, every route but ``/health``, the
page and its static files needs ``Authorization: Bearer <key>``, checked before the body is read (a browser
cannot send a bearer header when it loads a page; the page asks for the key and sends it with each call).

Every error has the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``: a bad key 401,
malformed JSON or text that is not valid Unicode 400, unknown or invalid fields 422, unsupported features,
a chat request to a plain-text fuser and over-limit ``max_tokens`` 400, a too-long prompt or body 413, a
full queue or a shutting-down server 503 (with ``Retry-After``). A stream that cannot finish (shutdown,
generation failure) ends with an ``{"error": ...}`` event and ``[DONE]``, never a cut connection.

:class:`GracefulServer` (what ``c2c serve`` runs) ends every open request with such an error on SIGINT /
SIGTERM before uvicorn waits for the connections to close.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from importlib import resources
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from c2c.serve.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionRequest,
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
from c2c.serve.schema import (
    DoneEvent,
    ErrorEvent,
    Event,
    Handle,
    NoteEvent,
    Prompt,
    RequestError,
    ServingEngine,
    TextEvent,
)

log = logging.getLogger("c2c.serve")

STATIC_DIR = resources.files("c2c.serve") / "static"
CHAT_ROUTE = "/v1/chat/completions"
COMPLETIONS_ROUTE = "/v1/completions"
OPEN_PATHS = ("/health", "/", "/favicon.ico")
"""Paths served without the API key (plus everything under ``/static/``)."""


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
    if status in (429, 503):
        headers = {"Retry-After": "1", **(headers or {})}
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _from_request_error(e: RequestError) -> JSONResponse:
    return error_response(e.status, e.message, type=e.type, param=e.param, code=e.code)


def _from_error_event(ev: ErrorEvent) -> JSONResponse:
    return error_response(ev.status, ev.message, type=ev.type, code=ev.code)


def _sse(payload: str) -> str:
    return f"data: {payload}\n\n"


def _error_chunk(ev: ErrorEvent) -> str:
    return _sse(ErrorResponse(error=ErrorDetail(message=ev.message, type=ev.type, code=ev.code)).model_dump_json())


def create_app(engine: ServingEngine, *, api_key: str | None = None, manage_engine: bool = True) -> FastAPI:
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
    info = engine.info
    created = now()

    # -- errors -----------------------------------------------------------------------------------------

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "the request body is not valid JSON", code="invalid_json")
        unicode = next((e for e in errors if e.get("type") == "invalid_unicode"), None)
        if unicode is not None:
            return error_response(400, str(unicode.get("msg")), code="invalid_unicode")
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
        if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI could not parse the body
            cause = exc.__cause__
            why = (
                "it is not valid UTF-8"
                if isinstance(cause, UnicodeDecodeError)
                else "it is nested too deeply"
                if isinstance(cause, RecursionError)
                else f"{type(cause).__name__}: {cause}"
            )
            msg = f"the request body is not valid JSON: {why}; send UTF-8 JSON"
            return error_response(400, msg, code="invalid_json")
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(exc.status_code, str(exc.detail), type=type_, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return _from_request_error(exc)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, f"internal error: {type(exc).__name__}", type="server_error")

    # Outermost last: the key is checked before the body is read (or its size is).
    app.add_middleware(BodyLimit, max_bytes=engine.limits.max_body_bytes)
    if api_key is not None:
        app.add_middleware(ApiKeyGuard, api_key=api_key)

    # -- routes -----------------------------------------------------------------------------------------

    def get(path: str, **kwargs: Any) -> Any:
        """GET route that answers HEAD too (same handler and headers; the server sends no body)."""

        def register(fn: Any) -> Any:
            app.head(path, **{**kwargs, "include_in_schema": False})(fn)
            return app.get(path, **kwargs)(fn)

        return register

    @get("/health")
    async def health() -> JSONResponse:
        h = engine.health()
        return JSONResponse(h, status_code=200 if h.get("status") == "ok" else 503)

    def card() -> ModelCard:
        return ModelCard(
            id=info.model_id,
            created=created,
            receiver=info.receiver_name,
            sharers=list(info.sharer_names),
            modes=list(info.modes),
            prompt_format=info.prompt_format,
            endpoints=([CHAT_ROUTE] if info.chat_refusal is None else []) + [COMPLETIONS_ROUTE],
            chat_refusal=info.chat_refusal,
            context_length=info.context_length,
        )

    @get("/v1/models")
    async def list_models() -> ModelList:
        return ModelList(data=[card()])

    @get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> ModelCard:
        if model_id != info.model_id:
            raise StarletteHTTPException(404, f"model {model_id!r} not found; this server serves {info.model_id!r}")
        return card()

    async def _admit(body: ChatCompletionRequest | CompletionRequest, prompts: list[Prompt]) -> list[Handle] | Response:
        if body.model not in (None, "", info.model_id):
            return error_response(
                404,
                f"model {body.model!r} not found; this server serves {info.model_id!r}",
                param="model",
                code="model_not_found",
            )
        bad = unsupported_features(body)
        if bad:
            return error_response(400, f"not supported by this server: {', '.join(bad)}", code="unsupported")
        if len(prompts) > engine.limits.max_batch_size:
            return error_response(
                400,
                f"{len(prompts)} prompts in one request; this server takes at most {engine.limits.max_batch_size}",
                param="prompt",
                code="too_many_prompts",
            )
        params = engine.make_params(
            mode=body.mode,
            max_tokens=body.requested_max_tokens(),
            temperature=body.temperature,
            top_p=body.top_p,
            stop=body.stop_list(),
            seed=body.seed,
        )
        return list(await engine.asubmit(prompts, params))

    @app.post(CHAT_ROUTE, response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        if info.chat_refusal is not None:
            return error_response(400, info.chat_refusal, param="messages", code="chat_not_supported")
        handles = await _admit(body, [body.plain_messages()])
        if isinstance(handles, Response):
            return handles
        handle = handles[0]
        cid = completion_id()
        if body.stream:
            return _streaming(_chat_stream(handle, request, cid, body))
        done, parts, note = await _collect(handle, request)
        if isinstance(done, ErrorEvent):
            return _from_error_event(done)
        return JSONResponse(
            ChatCompletion(
                id=cid,
                created=now(),
                model=info.model_id,
                choices=[
                    Choice(message=ResponseMessage(content=parts), finish_reason=done.finish_reason)  # type: ignore[arg-type]
                ],
                usage=_usage([done]),
                mode=body.mode,
                timings=Timings.model_validate(done.timings),
                note=note,
            ).model_dump(exclude_none=True)
        )

    async def _chat_stream(
        handle: Handle, request: Request, cid: str, body: ChatCompletionRequest
    ) -> AsyncIterator[str]:
        created_at = now()

        def chunk(delta: Delta, **extra: Any) -> str:
            finish = extra.pop("finish_reason", None)
            c = ChatCompletionChunk(
                id=cid,
                created=created_at,
                model=info.model_id,
                choices=[ChunkChoice(delta=delta, finish_reason=finish)],
                mode=body.mode,
                **extra,
            )
            return _sse(c.model_dump_json(exclude_none=True))

        yield chunk(Delta(role="assistant", content=""))
        async with contextlib.aclosing(_merged([handle], request)) as events:
            async for _, ev in events:
                if isinstance(ev, TextEvent):
                    yield chunk(Delta(content=ev.text))
                elif isinstance(ev, NoteEvent):
                    yield chunk(Delta(), note=ev.text)
                elif isinstance(ev, ErrorEvent):
                    yield _error_chunk(ev)
                    break
                elif isinstance(ev, DoneEvent):
                    timings = Timings.model_validate(ev.timings)
                    yield chunk(Delta(), finish_reason=ev.finish_reason, usage=_usage([ev]), timings=timings)
        yield _sse("[DONE]")

    @app.post(COMPLETIONS_ROUTE, response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        prompts: list[Prompt] = list(body.prompts())
        handles = await _admit(body, prompts)
        if isinstance(handles, Response):
            return handles
        cid = completion_id("cmpl")
        if body.stream:
            return _streaming(_completion_stream(handles, request, cid, body))
        results = await asyncio.gather(*(_collect(h, request) for h in handles))
        for done, _, _ in results:
            if isinstance(done, ErrorEvent):
                for h in handles:
                    h.cancel()
                return _from_error_event(done)
        dones = [d for d, _, _ in results if isinstance(d, DoneEvent)]
        return JSONResponse(
            Completion(
                id=cid,
                created=now(),
                model=info.model_id,
                choices=[
                    CompletionChoice(
                        index=i,
                        text=text,
                        finish_reason=done.finish_reason,  # type: ignore[arg-type]
                        note=note,
                        timings=Timings.model_validate(done.timings),
                    )
                    for i, (done, text, note) in enumerate(results)
                    if isinstance(done, DoneEvent)
                ],
                usage=_usage(dones),
                mode=body.mode,
            ).model_dump(exclude_none=True)
        )

    async def _completion_stream(
        handles: list[Handle], request: Request, cid: str, body: CompletionRequest
    ) -> AsyncIterator[str]:
        created_at = now()
        dones: list[DoneEvent] = []

        def chunk(choice: CompletionChoice, usage: Usage | None = None) -> str:
            c = Completion(
                id=cid, created=created_at, model=info.model_id, choices=[choice], mode=body.mode, usage=usage
            )
            return _sse(c.model_dump_json(exclude_none=True))

        async with contextlib.aclosing(_merged(handles, request)) as events:
            async for i, ev in events:
                if isinstance(ev, TextEvent):
                    yield chunk(CompletionChoice(index=i, text=ev.text))
                elif isinstance(ev, NoteEvent):
                    yield chunk(CompletionChoice(index=i, text="", note=ev.text))
                elif isinstance(ev, ErrorEvent):
                    yield _error_chunk(ev)
                    break
                elif isinstance(ev, DoneEvent):
                    dones.append(ev)
                    last = len(dones) == len(handles)
                    choice = CompletionChoice(
                        index=i,
                        text="",
                        finish_reason=ev.finish_reason,  # type: ignore[arg-type]
                        timings=Timings.model_validate(ev.timings),
                    )
                    yield chunk(choice, usage=_usage(dones) if last else None)
        yield _sse("[DONE]")

    # -- page -------------------------------------------------------------------------------------------

    @get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(STATIC_DIR / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    return app


def _streaming(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


async def _collect(handle: Handle, request: Request) -> tuple[DoneEvent | ErrorEvent, str, str | None]:
    """Wait for one request's answer: (final event, text, T2T note)."""
    parts: list[str] = []
    note: str | None = None
    async with contextlib.aclosing(_merged([handle], request)) as events:
        async for _, ev in events:
            if isinstance(ev, TextEvent):
                parts.append(ev.text)
            elif isinstance(ev, NoteEvent):
                note = ev.text
            elif isinstance(ev, (DoneEvent, ErrorEvent)):
                return ev, "".join(parts), note
    return ErrorEvent("generation ended without a result", code="no_result"), "".join(parts), note


async def _merged(handles: list[Handle], request: Request) -> AsyncGenerator[tuple[int, Event], None]:
    """Events of several requests as they come, tagged with the request's index. The requests are
    cancelled when the client goes away or the consumer stops early (a stream's connection closed)."""
    watcher = asyncio.create_task(_cancel_on_disconnect(request, handles))
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


async def _cancel_on_disconnect(request: Request, handles: list[Handle], interval: float = 0.1) -> None:
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


def _usage(dones: list[DoneEvent]) -> Usage:
    p = sum(d.prompt_tokens for d in dones)
    c = sum(d.completion_tokens for d in dones)
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)


class ApiKeyGuard:
    """Pure ASGI middleware: every path but :data:`OPEN_PATHS` and ``/static/`` needs the bearer key.

    It answers 401 before the app reads the body, so an unauthenticated client learns nothing about the
    API (not even whether its JSON parses) and ``/docs`` / ``/openapi.json`` are guarded too.
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._open(scope["path"]):
            await self.app(scope, receive, send)
            return
        auth = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
            response = error_response(
                401,
                "missing or incorrect API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _open(path: str) -> bool:
        return path in OPEN_PATHS or path.startswith("/static/")


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


class GracefulServer(uvicorn.Server):
    """uvicorn's server, which on SIGINT / SIGTERM first ends every open request of ``engine`` with an
    error event (streams get ``{"error": ...}`` and ``[DONE]``), then shuts down as uvicorn does (stop
    accepting, wait for the now-finishing connections, lifespan shutdown)."""

    def __init__(self, config: uvicorn.Config, engine: ServingEngine) -> None:
        super().__init__(config)
        self.engine = engine
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # From a signal handler (or another thread): hand the work to the loop, never block here.
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self.engine.begin_shutdown)
        super().handle_exit(sig, frame)


def run_server(app: FastAPI, engine: ServingEngine, **config: Any) -> None:
    """Run ``app`` with :class:`GracefulServer` (``config``: ``uvicorn.Config`` keywords). Returns after a
    graceful shutdown on SIGINT / SIGTERM (uvicorn re-raises the signal after shutting down; a SIGINT is
    then a ``KeyboardInterrupt``, swallowed here as ``uvicorn.run`` does)."""
    with contextlib.suppress(KeyboardInterrupt):
        GracefulServer(uvicorn.Config(app, **config), engine).run()


__all__ = ["STATIC_DIR", "GracefulServer", "create_app", "error_response", "run_server"]
