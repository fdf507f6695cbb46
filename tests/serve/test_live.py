"""A live uvicorn server on loopback: the official ``openai`` client, concurrency, client disconnects."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
import uvicorn

from c2c.serve.app import create_app
from c2c.serve.backend import C2CBackend
from c2c.serve.engine import Engine, ServeLimits
from c2c.serve.server import GracefulServer

MODEL_ID = "tiny-c2c"  # conftest.MODEL_ID
Q = [{"role": "user", "content": "What is the capital of France?"}]
KEY = "test-key"


@pytest.fixture(scope="module")
def server(backend: C2CBackend, live_server) -> Iterator[tuple[str, Engine]]:
    engine = Engine(backend, ServeLimits(max_new_tokens=4000, max_batch_size=8, max_queue=32))
    with live_server(create_app(engine, api_key=KEY)) as url:
        yield url, engine


@pytest.fixture(scope="module")
def client(server: tuple[str, Engine]) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_openai_client_non_streaming(client: openai.OpenAI, c2c_model) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL_ID]
    r = client.chat.completions.create(model=MODEL_ID, messages=Q, max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and r.model == MODEL_ID
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == c2c_model.generate(Q, max_new_tokens=8)
    assert r.usage is not None and r.usage.completion_tokens >= 1
    extra = r.model_extra or {}
    assert extra["mode"] == "c2c" and extra["timings"]["fusion"] > 0

    t2t = client.chat.completions.create(
        model=MODEL_ID, messages=Q, max_tokens=8, temperature=0, extra_body={"mode": "t2t"}
    )
    assert (t2t.model_extra or {})["mode"] == "t2t" and (t2t.model_extra or {})["note"]


def test_openai_client_streaming(client: openai.OpenAI, c2c_model) -> None:
    stream = client.chat.completions.create(
        model=MODEL_ID, messages=Q, max_tokens=8, temperature=0, stream=True, extra_body={"mode": "receiver"}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == c2c_model.generate(Q, mode="receiver", max_new_tokens=8)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_openai_client_errors(server: tuple[str, Engine]) -> None:
    url = server[0] + "/v1"
    bad = openai.OpenAI(base_url=url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    good = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        good.chat.completions.create(model=MODEL_ID, messages=Q, max_tokens=10_000)
    with pytest.raises(openai.UnprocessableEntityError):
        good.chat.completions.create(model=MODEL_ID, messages=Q, extra_body={"mode": "nope"})


def test_many_concurrent_streams_are_batched(server: tuple[str, Engine]) -> None:
    url, _ = server
    prompts = [[{"role": "user", "content": f"Question number {i}: what is {i} plus {i}?"}] for i in range(12)]

    async def one(client: httpx.AsyncClient, messages: list[dict], max_tokens: int) -> dict:
        body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
        text, final = "", None
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    text += chunk["choices"][0]["delta"].get("content") or ""
                    if chunk["choices"][0].get("finish_reason"):
                        final = chunk
        assert final is not None
        return {"text": text, "final": final}

    async def main() -> list[dict]:
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as c:
            same = [one(c, Q, 6) for _ in range(4)]
            different = [one(c, p, 3 + i % 4) for i, p in enumerate(prompts)]
            return await asyncio.gather(*same, *different)

    results = asyncio.run(main())
    same, different = results[:4], results[4:]
    assert len({r["text"] for r in same}) == 1  # identical prompts, greedy: identical answers in one batch
    for i, r in enumerate(different):
        assert r["final"]["usage"]["completion_tokens"] <= 3 + i % 4
        assert r["final"]["choices"][0]["finish_reason"] in ("stop", "length")
    assert max(r["final"]["timings"]["batch_size"] for r in results) > 1  # micro-batching happened


def _cancelled_since(engine: Engine, before: int) -> list[dict]:
    return [r for r in list(engine.recent)[before:] if r["finish_reason"] == "cancelled"]


def test_disconnect_stops_streaming_generation(server: tuple[str, Engine], wait_until) -> None:
    url, engine = server
    before = len(engine.recent)
    body = {"messages": Q, "max_tokens": 4000, "temperature": 0, "stream": True}
    t0 = time.monotonic()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            seen = 0
            for line in r.iter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    seen += 1
                if seen >= 2:
                    break  # leave: closing the response drops the connection
    assert wait_until(lambda: bool(_cancelled_since(engine, before)), timeout=30)
    rec = _cancelled_since(engine, before)[0]
    assert rec["completion_tokens"] < 4000
    assert engine.active == 0
    assert time.monotonic() - t0 < 30


def test_disconnect_stops_non_streaming_generation(server: tuple[str, Engine], wait_until) -> None:
    url, engine = server
    before = len(engine.recent)
    body = {"messages": Q, "max_tokens": 4000, "temperature": 0}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=0.5) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.post("/v1/chat/completions", json=body)
    assert wait_until(lambda: bool(_cancelled_since(engine, before)), timeout=30)
    assert _cancelled_since(engine, before)[0]["completion_tokens"] < 4000


def _n_text(events: list[dict | str]) -> int:
    return sum(1 for e in events if isinstance(e, dict) and "choices" in e and e["choices"][0]["delta"].get("content"))


def _stream_until_shutdown(url: str, trigger: Callable[[], None]) -> list[dict | str]:
    """Open a long stream, call ``trigger`` after its first tokens, return every event the stream sent."""
    body = {"messages": Q, "max_tokens": 4000, "temperature": 0, "stream": True}
    events: list[dict | str] = []
    triggered = False
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]))
                if _n_text(events) >= 2 and not triggered:
                    triggered = True
                    trigger()
    return events


def test_shutdown_ends_open_streams_with_an_error_event(backend: C2CBackend, free_port) -> None:
    """SIGINT / SIGTERM (GracefulServer.handle_exit, what the signal handler calls): an open stream gets an
    error event and [DONE] instead of a cut connection; the server then stops."""
    engine = Engine(backend, ServeLimits(max_new_tokens=4000))
    port = free_port()
    server = GracefulServer(
        uvicorn.Config(create_app(engine, api_key=KEY), host="127.0.0.1", port=port, log_level="warning"), engine
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    head = httpx.head(url + "/health")
    assert head.status_code == 200 and head.content == b"" and head.headers["content-type"] == "application/json"
    events = _stream_until_shutdown(url, lambda: server.handle_exit(signal.SIGTERM, None))
    thread.join(30)
    assert not thread.is_alive()
    assert events[-1] == "[DONE]"
    err = events[-2]
    assert isinstance(err, dict) and err["error"]["code"] == "shutting_down"
    assert "shutting down" in err["error"]["message"]
    assert 2 <= _n_text(events) < 4000
