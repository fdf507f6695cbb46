"""The comparison page in headless Chromium (Debian's ``chromium`` driven by Playwright, no browser download).

``.ci/install-browser.sh`` installs both; locally the test is skipped when they are missing, in CI it fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from c2c.serve.app import create_app
from c2c.serve.backend import C2CBackend
from c2c.serve.engine import Engine, ServeLimits

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# The machine's network is closed: without these flags Chromium hangs on connection attempts.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _require_browser() -> None:
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package")
    if not os.path.exists(CHROMIUM):
        missing.append("chromium")
    if missing:
        msg = f"{' and '.join(missing)} missing; run .ci/install-browser.sh"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def _ask_on_page(url: str, tmp_path: Path, prompt: str) -> dict:
    """Load the page, enter the key, ask ``prompt``; returns answers, note, header text and request log."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = ctx.new_page()
            page.set_default_timeout(60_000)
            log: list[tuple[str, str, str]] = []  # (event, path, mode) of every generation request
            for event in ("request",):
                page.on(
                    event,
                    lambda r, event=event: (
                        log.append((event, r.url.split("/", 3)[-1], (r.post_data_json or {}).get("mode", "")))
                        if r.method == "POST"
                        else None
                    ),
                )
            page.goto(url + "/")
            expect(page.locator("#model-info")).to_contain_text("API key")  # key not entered yet: 401
            page.fill("#api-key", "page-key")
            page.dispatch_event("#api-key", "change")
            expect(page.locator("#model-info")).to_contain_text("receiver")
            page.fill("#max-tokens", "8")
            page.fill("#prompt", prompt)
            page.click("#send")
            for mode in ("receiver", "t2t", "c2c"):
                expect(page.locator(f"#status-{mode}")).to_have_class("status done")
                expect(page.locator(f"#latency-{mode}")).to_contain_text("first token")
                expect(page.locator(f"#latency-{mode}")).to_contain_text("queued")
            expect(page.locator("#send")).to_be_enabled()
            out = {
                "answers": {m: page.locator(f"#answer-{m}").text_content() for m in ("receiver", "t2t", "c2c")},
                "note": page.locator("#note-t2t").text_content(),
                "note_visible": page.locator("#note-t2t-box").is_visible(),
                "header": page.locator("header").inner_text(),
                "log": log,
            }
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            return out
        finally:
            ctx.close()


class ResponseOrder:
    """ASGI wrapper logging when each POST arrives and when its response's last byte is sent."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.log: list[tuple[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        self.log.append(("start", scope["path"]))

        async def logged(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.log.append(("end", scope["path"]))

        await self.app(scope, receive, logged)


def _check_sequential(browser_log: list[tuple[str, str, str]], server: ResponseOrder, path: str) -> None:
    """The page asks receiver, T2T, C2C in turn, and the server receives each request only after it sent
    the last byte of the previous answer: none waits behind another."""
    assert [(p, m) for _, p, m in browser_log] == [(path, m) for m in ("receiver", "t2t", "c2c")], browser_log
    assert server.log == [(e, "/" + path) for _ in range(3) for e in ("start", "end")], server.log


@pytest.mark.slow
def test_page_streams_three_answers(backend: C2CBackend, c2c_model, live_server, saved_pair, tmp_path: Path) -> None:
    _require_browser()
    engine = Engine(backend, ServeLimits(max_new_tokens=64))
    prompt = "What is the capital of France?"
    server = ResponseOrder(create_app(engine, api_key="page-key"))
    with live_server(server) as url:
        out = _ask_on_page(url, tmp_path, prompt)
    q = [{"role": "user", "content": prompt}]
    answers = out["answers"]
    assert answers["receiver"] == c2c_model.generate(q, mode="receiver", max_new_tokens=8)
    assert answers["c2c"] == c2c_model.generate(q, mode="c2c", max_new_tokens=8)
    assert answers["c2c"] != answers["receiver"]
    assert out["note"] and out["note_visible"] and answers["t2t"]
    _check_sequential(out["log"], server, "v1/chat/completions")
    # The page says how it timed the paths, and its header names the models without local paths.
    assert "one after another" in out["header"] and "none waits behind another" in out["header"]
    assert str(saved_pair.fuser_dir.parent) not in out["header"] and "/tmp" not in out["header"]
    assert "receiver receiver" in out["header"] and "sharer sharer" in out["header"]


@pytest.mark.slow
def test_page_sends_plain_text_to_a_plain_text_fuser(text_backend: C2CBackend, live_server, tmp_path: Path) -> None:
    _require_browser()
    engine = Engine(text_backend, ServeLimits(max_new_tokens=64))
    prompt = "The capital of France is"
    server = ResponseOrder(create_app(engine, api_key="page-key"))
    with live_server(server) as url:
        out = _ask_on_page(url, tmp_path, prompt)
    _check_sequential(out["log"], server, "v1/completions")
    model = text_backend.model
    assert out["answers"]["receiver"] == model.generate(prompt, mode="receiver", max_new_tokens=8)
    assert out["answers"]["c2c"] == model.generate(prompt, mode="c2c", max_new_tokens=8)
    assert out["note"] and "plain text" in out["header"]
