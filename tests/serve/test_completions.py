"""``/v1/completions`` (plain-text prompts), the fuser's recorded prompt format (one rule for every mode and
entry point), stock OpenAI clients against a 256-position model, auth before the body, HEAD."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import openai
import pytest
from fastapi.testclient import TestClient

from c2c.serve.app import create_app
from c2c.serve.backend import C2CBackend
from c2c.serve.chat import ChatSession
from c2c.serve.engine import Engine, ServeLimits

MODEL_ID = "tiny-c2c"
Q = [{"role": "user", "content": "What is the capital of France?"}]
TEXT = "The capital of France is"


@pytest.fixture(scope="module")
def client(backend: C2CBackend) -> Iterator[TestClient]:
    with TestClient(create_app(Engine(backend, ServeLimits(max_new_tokens=32)))) as c:
        yield c


def sse(client: TestClient, path: str, body: dict) -> list[dict | str]:
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        text = "".join(r.iter_text())
    return [b[6:] if b[6:] == "[DONE]" else json.loads(b[6:]) for b in text.split("\n\n") if b.strip()]


@pytest.mark.parametrize("mode", ["c2c", "receiver", "sharer"])
def test_completion_matches_generate_on_text(client: TestClient, c2c_model, mode: str) -> None:
    r = client.post("/v1/completions", json={"prompt": TEXT, "max_tokens": 6, "temperature": 0, "mode": mode})
    assert r.status_code == 200, r.text
    out = r.json()
    ref = c2c_model.generate(TEXT, mode=mode, max_new_tokens=6, return_dict=True)
    assert out["object"] == "text_completion" and out["model"] == MODEL_ID and out["mode"] == mode
    assert out["id"].startswith("cmpl-")
    choice = out["choices"][0]
    assert choice["text"] == ref.texts[0] and choice["index"] == 0 and choice["finish_reason"] in ("stop", "length")
    assert out["usage"]["prompt_tokens"] == ref.prompt_tokens[0]
    assert out["usage"]["completion_tokens"] == len(ref.sequences[0])
    streamed = sse(client, "/v1/completions", {"prompt": TEXT, "max_tokens": 6, "temperature": 0, "mode": mode})
    assert streamed[-1] == "[DONE]"
    chunks = [c for c in streamed if isinstance(c, dict)]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == ref.texts[0]
    assert chunks[-1]["choices"][0]["finish_reason"] == choice["finish_reason"] and chunks[-1]["usage"] == out["usage"]


def test_completion_t2t_and_prompt_lists(client: TestClient, c2c_model) -> None:
    out = client.post("/v1/completions", json={"prompt": TEXT, "max_tokens": 4, "temperature": 0, "mode": "t2t"}).json()
    assert out["choices"][0]["note"] and out["choices"][0]["timings"]["sharer_note"] > 0
    prompts = [TEXT, "Water boils at", "One plus one is"]
    out = client.post("/v1/completions", json={"prompt": prompts, "max_tokens": 5, "temperature": 0}).json()
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert [c["text"] for c in out["choices"]] == [c2c_model.generate(p, max_new_tokens=5) for p in prompts]
    assert out["usage"]["completion_tokens"] == sum(
        len(s) for s in c2c_model.generate(prompts, max_new_tokens=5, return_dict=True).sequences
    )
    chunks = [
        c
        for c in sse(client, "/v1/completions", {"prompt": prompts, "max_tokens": 5, "temperature": 0})
        if isinstance(c, dict)
    ]
    for i, p in enumerate(prompts):
        assert (
            "".join(c["choices"][0]["text"] for c in chunks if c["choices"][0]["index"] == i)
            == out["choices"][i]["text"]
        )
    assert sum(1 for c in chunks if c["choices"][0].get("finish_reason")) == 3
    assert chunks[-1]["usage"] == out["usage"]


def test_openai_client_completions(client: TestClient, c2c_model) -> None:
    oai = openai.OpenAI(base_url="http://testserver/v1", api_key="-", http_client=client, max_retries=0)
    r = oai.completions.create(
        model=MODEL_ID, prompt=TEXT, max_tokens=6, temperature=0, extra_body={"mode": "receiver"}
    )
    assert r.choices[0].text == c2c_model.generate(TEXT, mode="receiver", max_new_tokens=6)
    stream = oai.completions.create(model=MODEL_ID, prompt=TEXT, max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == c2c_model.generate(TEXT, max_new_tokens=6)


def test_stock_openai_client_without_max_tokens_on_a_256_context(short_backend: C2CBackend) -> None:
    """No max_tokens: the server's default, lowered to what the 256 positions leave after the prompt."""
    limits = ServeLimits(max_new_tokens=512, default_max_tokens=512, max_prompt_tokens=2048)
    with TestClient(create_app(Engine(short_backend, limits))) as c:
        oai = openai.OpenAI(base_url="http://testserver/v1", api_key="-", http_client=c, max_retries=0)
        for mode in ("c2c", "receiver", "sharer", "t2t"):
            r = oai.chat.completions.create(model=MODEL_ID, messages=Q, temperature=0, extra_body={"mode": mode})  # type: ignore[arg-type]
            assert r.usage is not None and r.usage.prompt_tokens + r.usage.completion_tokens <= 256
            r2 = oai.completions.create(model=MODEL_ID, prompt=TEXT, temperature=0, extra_body={"mode": mode})
            assert r2.usage is not None and r2.usage.prompt_tokens + r2.usage.completion_tokens <= 256


