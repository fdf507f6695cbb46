"""What the serving engine exchanges: limits, sampling parameters, refusals, events, and the backend protocol.

Refusals (:class:`RequestError` and subclasses) carry the HTTP status and OpenAI error fields the server
answers with; events are what a request's stream yields (:class:`NoteEvent`, :class:`TextEvent`, then one
:class:`DoneEvent` or :class:`ErrorEvent`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Union

from transformers import StoppingCriteria

MODES: tuple[str, ...] = ("c2c", "receiver", "sharer", "t2t")


# -- limits and parameters --------------------------------------------------------------------------------


@dataclass
class ServeLimits:
    """What one server accepts. A request beyond a limit is refused before it queues."""

    max_prompt_tokens: int = 2048
    """Longest prompt (receiver tokens after the chat template); longer ones get 413."""
    max_new_tokens: int = 512
    """Largest ``max_tokens`` a request may ask for; larger ones get 400."""
    default_max_tokens: int = 256
    """``max_tokens`` of a request that does not set it (capped at ``max_new_tokens``)."""
    max_batch_size: int = 8
    """Maximum concurrent generations: requests decoded together in one batch."""
    max_queue: int = 64
    """Requests that may wait for a slot; beyond it the server answers 503."""
    batch_window_s: float = 0.01
    """How long the worker waits for batch-mates after the first request of an idle period."""
    note_max_tokens: int = 64
    """T2T: token budget of the sharer's background note."""
    max_body_bytes: int = 1_000_000
    """Largest request body; larger ones get 413."""

    def __post_init__(self) -> None:
        for name in ("max_prompt_tokens", "max_new_tokens", "default_max_tokens", "max_batch_size", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServeLimits.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings. ``temperature == 0`` means greedy."""

    mode: str = "c2c"
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    def batch_key(self) -> tuple[Any, ...] | None:
        """Requests with equal keys may share one ``generate`` call; ``None``: run alone (seeded)."""
        if self.seed is not None:
            return None
        if not self.do_sample:
            return (self.mode, "greedy")
        return (self.mode, "sample", self.temperature, self.top_p)


# -- errors that map to HTTP statuses ---------------------------------------------------------------------


class RequestError(Exception):
    """A request the engine refuses; carries the HTTP status and OpenAI error fields."""

    status: int = 400
    type: str = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class PromptTooLong(RequestError):
    status = 413


class QueueFull(RequestError):
    status = 503
    type = "server_overloaded"


class EngineClosed(RequestError):
    status = 503
    type = "server_error"


# -- events -----------------------------------------------------------------------------------------------


@dataclass
class NoteEvent:
    """T2T: the sharer's background note (sent before the answer)."""

    text: str


@dataclass
class TextEvent:
    text: str


@dataclass
class DoneEvent:
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    timings: dict[str, float | int | None]


@dataclass
class ErrorEvent:
    message: str


Event = Union[NoteEvent, TextEvent, DoneEvent, ErrorEvent]


# -- backend: what the engine needs from a model ----------------------------------------------------------


@dataclass
class BackendOutput:
    """``sequences``: new token ids per prompt, cut before the end-of-sequence token."""

    texts: list[str]
    sequences: list[list[int]]
    timings: dict[str, float]
    prompt_tokens: list[int] = field(default_factory=list)


class Backend(Protocol):
    """A model the engine can drive (implemented for ``C2CModel`` by :class:`c2c.serve.backend.C2CBackend`)."""

    model_id: str
    receiver_name: str
    sharer_names: list[str]
    modes: tuple[str, ...]
    context_length: int | None

    def count_prompt_tokens(self, messages: list[dict[str, str]], mode: str) -> int: ...

    def tokenizer_for(self, mode: str) -> Any: ...

    def eos_token_ids(self, mode: str) -> set[int]: ...

    def t2t_messages(self, messages: list[dict[str, str]], note: str | None) -> list[dict[str, str]]:
        """T2T: the note request (``note=None``) or the receiver's messages with the note."""
        ...

    def generate(
        self,
        prompts: list[list[dict[str, str]]],
        *,
        mode: str,
        max_new_tokens: int,
        do_sample: bool,
        temperature: float,
        top_p: float,
        stopping: StoppingCriteria,
    ) -> BackendOutput:
        """Batched generation; ``stopping`` is called once per decoding step (it streams the tokens)."""
        ...
