"""The demo's fuser behind `c2c serve`: the server prompts it the way it was trained (plain text, recorded in
its fuser_config.json) and answers the demo's test questions exactly as the Python API does."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from c2c.model import C2CModel
from c2c.serve.app import create_app
from c2c.serve.backend import C2CBackend
from c2c.serve.engine import Engine, ServeLimits

pytestmark = pytest.mark.slow


def test_the_demo_fuser_served_answers_like_the_python_api(quick_demo, live_server) -> None:
    out, results = quick_demo
    fuser = results["fuser_training"]["c2c"]["fuser_dir"]
    receiver, sharer = results["models"]["receiver"]["path"], results["models"]["sharer"]["path"]
    model = C2CModel.from_pretrained(fuser, receiver=receiver, sharer=sharer)
    assert model.config.prompt_format == "text"  # the demo trains on plain text, and the fuser says so
    rows = [json.loads(line) for line in Path(results["data_files"]["test"]).read_text().splitlines()][:12]
    questions = [r["prompt"] for r in rows]
    want = {mode: model.generate(questions, mode=mode, max_new_tokens=6) for mode in ("c2c", "receiver", "sharer")}
    assert any(t for texts in want.values() for t in texts)  # something to compare: not every answer is empty
    engine = Engine(C2CBackend(model, model_id="demo"), ServeLimits())
    with live_server(create_app(engine)) as url, httpx.Client(base_url=url, timeout=120) as client:
        chat = client.post(
            "/v1/chat/completions",
            json={"model": "demo", "messages": [{"role": "user", "content": questions[0]}], "max_tokens": 6},
        )
        assert chat.status_code == 400 and "/v1/completions" in chat.text  # no template the fuser never saw
        for mode, texts in want.items():
            got = []
            for q in questions:
                r = client.post(
                    "/v1/completions",
                    json={"model": "demo", "prompt": q, "max_tokens": 6, "temperature": 0, "mode": mode},
                )
                assert r.status_code == 200, r.text
                got.append(r.json()["choices"][0]["text"])
            assert got == texts, mode
