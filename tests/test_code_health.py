"""Code health in the test run: ruff (lint and format), mypy and the import layers, configured in pyproject.toml.

Each tool runs as a subprocess of this interpreter from the repository root; on failure the assertion message
is the tool's own report, which names the file and line.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["src", "tests", "bench", "examples"]


def run_tool(package: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python <args>`` in the repository root; fail with the fix when ``package`` is not installed."""
    if importlib.util.find_spec(package) is None:
        pytest.fail(f"{package} is not installed: install the test extra, `pip install -e '.[test]'`")
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def assert_clean(proc: subprocess.CompletedProcess[str], what: str) -> None:
    """Fail with the tool's report (file, line, finding) unless it exited 0."""
    if proc.returncode != 0:
        pytest.fail(f"{what} (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}", pytrace=False)


def test_ruff_check() -> None:
    proc = run_tool("ruff", "-m", "ruff", "check", "--no-fix", "--output-format", "concise", *CHECKED)
    assert_clean(proc, "ruff check reports findings; fix them (`ruff check --fix <file>` fixes the safe ones)")


def test_ruff_format() -> None:
    proc = run_tool("ruff", "-m", "ruff", "format", "--check", *CHECKED)
    assert_clean(proc, "ruff format would reformat these files; run `ruff format <file>`")


@pytest.mark.slow
def test_mypy() -> None:
    # Files and strictness come from [tool.mypy]; the default .mypy_cache makes later runs incremental.
    proc = run_tool("mypy", "-m", "mypy", "--no-color-output", timeout=600)
    assert_clean(proc, "mypy reports type errors")


def test_import_layers() -> None:
    # import-linter has no `python -m` entry point: call what its `lint-imports` script calls.
    call = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    proc = run_tool("importlinter", "-c", call, "--no-logo")
    assert_clean(proc, "an import breaks the layers in [tool.importlinter]; move the code to the right layer")
