"""The HTTP API through FastAPI's TestClient, with a real tiny C2C model behind it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from c2c.serve.app import create_app
from c2c.serve.backend import C2CBackend
from c2c.serve.engine import Engine, ServeLimits

MODEL_ID = "tiny-c2c"  # conftest.MODEL_ID (test_health_and_models checks the server says so)
Q = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(backend: C2CBackend) -> Iterator[TestClient]:
    app = create_app(Engine(backend, ServeLimits(max_new_tokens=32, max_prompt_tokens=200)))
    with TestClient(app) as c:
        yield c


def chat(client: TestClient, **body: object) -> dict:
    r = client.post("/v1/chat/completions", json={"messages": Q, "max_tokens": 8, "temperature": 0, **body})
    assert r.status_code == 200, r.text
    return r.json()


def sse(client: TestClient, **body: object) -> list[dict | str]:
    payload = {"messages": Q, "max_tokens": 8, "temperature": 0, "stream": True, **body}
    with client.stream("POST", "/v1/chat/completions", json=payload) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events: list[dict | str] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_health_and_models(client: TestClient, backend: C2CBackend) -> None:
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["model"] == MODEL_ID
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    card = models["data"][0]
    assert card["id"] == MODEL_ID and card["object"] == "model"
    assert card["receiver"].endswith("receiver") and card["sharers"][0].endswith("sharer")
    assert card["modes"] == ["c2c", "receiver", "sharer", "t2t"]
    assert client.get(f"/v1/models/{MODEL_ID}").json()["id"] == MODEL_ID
    missing = client.get("/v1/models/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]


@pytest.mark.parametrize("mode", ["c2c", "receiver", "sharer"])
def test_non_streaming_matches_model_generate(client: TestClient, c2c_model, mode: str) -> None:
    out = chat(client, mode=mode)
    ref = c2c_model.generate(Q, mode=mode, max_new_tokens=8, return_dict=True)
    assert out["object"] == "chat.completion" and out["model"] == MODEL_ID and out["mode"] == mode
    choice = out["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": ref.texts[0]}
    assert choice["finish_reason"] in ("stop", "length")
    u = out["usage"]
    assert u["completion_tokens"] == len(ref.sequences[0])
    assert u["prompt_tokens"] == ref.prompt_tokens[0]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    t = out["timings"]
    assert t["total"] >= t["decode"] > 0 and t["batch_size"] == 1
    if mode == "c2c":
        assert t["sharer_prefill"] > 0 and t["fusion"] > 0
    else:
        assert t["fusion"] == 0


def test_default_mode_is_c2c_and_differs_from_receiver(client: TestClient) -> None:
    default = chat(client)
    assert default["mode"] == "c2c"
    assert default["choices"][0]["message"]["content"] == chat(client, mode="c2c")["choices"][0]["message"]["content"]
    # The fuser's gates are open: reading the fused cache changes the answer.
    assert (
        default["choices"][0]["message"]["content"] != chat(client, mode="receiver")["choices"][0]["message"]["content"]
    )


def test_t2t_returns_the_sharer_note(client: TestClient, c2c_model, backend: C2CBackend) -> None:
    out = chat(client, mode="t2t")
    note = c2c_model.generate(backend.t2t_note_prompt(Q), mode="sharer", max_new_tokens=64)
    # The receiver reads the note within its budget of note_max_tokens receiver tokens: this random sharer's
    # byte soup reads longer in the receiver's tokens, so it is cut (at a token boundary), never dropped.
    reserved = backend.measure(Q, "t2t", note_tokens=64).segments[-1].tokens
    prompt, used, n = backend.t2t_answer_prompt(Q, note.strip(), reserved)
    assert out["note"] == used and used and note.strip().startswith(used) and n <= reserved
    assert out["usage"]["prompt_tokens"] == n
    answer = c2c_model.generate(prompt, mode="receiver", max_new_tokens=8)
    assert out["choices"][0]["message"]["content"] == answer
    assert out["timings"]["sharer_note"] > 0


def test_streaming_chunks(client: TestClient) -> None:
    events = sse(client)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events if isinstance(e, dict)]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL_ID for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] in ("stop", "length")
    assert final["usage"]["completion_tokens"] >= 1 and "timings" in final
    assert all(c["choices"][0].get("finish_reason") is None for c in chunks[:-1])
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert streamed == chat(client)["choices"][0]["message"]["content"]
    assert len([c for c in chunks if c["choices"][0]["delta"].get("content")]) >= 2  # really incremental


def test_streaming_t2t_sends_note_before_answer(client: TestClient) -> None:
    chunks = [e for e in sse(client, mode="t2t") if isinstance(e, dict)]
    note_at = next(i for i, c in enumerate(chunks) if "note" in c)
    first_text = next(i for i, c in enumerate(chunks) if c["choices"][0]["delta"].get("content"))
    assert note_at < first_text
    assert chunks[note_at]["note"] == chat(client, mode="t2t")["note"]


def test_max_tokens_and_stop(client: TestClient, c2c_model) -> None:
    out = chat(client, max_tokens=3)
    assert out["usage"]["completion_tokens"] == 3 and out["choices"][0]["finish_reason"] == "length"
    full = c2c_model.generate(Q, max_new_tokens=16)
    assert len(full) > 6
    stop = full[4:6]
    cut = full.index(stop)
    out = chat(client, max_tokens=16, stop=[stop, "\x00never"])
    assert out["choices"][0]["message"]["content"] == full[:cut]
    assert out["choices"][0]["finish_reason"] == "stop"
    streamed = sse(client, max_tokens=16, stop=stop)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in streamed if isinstance(e, dict))
    assert text == full[:cut]


def test_seeded_sampling_is_reproducible(client: TestClient) -> None:
    a = chat(client, temperature=1.0, top_p=0.9, seed=123, max_tokens=10)
    b = chat(client, temperature=1.0, top_p=0.9, seed=123, max_tokens=10)
    c = chat(client, temperature=1.0, top_p=0.9, seed=7, max_tokens=10)
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    assert a["choices"][0]["message"]["content"] != c["choices"][0]["message"]["content"]


def _error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["message"]
    return err


def test_request_errors(client: TestClient) -> None:
    post = client.post
    url = "/v1/chat/completions"
    err = _error(post(url, content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert err["code"] == "invalid_json"
    err = _error(post(url, json={"messages": Q, "temperatur": 0.5}), 422)
    assert err["code"] == "unknown_field" and err["param"] == "temperatur"
    err = _error(post(url, json={"messages": Q, "temperature": 5}), 422)
    assert err["param"] == "temperature"
    _error(post(url, json={"messages": []}), 422)
    _error(post(url, json={"messages": Q, "mode": "telepathy"}), 422)
    _error(post(url, json={"messages": [{"role": "user"}]}), 422)
    err = _error(post(url, json={"messages": Q, "max_tokens": 33}), 400)
    assert err["param"] == "max_tokens" and "32" in err["message"]
    err = _error(post(url, json={"messages": [{"role": "user", "content": "word " * 300}]}), 413)
    assert err["code"] == "context_length_exceeded"
    err = _error(post(url, json={"messages": Q, "n": 2}), 400)
    assert "n > 1" in err["message"]
    err = _error(post(url, json={"messages": Q, "model": "gpt-4"}), 404)
    assert err["code"] == "model_not_found"
    assert chat(client, model=MODEL_ID)["model"] == MODEL_ID
    _error(client.get("/v1/nothing-here"), 404)
    _error(client.get(url), 405)


def test_body_too_large(backend: C2CBackend) -> None:
    app = create_app(Engine(backend, ServeLimits(max_body_bytes=200)))
    with TestClient(app) as c:
        err = _error(c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * 300}]}), 413)
        assert err["code"] == "body_too_large"


def test_api_key_guards_every_route_but_health(backend: C2CBackend) -> None:
    app = create_app(Engine(backend, ServeLimits()), api_key="sekret")
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200
        for method, path in (
            ("GET", "/v1/models"),
            ("GET", f"/v1/models/{MODEL_ID}"),
            ("POST", "/v1/chat/completions"),
        ):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekret"}):
                r = c.request(method, path, headers=headers, json={"messages": Q, "max_tokens": 2})
                err = _error(r, 401)
                assert "API key" in err["message"] and r.headers["www-authenticate"] == "Bearer"
        ok = {"Authorization": "Bearer sekret"}
        assert c.get("/v1/models", headers=ok).status_code == 200
        r = c.post("/v1/chat/completions", headers=ok, json={"messages": Q, "max_tokens": 2, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


def test_queue_full_gives_503(backend: C2CBackend, wait_until) -> None:
    engine = Engine(backend, ServeLimits(max_batch_size=1, max_queue=1, max_new_tokens=4000, batch_window_s=0))
    app = create_app(engine)
    with TestClient(app) as c:
        params = engine.make_params(max_tokens=4000, temperature=0)
        running = engine.submit(Q, params)
        assert wait_until(lambda: engine.active == 1)  # the worker took it: one slot busy
        queued = engine.submit(Q, params)  # fills the queue of one
        try:
            r = c.post("/v1/chat/completions", json={"messages": Q, "max_tokens": 2})
            err = _error(r, 503)
            assert err["code"] == "queue_full" and r.headers["retry-after"] == "1"
        finally:
            running.cancel()
            queued.cancel()
        r = c.post("/v1/chat/completions", json={"messages": Q, "max_tokens": 2})  # served again afterwards
        assert r.status_code == 200


def test_page_is_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for needle in ('id="prompt"', 'id="answer-receiver"', 'id="answer-t2t"', 'id="answer-c2c"', "/static/app.js"):
        assert needle in page.text
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "/v1/chat/completions" in js.text
    assert client.get("/static/style.css").status_code == 200
