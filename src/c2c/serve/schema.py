"""What the serving layers exchange: limits, prompts and their cost, sampling parameters, refusals, events,
and the two interfaces (:class:`Backend` below the engine, :class:`ServingEngine` above it).

Layers: the app (:mod:`c2c.serve.app`) talks to a :class:`ServingEngine` only; the engine of this package
(:class:`c2c.serve.engine.Engine`) drives a :class:`Backend` (:class:`c2c.serve.backend.C2CBackend` for a
``C2CModel``). Another engine (e.g. one on vLLM) implements :class:`ServingEngine` and is served by the same
app, page and terminal chat.

Refusals (:class:`RequestError` and subclasses) carry the HTTP status and OpenAI error fields the server
answers with; events are what a request's stream yields (:class:`NoteEvent`, :class:`TextEvent`, then one
:class:`DoneEvent` or :class:`ErrorEvent`).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Union

from transformers import StoppingCriteriaList

from c2c.config import PromptFormat

MODES: tuple[str, ...] = ("c2c", "receiver", "sharer", "t2t")

Prompt = Union[str, list[dict[str, str]]]
"""A plain-text prompt (``str``, ``/v1/completions``) or a conversation (``[{"role", "content"}]``, chat)."""

MIN_SAMPLING_TEMPERATURE = 1e-5
"""Temperatures below this decode greedily: the limit of sampling as the temperature goes to 0 (dividing
logits by a temperature such as 1e-300 overflows to inf and the sampler fails on NaN probabilities)."""

MAX_SEED = 2**63 - 1
"""Largest seed accepted (torch takes 64-bit seeds; JSON clients rarely handle more than 63 bits)."""


def is_text(prompt: Prompt) -> bool:
    return isinstance(prompt, str)


# -- limits and parameters --------------------------------------------------------------------------------


@dataclass
class ServeLimits:
    """What one server accepts. A request beyond a limit is refused before it queues."""

    max_prompt_tokens: int = 2048
    """Longest prompt (tokens of the answering model, after the chat template); longer ones get 413."""
    max_new_tokens: int = 512
    """Largest ``max_tokens`` a request may ask for; larger ones get 400."""
    default_max_tokens: int = 256
    """``max_tokens`` of a request that does not set it, lowered to what the context leaves after the prompt."""
    max_batch_size: int = 8
    """Maximum concurrent generations: requests decoded together in one batch."""
    max_queue: int = 64
    """Requests that may wait for a slot; beyond it the server answers 503."""
    batch_window_s: float = 0.01
    """How long the worker waits for batch-mates after the first request of an idle period."""
    note_max_tokens: int = 64
    """T2T: token budget of the sharer's background note (and of the note in the receiver's prompt)."""
    max_body_bytes: int = 1_000_000
    """Largest request body; larger ones get 413."""
    max_stop_chars: int = 256
    """Longest stop string."""

    def __post_init__(self) -> None:
        for name in (
            "max_prompt_tokens",
            "max_new_tokens",
            "default_max_tokens",
            "max_batch_size",
            "max_queue",
            "note_max_tokens",
            "max_body_bytes",
            "max_stop_chars",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ServeLimits.{name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.batch_window_s, (int, float)) and 0 <= self.batch_window_s < 10):
            raise ValueError(f"ServeLimits.batch_window_s must be in [0, 10) seconds, got {self.batch_window_s!r}")


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings. ``temperature == 0`` (or below :data:`MIN_SAMPLING_TEMPERATURE`) means greedy.

    ``max_new_tokens=None`` means "the server's default": the engine fills it in at submission, lowered to
    what the model's context leaves after the prompt.
    """

    mode: str = "c2c"
    max_new_tokens: int | None = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def do_sample(self) -> bool:
        return self.temperature >= MIN_SAMPLING_TEMPERATURE

    def batch_key(self) -> tuple[Any, ...] | None:
        """Requests with equal keys may share one ``generate`` call; ``None``: run alone (seeded)."""
        if self.seed is not None:
            return None
        if not self.do_sample:
            return (self.mode, "greedy")
        return (self.mode, "sample", self.temperature, self.top_p)


