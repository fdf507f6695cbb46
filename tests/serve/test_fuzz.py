"""Property-based fuzzing of the HTTP API (hypothesis): random valid and invalid requests, random JSON shapes
and types, any unicode (lone surrogates included), huge and negative numbers, NaN, missing and extra fields,
streaming or not. No request may get a 5xx or leave a stream without its end, and the server must answer a
normal request afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from c2c.serve.app import create_app
from c2c.serve.backend import C2CBackend
from c2c.serve.engine import Engine, ServeLimits

Q = [{"role": "user", "content": "What is the capital of France?"}]

# Short generations keep every example fast: a request without max_tokens gets 3 tokens.
LIMITS = dict(max_new_tokens=6, default_max_tokens=3, max_prompt_tokens=300, max_batch_size=4, note_max_tokens=4)


@pytest.fixture(scope="module")
def client(backend: C2CBackend) -> Iterator[TestClient]:
    with TestClient(create_app(Engine(backend, ServeLimits(**LIMITS)))) as c:  # type: ignore[arg-type]
        yield c


clean_text = st.lists(
    st.one_of(
        st.characters(),  # any code point but surrogates
        st.sampled_from(["\x00", "\n", "<|im_start|>", "<|eot_id|>", "👩‍👩‍👧", "é", "\u0301", "\ufffd", " word"]),
    ),
    max_size=30,
).map("".join)
bad_text = st.tuples(clean_text, st.characters(categories=["Cs"]), clean_text).map("".join)  # a lone surrogate
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2, 3, -1, 2**63 - 1, 2**63, 2**64, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, clean_text, bad_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(clean_text, inner, max_size=4)),
    max_leaves=12,
)


GOOD: dict[str, st.SearchStrategy[Any]] = {
    "mode": st.sampled_from(["c2c", "receiver", "sharer", "t2t"]),
    "max_tokens": st.integers(min_value=1, max_value=6),
    "temperature": st.floats(min_value=0, max_value=2),
    "top_p": st.floats(min_value=0.01, max_value=1),
    "seed": st.integers(min_value=0, max_value=2**63 - 1),
    "stop": st.one_of(clean_text.filter(bool), st.lists(clean_text.filter(bool), max_size=4)),
    "stream": st.booleans(),
    "n": st.just(1),
    "model": st.just("tiny-c2c"),
    "user": clean_text,
    "presence_penalty": st.just(0),
    "logit_bias": st.just({}),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "max_completion_tokens": st.integers(min_value=1, max_value=6),
}
BAD = st.one_of(numbers, bad_text, json_values)
good_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "assistant", "developer"]),
        "content": st.one_of(
            clean_text, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": clean_text}), max_size=2)
        ),
    },
    optional={"name": clean_text},
)
bad_message = st.fixed_dictionaries(
    {"role": st.one_of(GOOD["mode"], BAD), "content": st.one_of(clean_text, BAD)}, optional={"name": BAD, "extra": BAD}
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, Any]:
    """Half valid requests (they reach the model), the rest with one or more bad parts, or any JSON."""
    path = draw(st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
    kind = draw(st.sampled_from(["valid"] * 5 + ["one bad"] * 3 + ["any json", "many bad"]))
    if kind == "any json":
        return path, draw(json_values)
    fields = draw(st.lists(st.sampled_from(sorted(GOOD)), max_size=5, unique=True))
    body: dict[str, Any] = {name: draw(GOOD[name]) for name in fields}
    chat = path == "/v1/chat/completions"
    if chat:
        body["messages"] = draw(st.lists(good_message, min_size=1, max_size=3))
    else:
        body["prompt"] = draw(st.one_of(clean_text, st.lists(clean_text, min_size=1, max_size=4)))
    bad = {"valid": 0, "one bad": 1, "many bad": draw(st.integers(2, 5))}[kind]
    for _ in range(bad):
        what = draw(st.sampled_from([*sorted(GOOD), "prompt", "missing", "extra"]))
        if what == "prompt":
            if chat:
                body["messages"] = draw(st.one_of(st.lists(bad_message, max_size=3), BAD))
            else:
                body["prompt"] = draw(BAD)
        elif what == "missing":
            body.pop("messages" if chat else "prompt", None)
        elif what == "extra":
            body[draw(clean_text)] = draw(json_values)
        else:
            body[what] = draw(BAD)
    return path, body


def still_serves(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"messages": Q, "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200, r.text
    assert client.get("/health").json()["status"] == "ok"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(req=requests())
def test_no_request_gets_a_5xx_or_a_cut_stream(client: TestClient, req: tuple[str, Any]) -> None:
    path, body = req
    # ensure_ascii: lone surrogates travel as JSON escapes, like a client would send them; NaN travels as NaN.
    content = json.dumps(body).encode("ascii")
    with client.stream("POST", path, content=content, headers={"content-type": "application/json"}) as r:
        data = r.read()
    assert r.status_code < 500, (r.status_code, data[:500])
    if r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"):
        events = [b for b in data.decode().split("\n\n") if b.strip()]
        assert events[-1] == "data: [DONE]", events[-3:]
        assert not any('"error"' in e[:20] for e in events), events  # an accepted request finishes normally
    elif r.status_code == 200:
        out = json.loads(data)
        assert out["choices"] and out["usage"]["completion_tokens"] >= 0
    else:
        err = json.loads(data)["error"]
        assert err["message"] and err["type"]
    still_serves(client)
