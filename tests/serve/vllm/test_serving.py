"""The OpenAI-compatible server over the vLLM engine: same surface, answers equal to the HF path's, and
``c2c serve --engine vllm`` as a real process attached to a running vLLM server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from c2c.serve.app import create_app

pytestmark = pytest.mark.slow

Q = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(vllm_engines):
    # The engine is shared and owned by the session fixture: the app neither starts nor closes it.
    with TestClient(create_app(vllm_engines["qwen3"], api_key="k", manage_engine=False)) as c:
        c.headers["Authorization"] = "Bearer k"
        yield c


def test_health_and_models_say_which_engine_serves(client):
    health = client.get("/health").json()
    assert health["engine"] == "vllm" and health["model"] == "tiny-qwen3"
    assert client.get("/v1/models").json()["data"][0]["modes"] == ["c2c", "receiver", "sharer", "t2t"]
    assert client.get("/").status_code == 200  # the comparison page


@pytest.mark.parametrize("mode", ["c2c", "receiver", "sharer"])
def test_chat_completion_equals_the_hf_path(client, hf_models, mode):
    r = client.post("/v1/chat/completions", json={"messages": Q, "mode": mode, "max_tokens": 10, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] == hf_models["qwen3"].generate(Q, mode=mode, max_new_tokens=10)
    assert body["usage"]["completion_tokens"] <= 10
    if mode == "c2c":
        t = body["timings"]
        assert t["fusion"] > 0 and t["handover"] > 0 and t["decode"] > 0


def test_streamed_c2c_answer_equals_the_hf_path(client, hf_models):
    body = {"messages": Q, "mode": "c2c", "max_tokens": 12, "temperature": 0, "stream": True}
    parts, final = [], None
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                parts.append(chunk["choices"][0]["delta"].get("content") or "")
                if chunk["choices"][0].get("finish_reason"):
                    final = chunk
    assert "".join(parts) == hf_models["qwen3"].generate(Q, max_new_tokens=12)
    assert final is not None and final["timings"]["first_token"] > 0


@pytest.mark.parametrize("mode", ["c2c", "receiver", "sharer"])
def test_plain_text_completions_equal_the_hf_path(client, hf_models, mode):
    """``/v1/completions``: text prompts (no chat template), several per request, fused together."""
    prompts = ["The castle stands on the hill", "Once upon a time, a dragon"]
    r = client.post("/v1/completions", json={"prompt": prompts, "mode": mode, "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.text
    want = [hf_models["qwen3"].generate(p, mode=mode, max_new_tokens=8) for p in prompts]
    assert [c["text"] for c in r.json()["choices"]] == want


def test_stop_strings_and_t2t_work_as_with_the_builtin_engine(client, hf_models):
    full = hf_models["qwen3"].generate(Q, mode="receiver", max_new_tokens=12)
    stop = full[3:5]
    r = client.post(
        "/v1/chat/completions",
        json={"messages": Q, "mode": "receiver", "max_tokens": 12, "temperature": 0, "stop": [stop]},
    )
    assert r.json()["choices"][0]["message"]["content"] == full[: full.index(stop)]
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    t2t = client.post("/v1/chat/completions", json={"messages": Q, "mode": "t2t", "max_tokens": 6, "temperature": 0})
    assert t2t.status_code == 200 and t2t.json()["note"] is not None and t2t.json()["timings"]["sharer_note"] > 0


def test_limits_and_auth_are_unchanged(client):
    assert client.post("/v1/chat/completions", json={"messages": Q, "max_tokens": 100_000}).status_code == 400
    assert (
        client.post("/v1/chat/completions", json={"messages": Q}, headers={"Authorization": "Bearer x"}).status_code
        == 401
    )


def test_serve_command_attached_to_a_running_vllm(vllm_engines, vllm_pairs, hf_models, free_port, tmp_path):
    """``c2c serve --engine vllm --vllm-url``: a c2c fusion service in front of a vLLM server started elsewhere."""
    port = free_port()
    receiver_url = vllm_engines["qwen3"].receiver.base_url
    with open(tmp_path / "serve.log", "w+") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "c2c.serve.cli", "serve", str(vllm_pairs["qwen3"].fuser_dir), "--port", str(port),
             "--engine", "vllm", "--vllm-url", receiver_url, "--no-vllm-sharer", "--model-name", "attached",
             "--log-level", "warning", "--threads", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(),
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.3)
        assert httpx.get(url + "/health").json()["engine"] == "vllm"
        oai = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        r = oai.chat.completions.create(model="attached", messages=Q, max_tokens=8, temperature=0)
        assert r.choices[0].message.content == hf_models["qwen3"].generate(Q, max_new_tokens=8)
        with pytest.raises(openai.BadRequestError):  # no sharer server was attached
            oai.chat.completions.create(model="attached", messages=Q, max_tokens=8, extra_body={"mode": "sharer"})
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        text = (tmp_path / "serve.log").read_text()
        assert "with the vllm engine" in text and f"at {receiver_url}; hand-over via /dev/shm; attached" in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
