#!/usr/bin/env bash
# One-time, idempotent set-up of a fresh clone: PyTorch (CPU wheel first, so no multi-GB CUDA build is
# pulled), then c2c with its test and serving extras, then the headless browser for the page test, then
# vLLM in its own environment (scripts/setup_vllm.sh; C2C_SKIP_VLLM=1 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  # Installed before anything that depends on torch: pip then keeps this build.
  "$PY" -m pip install -q "torch==2.13.0" || "$PY" -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
fi
# (Re)install when c2c is missing, lacks its extras, or resolves to another checkout than this one. The
# code-health tools (ruff, mypy, import-linter) are pinned exactly in pyproject.toml: another version installed
# earlier counts as missing, or tests/test_code_health.py would judge with it.
here="$(cd src/c2c && pwd -P)"
there="$("$PY" -c "import os, c2c; print(os.path.dirname(os.path.realpath(c2c.__file__)))" 2>/dev/null || true)"
extras_ok() {
  "$PY" - >/dev/null 2>&1 <<'EOF'
import re
from importlib.metadata import version

import fastapi, hypothesis, importlinter, mypy, openai, playwright, ruff  # noqa: F401, E401

pins = re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', open("pyproject.toml").read())
raise SystemExit(any(version(name) != want for name, want in pins))
EOF
}
if [ "$here" != "$there" ] || ! extras_ok || [ "${C2C_REINSTALL:-0}" = 1 ]; then
  "$PY" -m pip install -q -e ".[test,serve]"
fi
PYTHON="$PY" bash .ci/install-browser.sh >/dev/null
# vLLM in its own environment, for `c2c serve --engine vllm` and its tests (C2C_SKIP_VLLM=1 skips it).
if [ "${C2C_SKIP_VLLM:-0}" != 1 ]; then
  PYTHON="$PY" bash scripts/setup_vllm.sh
fi
"$PY" -c "import c2c, torch, transformers; print(f'c2c {c2c.__version__}  torch {torch.__version__}  transformers {transformers.__version__}')"
