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

This module holds the routes; the errors are in :mod:`~c2c.serve.errors`, the key and body-size checks in
:mod:`~c2c.serve.middleware`, the path from request handles to responses and streams in
:mod:`~c2c.serve.relay`, and the server in :mod:`~c2c.serve.server` (re-exported here).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from c2c.serve.errors import error_response, from_error_event, install_error_handlers
from c2c.serve.middleware import OPEN_PATHS, ApiKeyGuard, BodyLimit
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
    ModelCard,
    ModelList,
    ResponseMessage,
    Timings,
    Usage,
    completion_id,
    now,
    unsupported_features,
)
from c2c.serve.relay import collect, error_chunk, merged, sse, streaming, total_usage
from c2c.serve.schema import (
    DoneEvent,
    ErrorEvent,
    Handle,
    NoteEvent,
    Prompt,
    ServingEngine,
    TextEvent,
)
from c2c.serve.server import GracefulServer, run_server

STATIC_DIR = resources.files("c2c.serve") / "static"
CHAT_ROUTE = "/v1/chat/completions"
COMPLETIONS_ROUTE = "/v1/completions"


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

    install_error_handlers(app)

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
            return streaming(_chat_stream(handle, request, cid, body))
        done, parts, note = await collect(handle, request)
        if isinstance(done, ErrorEvent):
            return from_error_event(done)
        return JSONResponse(
            ChatCompletion(
                id=cid,
                created=now(),
                model=info.model_id,
                choices=[
                    Choice(message=ResponseMessage(content=parts), finish_reason=done.finish_reason)  # type: ignore[arg-type]
                ],
                usage=total_usage([done]),
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
            return sse(c.model_dump_json(exclude_none=True))

        yield chunk(Delta(role="assistant", content=""))
        async with contextlib.aclosing(merged([handle], request)) as events:
            async for _, ev in events:
                if isinstance(ev, TextEvent):
                    yield chunk(Delta(content=ev.text))
                elif isinstance(ev, NoteEvent):
                    yield chunk(Delta(), note=ev.text)
                elif isinstance(ev, ErrorEvent):
                    yield error_chunk(ev)
                    break
                elif isinstance(ev, DoneEvent):
                    timings = Timings.model_validate(ev.timings)
                    yield chunk(Delta(), finish_reason=ev.finish_reason, usage=total_usage([ev]), timings=timings)
        yield sse("[DONE]")

    @app.post(COMPLETIONS_ROUTE, response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        prompts: list[Prompt] = list(body.prompts())
        handles = await _admit(body, prompts)
        if isinstance(handles, Response):
            return handles
        cid = completion_id("cmpl")
        if body.stream:
            return streaming(_completion_stream(handles, request, cid, body))
        results = await asyncio.gather(*(collect(h, request) for h in handles))
        for done, _, _ in results:
            if isinstance(done, ErrorEvent):
                for h in handles:
                    h.cancel()
                return from_error_event(done)
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
                usage=total_usage(dones),
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
            return sse(c.model_dump_json(exclude_none=True))

        async with contextlib.aclosing(merged(handles, request)) as events:
            async for i, ev in events:
                if isinstance(ev, TextEvent):
                    yield chunk(CompletionChoice(index=i, text=ev.text))
                elif isinstance(ev, NoteEvent):
                    yield chunk(CompletionChoice(index=i, text="", note=ev.text))
                elif isinstance(ev, ErrorEvent):
                    yield error_chunk(ev)
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
                    yield chunk(choice, usage=total_usage(dones) if last else None)
        yield sse("[DONE]")

    # -- page -------------------------------------------------------------------------------------------

    @get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(STATIC_DIR / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    return app


__all__ = [
    "OPEN_PATHS",
    "STATIC_DIR",
    "ApiKeyGuard",
    "BodyLimit",
    "GracefulServer",
    "create_app",
    "error_response",
    "run_server",
]
