"""OpenAI-compatible wire format of the server (the subset of the Chat Completions API that c2c serves).

Requests are strict: a field the server does not know is a 422, not silently ignored, so a typo in a
sampling parameter never goes unnoticed. Fields the OpenAI API defines but c2c cannot honour (tools,
logprobs, ``n > 1`` ...) are rejected with a 400 that says so (see :func:`unsupported_features`).

Extensions, all optional:

- request ``mode``: ``"c2c"`` (default), ``"receiver"``, ``"sharer"`` or ``"t2t"``
  (the OpenAI client sends it with ``extra_body={"mode": "t2t"}``);
- response / final chunk ``timings``: seconds per stage (:class:`Timings`);
- response / chunk ``note``: in ``t2t`` mode, the background note the sharer wrote for the receiver.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Mode = Literal["c2c", "receiver", "sharer", "t2t"]
MODES: tuple[str, ...] = ("c2c", "receiver", "sharer", "t2t")
FinishReason = Literal["stop", "length", "cancelled"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    """One part of a multi-part message content; only text parts are served."""

    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    """``POST /v1/chat/completions`` body."""

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    mode: Mode = "c2c"
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1)
    user: str | None = None
    # Accepted so that stock clients work; anything but their neutral value is refused in the handler.
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def plain_messages(self) -> list[dict[str, str]]:
        """Messages as ``{"role", "content"}`` dicts; ``developer`` is the newer name of ``system``."""
        out = []
        for m in self.messages:
            role = "system" if m.role == "developer" else m.role
            out.append({"role": role, "content": m.text()})
        return out


def unsupported_features(req: ChatCompletionRequest) -> list[str]:
    """Names of requested OpenAI features this server cannot honour (each becomes a 400)."""
    bad = []
    if req.n not in (None, 1):
        bad.append("n > 1")
    if req.presence_penalty not in (None, 0.0):
        bad.append("presence_penalty")
    if req.frequency_penalty not in (None, 0.0):
        bad.append("frequency_penalty")
    if req.logprobs or req.top_logprobs:
        bad.append("logprobs")
    if req.tools:
        bad.append("tools")
    if req.tool_choice not in (None, "none"):
        bad.append("tool_choice")
    if req.response_format not in (None, {"type": "text"}):
        bad.append("response_format")
    return bad


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Timings(BaseModel):
    """Seconds per stage of one request. Stages a mode does not run are 0.

    ``sharer_note`` is T2T's sharer decoding its note; ``handover`` (vLLM engine) is writing the fused rows
    for vLLM; ``batch_size`` is how many requests shared the
    generation call (micro-batching), whose model stage timings are then shared too. A request that
    finished before its batch-mates is answered at once, before the model reports its stage split: its
    ``sharer_prefill`` / ``fusion`` / ``receiver_prefill`` / ``decode`` are then absent (None).
    """

    queue: float = 0.0
    sharer_note: float | None = None
    sharer_prefill: float | None = None
    fusion: float | None = None
    receiver_prefill: float | None = None
    handover: float | None = None
    decode: float | None = None
    first_token: float | None = None
    total: float = 0.0
    batch_size: int = 1


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    mode: Mode
    timings: Timings
    note: str | None = None
    system_fingerprint: str | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    mode: Mode
    usage: Usage | None = None
    timings: Timings | None = None
    note: str | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "c2c"
    receiver: str
    sharers: list[str]
    modes: list[str] = Field(default_factory=lambda: list(MODES))


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())
