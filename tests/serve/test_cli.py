"""``serve`` as a real process: loads the fuser with the models recorded in its config, serves the OpenAI
API on loopback with an API key, and shuts down cleanly on SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from c2c.serve.cli import _is_loopback


def test_loopback_detection() -> None:
    assert _is_loopback("127.0.0.1") and _is_loopback("localhost") and _is_loopback("::1")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("example.org")


@pytest.mark.slow
def test_serve_command(saved_pair, c2c_model, free_port, tmp_path) -> None:
    port = free_port()
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "c2c.serve.cli",
            "serve",
            str(saved_pair.fuser_dir),
            "--port",
            str(port),
            "--max-tokens",
            "4000",
            "--model-name",
            "demo",
            "--log-level",
            "warning",
            "--threads",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "C2C_API_KEY": "env-key"},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        assert httpx.get(url + "/v1/models").status_code == 401  # the key came from C2C_API_KEY
        client = openai.OpenAI(base_url=url + "/v1", api_key="env-key", max_retries=0)
        q = [{"role": "user", "content": "What is the capital of France?"}]
        r = client.chat.completions.create(model="demo", messages=q, max_tokens=6, temperature=0)
        assert r.choices[0].message.content == c2c_model.generate(q, max_new_tokens=6)
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="demo", messages=q, max_tokens=4001)
        # SIGINT while a stream is open: the stream ends with an error event and [DONE], not a cut connection.
        events = []
        body = {"model": "demo", "messages": q, "max_tokens": 4000, "temperature": 0, "stream": True}
        with httpx.stream(
            "POST", url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer env-key"}, timeout=60
        ) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 3:
                        proc.send_signal(signal.SIGINT)
        assert events[-1] == "[DONE]" and '"shutting_down"' in events[-2], events[-3:]
        assert proc.wait(30) == 0
        assert f"serving demo on http://127.0.0.1:{port}/" in (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
