"""Finding vLLM, refusing what does not fit, and the server's command line (no vLLM process needed)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from c2c.cli import app
from c2c.serve.vllm import server
from c2c.serve.vllm.server import VLLMServer, VLLMServerConfig, VLLMUnavailable


def _fake_python(tmp_path: Path, body: str) -> str:
    """An executable standing in for another environment's Python (prints a version, or exits)."""
    path = tmp_path / "python"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_the_receiver_server_loads_c2cs_connector_and_nothing_else_of_c2c():
    cfg = VLLMServerConfig(model="/m/receiver", served_name="r", connector=True, block_size=32, enforce_eager=True,
                           enable_prefix_caching=True, tensor_parallel_size=4, extra_args=["--seed", "1"])  # fmt: skip
    cmd = server.vllm_command(cfg, "/venv/bin/python", 8123)
    assert cmd[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert "--skip-tokenizer-init" in cmd and "--enable-prefix-caching" in cmd and "--enforce-eager" in cmd
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "4" and cmd[cmd.index("--block-size") + 1] == "32"
    kv = json.loads(cmd[cmd.index("--kv-transfer-config") + 1])
    assert kv == {"kv_connector": "C2CConnector", "kv_connector_module_path": "c2c_kv_connector",
                  "kv_role": "kv_consumer", "kv_load_failure_policy": "fail"}  # fmt: skip
    assert cmd[-2:] == ["--seed", "1"]
    env = server.vllm_env(cfg)
    assert env["PYTHONPATH"] == str(server.CONNECTOR_DIR)
    assert sorted(p.name for p in server.CONNECTOR_DIR.glob("*.py")) == ["__init__.py", "c2c_kv_connector.py",
                                                                          "c2c_kv_rows.py"]  # fmt: skip


def test_the_connector_imports_only_torch_vllm_and_the_stdlib():
    """It runs in vLLM's environment, where c2c's other dependencies (transformers 5.24) are absent."""
    import ast

    allowed = set(sys.stdlib_module_names) | {"torch", "vllm", "c2c_kv_rows", "__future__"}
    for name in ("c2c_kv_connector.py", "c2c_kv_rows.py"):
        tree = ast.parse((server.CONNECTOR_DIR / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{name} imports {roots - allowed}"


def test_the_sharer_server_is_plain_vllm():
    cmd = server.vllm_command(VLLMServerConfig(model="/m/s", served_name="s", enable_prefix_caching=False), "py", 1)
    assert "--kv-transfer-config" not in cmd and "--no-enable-prefix-caching" in cmd
    assert "PYTHONPATH" not in server.vllm_env(VLLMServerConfig(model="/m/s", served_name="s"))


def test_a_missing_vllm_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.delenv("C2C_VLLM_PYTHON", raising=False)
    monkeypatch.setenv("C2C_VLLM_VENV", str(tmp_path / "no-venv"))
    if server.vllm_version(sys.executable) is not None:
        pytest.skip("this Python has vLLM itself")
    with pytest.raises(VLLMUnavailable, match=r"setup_vllm\.sh"):
        server.find_vllm_python()
    with pytest.raises(VLLMUnavailable, match=r"not an executable Python"):
        server.find_vllm_python(str(tmp_path / "nowhere" / "python"))


@pytest.mark.parametrize("version, ok", [("0.32.0", True), ("0.32.3", True), ("0.31.2", False), ("0.40.0", False)])
def test_only_tested_vllm_versions_are_used(monkeypatch, tmp_path, version, ok):
    monkeypatch.delenv("C2C_VLLM_ALLOW_UNTESTED", raising=False)
    python = _fake_python(tmp_path, f"echo {version}")
    if ok:
        assert server.check_vllm(python) == version
    else:
        with pytest.raises(VLLMUnavailable, match=r"not supported.*C2C_VLLM_ALLOW_UNTESTED"):
            server.check_vllm(python)
        monkeypatch.setenv("C2C_VLLM_ALLOW_UNTESTED", "1")
        assert server.check_vllm(python) == version


def test_a_python_without_vllm_is_refused(tmp_path):
    with pytest.raises(VLLMUnavailable, match="has no vLLM"):
        server.check_vllm(_fake_python(tmp_path, "exit 1"))


def test_a_server_that_dies_while_starting_reports_its_log(tmp_path):
    python = _fake_python(tmp_path, "echo 'CUDA out of memory: cannot allocate the KV cache'; exit 3")
    s = VLLMServer(VLLMServerConfig(model="/m", served_name="r"), python, log_path=str(tmp_path / "vllm.log"))
    s.start()
    with pytest.raises(VLLMUnavailable, match=r"exited with code 3[\s\S]*cannot allocate the KV cache"):
        s.wait_ready(timeout_s=30)
    s.stop()


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--engine", "vllm"], {"C2C_VLLM_PYTHON": "/nonexistent/python"}, "setup_vllm.sh"),
        (["--engine", "magic"], {}, "--engine must be 'builtin' or 'vllm'"),
        (["--engine", "vllm", "--vllm-url", "http://127.0.0.1:9"], {}, "no vLLM server answers at"),
    ],
)
def test_serve_with_vllm_fails_clearly(saved_pair, args, env, message):
    result = CliRunner().invoke(app, ["serve", str(saved_pair.fuser_dir), "--no-warmup", "--no-vllm-sharer", *args],
                                env={**os.environ, **env})  # fmt: skip
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_the_printed_command_starts_a_server_c2c_can_attach_to(capsys, tmp_path):
    python = _fake_python(tmp_path, "echo 0.32.0")
    server.main(["--model", "/m/receiver", "--port", "8001", "--tensor-parallel-size", "2", "--python", python,
                 "--block-size", "64"])  # fmt: skip
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"PYTHONPATH={server.CONNECTOR_DIR} {python} -m vllm.entrypoints.openai.api_server")
    assert "--tensor-parallel-size 2" in line and "C2CConnector" in line and line.endswith("--block-size 64")
    server.main(["--model", "/m/sharer", "--sharer", "--python", python])
    line = capsys.readouterr().out.strip()
    assert "PYTHONPATH" not in line and "--kv-transfer-config" not in line


@pytest.mark.parametrize(
    "ranks, cores, bind",
    [(2, [0, 1], "0|1"), (2, [3, 2, 1, 0], "0,1|2,3"), (4, list(range(10)), "0,1|2,3|4,5|6,7"), (1, [5], "5")],
)
def test_vllm_cpu_ranks_get_their_own_cores(ranks, cores, bind):
    assert server.cpu_binding(ranks, cores) == bind


def test_more_ranks_than_cores_is_refused():
    with pytest.raises(ValueError, match="at least 3 CPU cores"):
        server.cpu_binding(3, [0, 1])
