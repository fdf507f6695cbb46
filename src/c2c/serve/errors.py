"""The server's errors in the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``: the JSON
responses and the FastAPI exception handlers that turn validation failures,
unparsable bodies, refusals and unexpected exceptions into them."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from c2c.serve.protocol import ErrorDetail, ErrorResponse
from c2c.serve.schema import ErrorEvent, RequestError

log = logging.getLogger("c2c.serve")


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


def from_request_error(e: RequestError) -> JSONResponse:
    return error_response(e.status, e.message, type=e.type, param=e.param, code=e.code)


def from_error_event(ev: ErrorEvent) -> JSONResponse:
    return error_response(ev.status, ev.message, type=ev.type, code=ev.code)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` in the OpenAI shape: malformed JSON or text that is not valid Unicode
    400, unknown or invalid fields 422, refusals with their own status, anything unexpected 500."""

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
        return from_request_error(exc)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, f"internal error: {type(exc).__name__}", type="server_error")
