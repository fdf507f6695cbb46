"""Async client of one vLLM OpenAI-compatible server: token ids in, token ids out, streamed.

c2c tokenizes (with each model's chat template) and detokenizes (stop strings, incremental text) itself, so
vLLM runs with ``--skip-tokenizer-init``: prompts are token ids, and every chunk carries the new token ids
(``return_token_ids``). A C2C request adds ``kv_transfer_params`` (the fused rows' hand-over) and a
``cache_salt`` (its own prefix-cache namespace).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import httpx


class VLLMError(RuntimeError):
    """vLLM refused or failed a request; the message is vLLM's."""


@dataclass
class Chunk:
    """New tokens of one streamed step; ``finish_reason`` on the last one ("stop", "length", "abort", ...)."""

    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list[float] = field(default_factory=list)


@dataclass
class CompletionRequest:
    """One generation on vLLM. ``temperature == 0`` is greedy."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    kv_transfer_params: dict[str, Any] | None = None
    cache_salt: str | None = None
    logprobs: bool = False

    def body(self, model: str, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "prompt": self.prompt_ids,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop_token_ids": self.stop_token_ids,
            "return_token_ids": True,
            "stream": stream,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        if self.kv_transfer_params is not None:
            body["kv_transfer_params"] = self.kv_transfer_params
        if self.cache_salt is not None:
            body["cache_salt"] = self.cache_salt
        if self.logprobs:  # ids as "token_id:N" strings: no tokenizer on the vLLM side
            body.update(logprobs=1, return_tokens_as_token_ids=True)
        return body


class VLLMClient:
    """Talks to ``base_url`` (``http://host:port``), serving ``model``."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout_s: float = 600.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # One connection per concurrent stream; the pool must not be the bottleneck of continuous batching.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout_s, connect=10.0), limits=limits
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def health(self) -> bool:
        try:
            r = await self._http.get("/health", timeout=5.0)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    async def stream(self, req: CompletionRequest) -> AsyncGenerator[Chunk, None]:
        """Stream the new tokens. Leaving the iteration early closes the connection, and vLLM aborts the request."""
        async with self._http.stream("POST", "/v1/completions", json=req.body(self.model, stream=True)) as r:
            if r.status_code != 200:
                raise VLLMError(_error_text(r.status_code, (await r.aread()).decode(errors="replace")))
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:].strip()
                if data == "[DONE]":
                    return
                obj = json.loads(data)
                if "error" in obj:
                    raise VLLMError(_error_text(200, data))
                for choice in obj.get("choices", []):
                    yield Chunk(
                        token_ids=[int(t) for t in choice.get("token_ids") or []],
                        finish_reason=choice.get("finish_reason"),
                        logprobs=_logprobs(choice.get("logprobs")),
                    )

    async def complete(self, req: CompletionRequest) -> Chunk:
        """Non-streamed generation: every token (and logprob) in one :class:`Chunk`."""
        r = await self._http.post("/v1/completions", json=req.body(self.model, stream=False))
        if r.status_code != 200:
            raise VLLMError(_error_text(r.status_code, r.text))
        choice = r.json()["choices"][0]
        return Chunk(
            token_ids=[int(t) for t in choice.get("token_ids") or []],
            finish_reason=choice.get("finish_reason"),
            logprobs=_logprobs(choice.get("logprobs")),
        )


def _logprobs(lp: dict[str, Any] | None) -> list[float]:
    if not lp:
        return []
    return [float(x) for x in lp.get("token_logprobs") or []]


def _error_text(status: int, body: str) -> str:
    try:
        err = json.loads(body).get("error", {})
        msg = err.get("message") if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        msg = body[:500]
    return f"vLLM answered {status}: {msg}"
