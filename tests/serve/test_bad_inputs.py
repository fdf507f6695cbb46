"""The server's bad-input catalogue: every request a client can get wrong, with the status and error code it
gets, each followed by a normal request that must still be answered (nothing kills the worker)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from c2c.serve.app import create_app
from c2c.serve.backend import C2CBackend
from c2c.serve.engine import Engine, RequestError, SamplingParams, ServeLimits

Q = [{"role": "user", "content": "What is the capital of France?"}]
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
LIMITS = dict(max_new_tokens=32, max_prompt_tokens=200, max_batch_size=4)


@pytest.fixture(scope="module")
def client(backend: C2CBackend) -> Iterator[TestClient]:
    with TestClient(create_app(Engine(backend, ServeLimits(**LIMITS)))) as c:  # type: ignore[arg-type]
        yield c


@pytest.fixture(scope="module")
def text_client(text_backend: C2CBackend) -> Iterator[TestClient]:
    with TestClient(create_app(Engine(text_backend, ServeLimits(**LIMITS)))) as c:  # type: ignore[arg-type]
        yield c


@pytest.fixture(scope="module")
def short_client(short_backend: C2CBackend) -> Iterator[TestClient]:
    limits = ServeLimits(max_new_tokens=1000, max_prompt_tokens=1000, default_max_tokens=1000)
    with TestClient(create_app(Engine(short_backend, limits))) as c:
        yield c


def still_serves(client: TestClient) -> None:
    r = client.post(CHAT, json={"messages": Q, "max_tokens": 1, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1
    r = client.post(COMPLETIONS, json={"prompt": "The capital of France is", "max_tokens": 1, "temperature": 0})
    assert r.status_code == 200, r.text
    assert client.get("/health").json()["status"] == "ok"


def raw(body: str) -> dict[str, Any]:
    return {"content": body.encode("utf-8", "surrogatepass"), "headers": {"content-type": "application/json"}}


def chat(**fields: Any) -> dict[str, Any]:
    return {"json": {"messages": Q, "max_tokens": 4, **fields}}


def text(**fields: Any) -> dict[str, Any]:
    return {"json": {"prompt": "The capital of France is", "max_tokens": 4, **fields}}


# (id, path, request kwargs, status, error code or param that must be named)
CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    # sampling parameters: bounded, typed (the seed 2**64 once killed the worker thread)
    ("seed 2**64", CHAT, chat(seed=2**64), 422, "seed"),
    ("seed 2**63", CHAT, chat(seed=2**63), 422, "seed"),
    ("negative seed", CHAT, chat(seed=-1), 422, "seed"),
    ("float seed", CHAT, chat(seed=1.5), 422, "seed"),
    ("string seed", CHAT, chat(seed="7"), 422, "seed"),
    ("bool seed", CHAT, chat(seed=True), 422, "seed"),
    ("completions seed 2**64", COMPLETIONS, text(seed=2**64), 422, "seed"),
    ("temperature 5", CHAT, chat(temperature=5), 422, "temperature"),
    ("negative temperature", CHAT, chat(temperature=-0.1), 422, "temperature"),
    (
        "temperature NaN",
        CHAT,
        raw('{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'),
        422,
        "temperature",
    ),
    (
        "temperature Infinity",
        CHAT,
        raw('{"messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}'),
        422,
        "temperature",
    ),
    (
        "temperature 1e400",
        CHAT,
        raw('{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}'),
        422,
        "temperature",
    ),
    ("temperature huge int", CHAT, chat(temperature=10**400), 422, "temperature"),
    ("string temperature", CHAT, chat(temperature="0.5"), 422, "temperature"),
    ("top_p 0", CHAT, chat(top_p=0), 422, "top_p"),
    ("top_p 1.5", CHAT, chat(top_p=1.5), 422, "top_p"),
    ("max_tokens 0", CHAT, chat(max_tokens=0), 422, "max_tokens"),
    ("negative max_tokens", CHAT, chat(max_tokens=-5), 422, "max_tokens"),
    ("string max_tokens", CHAT, chat(max_tokens="8"), 422, "max_tokens"),
    ("float max_tokens", CHAT, chat(max_tokens=8.5), 422, "max_tokens"),
    ("max_tokens over the limit", CHAT, chat(max_tokens=33), 400, "max_tokens"),
    ("max_tokens 10**30", CHAT, chat(max_tokens=10**30), 400, "max_tokens"),
    ("max_completion_tokens over the limit", CHAT, chat(max_completion_tokens=10**6), 400, "max_tokens"),
    ("string stream", CHAT, chat(stream="yes"), 422, "stream"),
    ("int stream", CHAT, chat(stream=1), 422, "stream"),
    ("five stop strings", CHAT, chat(stop=["a", "b", "c", "d", "e"]), 422, "stop"),
    ("empty stop string", CHAT, chat(stop=""), 422, "stop"),
    ("huge stop string", CHAT, chat(stop="x" * 10_000), 422, "stop"),
    ("n 2", CHAT, chat(n=2), 400, "unsupported"),
    ("n 0", CHAT, chat(n=0), 422, "n"),
    ("presence_penalty", CHAT, chat(presence_penalty=1.0), 400, "unsupported"),
    ("logit_bias", CHAT, chat(logit_bias={"5": 10}), 400, "unsupported"),
    ("tools", CHAT, chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "unsupported"),
    ("logprobs", CHAT, chat(logprobs=True), 400, "unsupported"),
    ("completions echo", COMPLETIONS, text(echo=True), 400, "unsupported"),
    ("completions best_of", COMPLETIONS, text(best_of=3), 400, "unsupported"),
    ("unknown mode", CHAT, chat(mode="telepathy"), 422, "mode"),
    ("unknown field", CHAT, chat(temperatur=0.5), 422, "unknown_field"),
    ("unknown model", CHAT, chat(model="gpt-4"), 404, "model_not_found"),
    # text that is not valid Unicode: lone surrogates (once a 500)
    (
        "lone surrogate in content",
        CHAT,
        raw('{"messages": [{"role": "user", "content": "hi \\ud800 there"}]}'),
        400,
        "invalid_unicode",
    ),
    ("lone low surrogate", CHAT, raw('{"messages": [{"role": "user", "content": "\\udfff"}]}'), 400, "invalid_unicode"),
    (
        "lone surrogate in a text part",
        CHAT,
        raw('{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud83d"}]}]}'),
        400,
        "invalid_unicode",
    ),
    (
        "lone surrogate in stop",
        CHAT,
        raw('{"messages": [{"role": "user", "content": "hi"}], "stop": "\\ud800"}'),
        400,
        "invalid_unicode",
    ),
    ("lone surrogate in the prompt", COMPLETIONS, raw('{"prompt": "x\\ud800"}'), 400, "invalid_unicode"),
    (
        "lone surrogate in a key",
        CHAT,
        raw('{"messages": [{"role": "user", "content": "hi"}], "\\ud800": 1}'),
        400,
        "invalid_unicode",
    ),
    # bodies that are not what they should be
    ("malformed JSON", CHAT, raw("{not json"), 400, "invalid_json"),
    ("truncated JSON", CHAT, raw('{"messages": [{"role": "us'), 400, "invalid_json"),
    ("JSON array body", CHAT, raw("[1, 2, 3]"), 422, "body"),
    ("JSON string body", CHAT, raw('"hello"'), 422, "body"),
    ("JSON null body", CHAT, raw("null"), 422, "body"),
    ("empty body", CHAT, raw(""), 422, "body"),
    ("deeply nested JSON", CHAT, raw('{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}"), 400, ""),
    ("5000-digit number", CHAT, raw('{"messages": [], "max_tokens": ' + "9" * 5000 + "}"), 400, ""),
    (
        "invalid UTF-8 bytes",
        CHAT,
        {"content": b'{"messages": "\xff\xfe"}', "headers": {"content-type": "application/json"}},
        400,
        "invalid_json",
    ),
    (
        "text/plain body",
        CHAT,
        {"content": json.dumps({"messages": Q}).encode(), "headers": {"content-type": "text/plain"}},
        422,
        "",
    ),
    ("no messages", CHAT, {"json": {"messages": []}}, 422, "messages"),
    ("message without content", CHAT, {"json": {"messages": [{"role": "user"}]}}, 422, "messages"),
    ("tool role", CHAT, {"json": {"messages": [{"role": "tool", "content": "x"}]}}, 422, "messages"),
    ("null content", CHAT, {"json": {"messages": [{"role": "user", "content": None}]}}, 422, "messages"),
    (
        "image part",
        CHAT,
        {"json": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}},
        422,
        "messages",
    ),
    (
        "prompt too long",
        CHAT,
        chat(messages=[{"role": "user", "content": "word " * 300}]),
        413,
        "context_length_exceeded",
    ),
    # completions prompts
    ("empty prompt", COMPLETIONS, text(prompt=""), 400, "invalid_prompt"),
    ("empty prompt list", COMPLETIONS, text(prompt=[]), 422, "prompt"),
    ("token-id prompt", COMPLETIONS, text(prompt=[1, 2, 3]), 422, "prompt"),
    ("token-id prompts", COMPLETIONS, text(prompt=[[1, 2], [3]]), 422, "prompt"),
    ("prompt of numbers and strings", COMPLETIONS, text(prompt=["a", 3]), 422, "prompt"),
    ("too many prompts", COMPLETIONS, text(prompt=["a"] * 5), 400, "too_many_prompts"),
    ("no prompt", COMPLETIONS, {"json": {"max_tokens": 3}}, 422, "prompt"),
    ("messages on completions", COMPLETIONS, {"json": {"messages": Q}}, 422, ""),
    ("prompt on chat", CHAT, {"json": {"prompt": "hi"}}, 422, ""),
    ("long prompt on completions", COMPLETIONS, text(prompt="word " * 300), 413, "context_length_exceeded"),
]


@pytest.mark.parametrize(("path", "kwargs", "status", "named"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_is_refused_clearly_and_the_server_goes_on(
    client: TestClient, path: str, kwargs: dict[str, Any], status: int, named: str
) -> None:
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and len(err["message"]) > 10
    assert named in (err["code"] or "") or named in (err["param"] or "") or named in err["message"], err
    still_serves(client)


@pytest.mark.parametrize("stream", [False, True])
def test_the_same_refusals_hold_for_streaming_requests(client: TestClient, stream: bool) -> None:
    r = client.post(CHAT, json={"messages": Q, "seed": 2**64, "stream": stream})
    assert r.status_code == 422 and r.json()["error"]["param"] == "seed"
    r = client.post(
        CHAT, **raw('{"messages": [{"role": "user", "content": "\\ud800"}], "stream": %s}' % json.dumps(stream))
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_unicode"
    still_serves(client)


def test_engine_api_bounds_the_same_parameters(backend: C2CBackend) -> None:
    """Callers of the engine that skip the HTTP layer (the terminal chat, another app) get the same bounds."""
    with Engine(backend, ServeLimits(max_new_tokens=16)) as engine:
        for kwargs, param in (
            ({"seed": 2**64}, "seed"),
            ({"seed": -3}, "seed"),
            ({"seed": True}, "seed"),
            ({"temperature": float("nan")}, "temperature"),
            ({"temperature": 3}, "temperature"),
            ({"top_p": 0.0}, "top_p"),
            ({"top_p": float("inf")}, "top_p"),
            ({"max_tokens": 0}, "max_tokens"),
            ({"max_tokens": 17}, "max_tokens"),
            ({"max_tokens": 2.5}, "max_tokens"),
            ({"stop": ["x" * 1000]}, "stop"),
            ({"stop": [""]}, "stop"),
            ({"mode": "nope"}, "mode"),
        ):
            with pytest.raises(RequestError) as info:
                engine.make_params(**kwargs)
            assert info.value.param == param, kwargs
        # Parameters built by hand still cannot reach the model unchecked: admission refuses them.
        with pytest.raises(RequestError, match="empty"):
            engine.submit("", engine.make_params(max_tokens=2))
        with pytest.raises(RequestError, match="not available"):
            engine.submit("hi", SamplingParams(mode="telepathy", max_new_tokens=2))
        text = "".join(
            getattr(e, "text", "")
            for e in engine.submit("hi", engine.make_params(max_tokens=2, temperature=0)).iter_events()
        )
        assert text


def test_chat_on_a_plain_text_fuser_points_to_completions(text_client: TestClient) -> None:
    for mode in ("c2c", "receiver", "sharer", "t2t"):
        for stream in (False, True):
            r = text_client.post(CHAT, json={"messages": Q, "mode": mode, "stream": stream, "max_tokens": 2})
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["code"] == "chat_not_supported" and "/v1/completions" in err["message"]
            assert "plain-text" in err["message"]
    r = text_client.post(COMPLETIONS, json={"prompt": "The capital of France is", "max_tokens": 2})
    assert r.status_code == 200


def test_short_context_admission(short_client: TestClient) -> None:
    """256 positions: the prompt + max_tokens is checked per request, with the numbers and the fix."""
    r = short_client.post(CHAT, json={"messages": Q, "max_tokens": 250})
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_length_exceeded" and err["param"] == "max_tokens"
    assert "256" in err["message"] and "at most" in err["message"]
    r = short_client.post(COMPLETIONS, json={"prompt": "word " * 300})
    assert r.status_code == 413 and "256" in r.json()["error"]["message"]
    # T2T reserves the note's budget (64 tokens) in the receiver's prompt: a max_tokens that fits the bare
    # prompt can still be refused there, clearly.
    bare = short_client.post(CHAT, json={"messages": Q, "max_tokens": 200, "mode": "receiver", "temperature": 0})
    assert bare.status_code == 200, bare.text
    r = short_client.post(CHAT, json={"messages": Q, "max_tokens": 200, "mode": "t2t"})
    assert r.status_code == 400 and "note" in r.json()["error"]["message"], r.text
    still_serves(short_client)


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_degenerate_sampling_values_answer(client: TestClient, path: str) -> None:
    """Found by the fuzzer: temperature 5e-294 overflowed the logits (NaN probabilities, a 500). Below 1e-5
    sampling is greedy decoding (its limit); extreme but valid values all answer."""
    body = chat if path == CHAT else text

    def answer(r: Any) -> Any:
        choice = r.json()["choices"][0]
        return choice["message"]["content"] if path == CHAT else choice["text"]

    greedy = answer(client.post(path, **body(temperature=0, max_tokens=6)))
    for fields in (
        {"temperature": 5.0948764285968394e-294},
        {"temperature": 1e-6, "seed": 3},
        {"temperature": 2.0, "top_p": 1e-300},
        {"temperature": 1e-5, "top_p": 5e-324},
    ):
        r = client.post(path, **body(max_tokens=6, **fields))
        assert r.status_code == 200, (fields, r.text)
        if fields["temperature"] < 1e-5:
            assert answer(r) == greedy
    still_serves(client)