def check_sampling(
    temperature: float, top_p: float, seed: int | None, stop: Sequence[str], max_stop_chars: int
) -> None:
    """Raise :class:`RequestError` for a parameter outside what the model can run (the HTTP layer checks
    the same bounds; this guards every other caller of the engine)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise RequestError(f"temperature must be a number in [0, 2], got {temperature!r}", param="temperature")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not math.isfinite(top_p) or not 0 < top_p <= 1:
        raise RequestError(f"top_p must be a number in (0, 1], got {top_p!r}", param="top_p")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise RequestError(f"seed must be an integer in [0, 2**63 - 1], got {seed!r}", param="seed")
    if len(stop) > 4:
        raise RequestError(f"at most 4 stop sequences are allowed, got {len(stop)}", param="stop")
    for s in stop:
        if not isinstance(s, str) or not s:
            raise RequestError("stop sequences must be non-empty strings", param="stop")
        if len(s) > max_stop_chars:
            raise RequestError(
                f"a stop sequence may have at most {max_stop_chars} characters, got {len(s)}", param="stop"
            )


# -- what a prompt costs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One model's sequence in a request: its prompt length, its context, whether decoding extends it."""

    model: str
    """Which model reads it ("receiver", "sharer"), for error messages."""
    tokens: int
    context: int | None
    """The model's context in positions; ``None``: unbounded (not known)."""
    grows: bool
    """Decoding appends the request's new tokens to this sequence."""


@dataclass(frozen=True)
class PromptCost:
    """A prompt measured for one mode: what admission and batching need to know.

    A request fits alone when every segment's ``tokens`` (+ ``max_tokens`` if it grows) fits its context.
    A batch of requests of one mode is left-padded to its longest prompt per segment and decodes to its
    largest ``max_tokens``, so it fits when, per segment, the longest prompt + (the largest ``max_tokens`` if
    it grows) fits (:func:`batch_fits`).
    """

    tokens: int
    """Prompt tokens of the answering model (``usage.prompt_tokens``; T2T: with the note's budget)."""
    segments: tuple[Segment, ...]

    def budget(self) -> int | None:
        """Most new tokens the contexts leave after the prompt (None: no known limit)."""
        room = [s.context - s.tokens for s in self.segments if s.grows and s.context is not None]
        return min(room) if room else None

    def overflow(self) -> Segment | None:
        """A segment whose prompt alone does not fit its model's context (even with no new token)."""
        for s in self.segments:
            if s.context is not None and s.tokens + (1 if s.grows else 0) > s.context:
                return s
        return None


def batch_fits(costs: Sequence[PromptCost], max_new: Sequence[int]) -> bool:
    """Whether requests of one mode can share one left-padded ``generate`` call (see :class:`PromptCost`)."""
    if not costs:
        return True
    top = max(max_new)
    for j, seg in enumerate(costs[0].segments):
        width = max(c.segments[j].tokens for c in costs)
        if seg.context is not None and width + (top if seg.grows else 0) > seg.context:
            return False
    return True


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
    """The request ended without an answer. ``status`` / ``type`` / ``code``: what a non-streaming
    response answers with (503 while the server shuts down, 500 when generation failed)."""

    message: str
    status: int = 500
    type: str = "server_error"
    code: str | None = None


Event = Union[NoteEvent, TextEvent, DoneEvent, ErrorEvent]
FINAL_EVENTS = (DoneEvent, ErrorEvent)


# -- backend: what the engine needs from a model ----------------------------------------------------------


@dataclass
class BackendOutput:
    """``sequences``: new token ids per prompt, cut before the end-of-sequence token."""

    texts: list[str]
    sequences: list[list[int]]
    timings: dict[str, float]
    prompt_tokens: list[int] = field(default_factory=list)


