"""The comparison page in headless Chromium (Debian's ``chromium`` driven by Playwright, no browser download).

``.ci/install-browser.sh`` installs both; locally the test is skipped when they are missing, in CI it fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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


@pytest.mark.slow
def test_page_streams_three_answers(backend: C2CBackend, c2c_model, live_server, tmp_path: Path) -> None:  # noqa: ANN001
    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    engine = Engine(backend, ServeLimits(max_new_tokens=64))
    prompt = "What is the capital of France?"
    with live_server(create_app(engine, api_key="page-key")) as url, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = ctx.new_page()
            page.set_default_timeout(60_000)
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
            answers = {m: page.locator(f"#answer-{m}").text_content() for m in ("receiver", "t2t", "c2c")}
            note = page.locator("#note-t2t").text_content()
            assert page.locator("#note-t2t-box").is_visible()
            expect(page.locator("#send")).to_be_enabled()
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        finally:
            ctx.close()
    q = [{"role": "user", "content": prompt}]
    assert answers["receiver"] == c2c_model.generate(q, mode="receiver", max_new_tokens=8)
    assert answers["c2c"] == c2c_model.generate(q, mode="c2c", max_new_tokens=8)
    assert answers["c2c"] != answers["receiver"]
    assert note and answers["t2t"]
