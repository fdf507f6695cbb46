#!/usr/bin/env bash
# Installs what the serving page test (tests/serve/test_page_browser.py) needs:
# Debian's headless-capable `chromium` and the Python `playwright` driver package.
# Playwright never downloads a browser here: the test launches /usr/bin/chromium
# through `executable_path`. Idempotent: does nothing when both are present.
set -euo pipefail

if ! command -v chromium >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

PY="${PYTHON:-$(command -v python3 || command -v python)}"
if ! "$PY" -c "import playwright.sync_api" >/dev/null 2>&1; then
  # The wheel ships its own node driver; no browser download happens.
  "$PY" -m pip install -q "playwright>=1.40"
fi

chromium --version 2>/dev/null || true
"$PY" -c "import playwright, importlib.metadata as m; print('playwright', m.version('playwright'))"