@pytest.mark.parametrize("which", ["text", "no_template"])
def test_one_prompt_rule_everywhere(request: pytest.FixtureRequest, which: str) -> None:
    """A plain-text fuser, or a pair without chat templates: chat is refused in every mode (never a made-up
    ``role: content`` rendering in one mode and an error in another), plain text is served in every mode,
    and the model card, the terminal chat and the page (via the card) follow the same rule."""
    backend: C2CBackend = request.getfixturevalue(f"{which}_backend")
    assert backend.info.chat_refusal and "/v1/completions" in backend.info.chat_refusal
    with TestClient(create_app(Engine(backend, ServeLimits(max_new_tokens=16)))) as c:
        card = c.get(f"/v1/models/{MODEL_ID}").json()
        assert card["endpoints"] == ["/v1/completions"] and card["chat_refusal"] == backend.info.chat_refusal
        assert card["prompt_format"] == ("text" if which == "text" else "chat")
        for mode in ("c2c", "receiver", "sharer", "t2t"):
            r = c.post("/v1/chat/completions", json={"messages": Q, "mode": mode, "max_tokens": 2})
            assert r.status_code == 400 and r.json()["error"]["code"] == "chat_not_supported", (mode, r.text)
            r = c.post("/v1/completions", json={"prompt": TEXT, "mode": mode, "max_tokens": 2, "temperature": 0})
            assert r.status_code == 200, (mode, r.text)
            assert r.json()["choices"][0]["text"] == backend.model.generate(
                TEXT if mode != "t2t" else backend._t2t_prompt(TEXT, r.json()["choices"][0]["note"]),
                mode="receiver" if mode == "t2t" else mode,
                max_new_tokens=2,
            )
    with Engine(backend, ServeLimits(max_new_tokens=16, batch_window_s=0)) as engine:
        out = io.StringIO()
        session = ChatSession(engine, max_tokens=4, temperature=0, out=out)
        assert session.plain_text
        assert session.ask(TEXT) == backend.model.generate(TEXT, max_new_tokens=4)
        assert session.history == []  # each line stands alone: a conversation has no plain-text rendering
        with pytest.raises(ValueError, match="system prompt"):
            ChatSession(engine, system="be brief")


def test_chat_fuser_card(client: TestClient) -> None:
    card = client.get("/v1/models").json()["data"][0]
    assert card["prompt_format"] == "chat" and card["chat_refusal"] is None
    assert card["endpoints"] == ["/v1/chat/completions", "/v1/completions"]
    assert card["context_length"] == 4096
    # Names only, never the server's local paths.
    assert card["receiver"] == "receiver" and card["sharers"] == ["sharer"]


def test_auth_is_checked_before_the_body(backend: C2CBackend) -> None:
    with TestClient(create_app(Engine(backend, ServeLimits()), api_key="sekret")) as c:
        bad_json = {"content": b"{not json", "headers": {"content-type": "application/json"}}
        for path in ("/v1/chat/completions", "/v1/completions"):
            r = c.post(path, **bad_json)  # type: ignore[arg-type]
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            r = c.post(path, content=b"x" * 2_000_000, headers={"content-type": "application/json"})
            assert r.status_code == 401
        for path in ("/docs", "/openapi.json", "/v1/models", "/nothing"):
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = {"Authorization": "Bearer sekret"}
        assert c.get("/docs", headers=ok).status_code == 200
        assert "/v1/completions" in c.get("/openapi.json", headers=ok).json()["paths"]
        r = c.post("/v1/chat/completions", headers={**ok, "content-type": "application/json"}, content=b"{not json")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        for path in ("/health", "/", "/static/app.js"):  # the page and its files load without the key
            assert c.get(path).status_code == 200, path


def test_head_answers_on_every_get_route(backend: C2CBackend) -> None:
    with TestClient(create_app(Engine(backend, ServeLimits()), api_key="k")) as c:
        ok = {"Authorization": "Bearer k"}
        for path in (
            "/health",
            "/v1/models",
            f"/v1/models/{MODEL_ID}",
            "/",
            "/static/app.js",
            "/docs",
            "/openapi.json",
        ):
            get, head = c.get(path, headers=ok), c.head(path, headers=ok)
            assert head.status_code == get.status_code == 200, path
            assert head.headers["content-type"] == get.headers["content-type"], path
            assert head.content == b"", path
        assert c.head("/v1/models").status_code == 401


def test_health_reports_shutdown(backend: C2CBackend) -> None:
    engine = Engine(backend, ServeLimits())
    with TestClient(create_app(engine)) as c:
        assert c.get("/health").json()["status"] == "ok"
        engine.begin_shutdown()
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "shutting down"
        r = c.post("/v1/chat/completions", json={"messages": Q, "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down" and r.headers["retry-after"] == "1"