@dataclass
class ModelInfo:
    """What a served model is, as the app, the page and the terminal chat show and check it."""

    model_id: str
    receiver_name: str
    """Display name: a hub id, or a local folder's base name (never a local path)."""
    sharer_names: list[str]
    modes: tuple[str, ...]
    prompt_format: PromptFormat = "chat"
    """How the fuser was trained to read prompts: "chat" (chat template) or "text" (plain text)."""
    chat_refusal: str | None = None
    """Why chat requests are refused (a plain-text fuser, a tokenizer without a chat template); None: served."""
    context_length: int | None = None


class Backend(Protocol):
    """A model the engine can drive (implemented for ``C2CModel`` by :class:`c2c.serve.backend.C2CBackend`).

    Every method but :meth:`generate` is called from the server's tokenization threads as well as from the
    engine's worker: they only read the tokenizers.
    """

    info: ModelInfo

    def measure(self, prompt: Prompt, mode: str, *, note_tokens: int) -> PromptCost:
        """Tokenize ``prompt`` as ``mode`` will read it. T2T reserves ``note_tokens`` for the note.
        Raises ``ValueError`` for a prompt the model cannot read (e.g. a chat template that refuses it)."""
        ...

    def tokenizer_for(self, mode: str) -> Any: ...

    def eos_token_ids(self, mode: str) -> set[int]: ...

    def t2t_note_prompt(self, prompt: Prompt) -> Prompt:
        """T2T: what the sharer is asked (write a background note about the question)."""
        ...

    def t2t_answer_prompt(self, prompt: Prompt, note: str, max_tokens: int) -> tuple[Prompt, str, int]:
        """T2T: the receiver's prompt with the note, the note cut (in receiver tokens) so that the prompt has
        at most ``max_tokens`` tokens; returns (prompt, note as used, prompt tokens)."""
        ...

    def generate(
        self,
        prompts: list[Prompt],
        *,
        mode: str,
        max_new_tokens: int,
        do_sample: bool,
        temperature: float,
        top_p: float,
        stopping: StoppingCriteriaList,
    ) -> BackendOutput:
        """Batched generation (all prompts of one kind); ``stopping`` is called once per decoding step
        (it streams the tokens and returns the per-row finished flags ``[B]``)."""
        ...


# -- the engine as the app sees it ------------------------------------------------------------------------


class Handle(Protocol):
    """One submitted request."""

    finished: bool

    def cancel(self) -> None:
        """The client went away: stop this request (no-op once finished)."""
        ...

    def events(self) -> AsyncIterator[Event]:
        """Events until (and including) the final Done/Error event (submitted from an event loop)."""
        ...

    def iter_events(self) -> Iterator[Event]:
        """Blocking iteration (submitted outside an event loop, e.g. the terminal chat)."""
        ...


class ServingEngine(Protocol):
    """What :func:`c2c.serve.app.create_app` and :class:`c2c.serve.chat.ChatSession` use.

    Contract: a request :meth:`asubmit` accepted ends with exactly one Done or Error event, whatever
    happens (a failing batch, a dead worker, shutdown): nothing waits forever. Refusals raise
    :class:`RequestError` before anything is queued.
    """

    info: ModelInfo
    limits: ServeLimits

    def start(self) -> Any: ...

    def close(self, timeout: float = 30.0) -> None:
        """Fail queued requests, end running ones with an error, stop."""
        ...

    def begin_shutdown(self, reason: str = "the server is shutting down") -> None:
        """Refuse new requests and end every open one now with an :class:`ErrorEvent` (non-blocking)."""
        ...

    def health(self) -> dict[str, Any]:
        """``{"status": "ok" | "unhealthy" | "shutting down", ...}``."""
        ...

    def make_params(
        self,
        *,
        mode: str = "c2c",
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] = (),
        seed: int | None = None,
    ) -> SamplingParams: ...

    def submit(self, prompt: Prompt, params: SamplingParams) -> Handle:
        """Tokenize and queue (blocking; for callers outside an event loop)."""
        ...

    async def asubmit(self, prompts: list[Prompt], params: SamplingParams) -> Sequence[Handle]:
        """Tokenize off the event loop, then queue all prompts or none (atomic against the queue limit)."""
        ...
