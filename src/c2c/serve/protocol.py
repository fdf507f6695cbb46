"""OpenAI-compatible wire format of the server (the subset of the Chat Completions and Completions APIs that
c2c serves).

Requests are strict: a field the server does not know is a 422, not silently ignored, so a typo in a
sampling parameter never goes unnoticed; numbers and booleans must have their JSON type (``"8"`` is not a
``max_tokens``) and every bound is checked (``seed`` in [0, 2**63 - 1], ``temperature`` in [0, 2] ...).
A string that is not valid Unicode (a lone surrogate such as ``"\\ud800"``) is a 400. Fields the OpenAI API
defines but c2c cannot honour (tools, logprobs, ``n > 1`` ...) are rejected with a 400 that says so (see
:func:`unsupported_features`).

Extensions, all optional:

- request ``mode``: ``"c2c"`` (default), ``"receiver"``, ``"sharer"`` or ``"t2t"``
  (the OpenAI client sends it with ``extra_body={"mode": "t2t"}``);
- response / final chunk ``timings``: seconds per stage (:class:`Timings`);
- response / chunk ``note``: in ``t2t`` mode, the background note the sharer wrote for the receiver.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, StrictInt, field_validator, model_validator
from pydantic_core import PydanticCustomError

from c2c.serve.schema import MAX_SEED

Mode = Literal["c2c", "receiver", "sharer", "t2t"]
MODES: tuple[str, ...] = ("c2c", "receiver", "sharer", "t2t")
FinishReason = Literal["stop", "length", "cancelled"]
StrictFloat = Annotated[float, Strict()]  # accepts JSON integers too, never strings or booleans
MAX_STOP_CHARS = 256


def _check_unicode(value: Any, where: str = "body") -> None:
    """Raise for a string that cannot be encoded as UTF-8 (lone surrogates from ``\\ud800`` escapes)."""
    stack = [(value, where)]
    while stack:
        v, at = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise PydanticCustomError(
                    "invalid_unicode",
                    "{where} holds a lone surrogate (character {index}), which is not valid Unicode; send UTF-8 "
                    "text (a character outside the basic plane is one \\uXXXX\\uXXXX surrogate pair)",
                    {"where": at, "index": exc.start},
                ) from None
        elif isinstance(v, dict):
            stack.extend((x, f"{at}.{k}") for k, x in v.items())
            stack.extend((k, f"{at} key") for k in v if isinstance(k, str))
        elif isinstance(v, list):
            stack.extend((x, f"{at}[{i}]") for i, x in enumerate(v))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: StrictBool = False


class _Request(_Strict):
    """Fields shared by both endpoints."""

    model: str | None = None
    mode: Mode = "c2c"
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: StrictFloat | None = Field(default=None, ge=0.0, le=2.0)
    top_p: StrictFloat | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: StrictInt | None = Field(default=None, ge=0, le=MAX_SEED)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: StrictInt | None = Field(default=None, ge=1)
    user: str | None = None
    # Accepted so that stock clients work; anything but their neutral value is refused in the handler.
    presence_penalty: StrictFloat | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: StrictFloat | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, StrictFloat] | None = None

    @model_validator(mode="before")
    @classmethod
    def _unicode(cls, data: Any) -> Any:
        _check_unicode(data)
        return data

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop sequence may have at most {MAX_STOP_CHARS} characters")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


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


class ChatCompletionRequest(_Request):
    """``POST /v1/chat/completions`` body."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(default=None, ge=0)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def plain_messages(self) -> list[dict[str, str]]:
        """Messages as ``{"role", "content"}`` dicts; ``developer`` is the newer name of ``system``."""
        out = []
        for m in self.messages:
            role = "system" if m.role == "developer" else m.role
            out.append({"role": role, "content": m.text()})
        return out


class CompletionRequest(_Request):
    """``POST /v1/completions`` body: plain-text prompts (one choice per prompt, in order)."""

    prompt: str | list[str]
    echo: StrictBool | None = None
    suffix: str | None = None
    best_of: StrictInt | None = Field(default=None, ge=1)
    logprobs: StrictInt | None = Field(default=None, ge=0)

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt(cls, v: Any) -> Any:
        if isinstance(v, list) and v and all(isinstance(x, (int, list)) for x in v):
            raise PydanticCustomError(
                "prompt_type", "token-id prompts are not served; send the prompt as a string (or a list of strings)"
            )
        if isinstance(v, list) and not v:
            raise PydanticCustomError("prompt_type", "the prompt list is empty; send at least one string")
        return v

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


def _common_unsupported(req: _Request) -> list[str]:
    bad = []
    if req.n not in (None, 1):
        bad.append("n > 1")
    if req.presence_penalty not in (None, 0.0):
        bad.append("presence_penalty")
    if req.frequency_penalty not in (None, 0.0):
        bad.append("frequency_penalty")
    if req.logit_bias:
        bad.append("logit_bias")
    return bad


def unsupported_features(req: ChatCompletionRequest | CompletionRequest) -> list[str]:
    """Names of requested OpenAI features this server cannot honour (each becomes a 400)."""
    bad = _common_unsupported(req)
    if isinstance(req, ChatCompletionRequest):
        if req.logprobs or req.top_logprobs:
            bad.append("logprobs")
        if req.tools:
            bad.append("tools")
        if req.tool_choice not in (None, "none"):
            bad.append("tool_choice")
        if req.response_format not in (None, {"type": "text"}):
            bad.append("response_format")
    else:
        if req.echo:
            bad.append("echo")
        if req.suffix:
            bad.append("suffix")
        if req.best_of not in (None, 1):
            bad.append("best_of > 1")
        if req.logprobs:
            bad.append("logprobs")
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


class CompletionChoice(BaseModel):
    """One prompt's answer; ``note`` / ``timings`` are this prompt's (T2T note, seconds per stage)."""

    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None = None
    note: str | None = None
    timings: Timings | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    mode: Mode
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "c2c"
    receiver: str
    sharers: list[str]
    modes: list[str] = Field(default_factory=lambda: list(MODES))
    prompt_format: Literal["chat", "text"] = "chat"
    """How the fuser was trained to read prompts; a "text" fuser answers plain text (``/v1/completions``)."""
    endpoints: list[str] = Field(default_factory=list)
    """The generation routes this model serves (chat is absent when chat requests are refused)."""
    chat_refusal: str | None = None
    context_length: int | None = None


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


def completion_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())
