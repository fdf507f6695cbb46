"""Building a :class:`~c2c.serve.vllm.engine.VLLMEngine`: start (or attach to) the vLLM servers, then wire them.

``launch_engine(backend, limits, VLLMOptions(...))`` is the Python entry point behind ``c2c serve FUSER
--engine vllm``. By default it starts two vLLM servers as child processes (the receiver's, with C2C's KV
connector, and the sharer's); ``receiver_url`` / ``sharer_url`` attach to servers started elsewhere
instead (see :func:`~c2c.serve.vllm.server.vllm_command` for the command they must run).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from c2c.serve.engine import ServeLimits
from c2c.serve.vllm.client import VLLMClient
from c2c.serve.vllm.engine import VLLMEngine
from c2c.serve.vllm.handover import HandoverStore
from c2c.serve.vllm.prefill import check_receiver
from c2c.serve.vllm.server import (
    VLLMServer,
    VLLMServerConfig,
    VLLMUnavailable,
    check_vllm,
    cpu_binding,
    find_vllm_python,
    vllm_version,
)

log = logging.getLogger("c2c.serve")


@dataclass
class VLLMOptions:
    """How the vLLM side runs. Server settings apply to both servers unless named for one."""

    python: str | None = None
    """Python of the vLLM environment (default: ``.venv-vllm`` of this checkout, ``$C2C_VLLM_PYTHON``)."""
    receiver_url: str | None = None
    """Attach to a running receiver server (started with C2C's connector) instead of starting one."""
    sharer_url: str | None = None
    """Attach to a running sharer server instead of starting one."""
    sharer: bool = True
    """Serve the sharer too (sharer and T2T modes); off: C2C and receiver modes only."""
    api_key: str | None = None
    """Bearer key of attached servers, if they require one."""
    tensor_parallel_size: int = 1
    gpu_memory_utilization: tuple[float, float] | None = None
    """Fractions of the GPU for the receiver's and the sharer's server (None: 0.45 and 0.25 on a GPU)."""
    cpu_kv_cache_gib: int = 2
    """KV cache of each server on vLLM-CPU, in whole GiB (VLLM_CPU_KVCACHE_SPACE)."""
    block_size: int | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    enforce_eager: bool | None = None
    """None: on for vLLM-CPU (no compiler there), off on a GPU."""
    extra_args: list[str] = field(default_factory=list)
    handover_dir: str = "/dev/shm"
    startup_timeout_s: float = 900.0
    log_dir: str | None = None


def launch_engine(backend: Any, limits: ServeLimits | None = None, options: VLLMOptions | None = None) -> VLLMEngine:
    """A started-up (servers ready; call ``start()``) engine serving ``backend``'s fuser with vLLM.

    Raises :class:`~c2c.serve.vllm.server.VLLMUnavailable` when vLLM is missing, untested or does not start,
    and ValueError for a pair the vLLM engine cannot serve; servers it started are stopped again then.
    """
    opts = options or VLLMOptions()
    limits = limits or ServeLimits()
    check_receiver(backend.model)
    handover = HandoverStore(opts.handover_dir)
    model = backend.model
    want_sharer = opts.sharer and any(m in backend.info.modes for m in ("sharer", "t2t"))
    servers: list[VLLMServer] = []
    try:
        needs_launch = opts.receiver_url is None or (want_sharer and opts.sharer_url is None)
        python, cpu = "", False
        if needs_launch:
            python = find_vllm_python(opts.python)
            version = check_vllm(python)
            cpu = _is_cpu_build(python)
            log.info("vLLM %s%s at %s", version, " (CPU build)" if cpu else "", python)
        receiver_name = f"{backend.info.model_id}-receiver"
        sharer_name = f"{backend.info.model_id}-sharer"
        if opts.receiver_url is None:
            servers.append(VLLMServer(_config(opts, model.receiver, receiver_name, limits, cpu, 0, connector=True),
                                      python, log_path=_log_path(opts, "receiver")))  # fmt: skip
        if want_sharer and opts.sharer_url is None:
            servers.append(VLLMServer(_config(opts, model.sharers[0], sharer_name, limits, cpu, 1, connector=False),
                                      python, log_path=_log_path(opts, "sharer")))  # fmt: skip
        for s in servers:
            s.start()
        _wait_all(servers, opts.startup_timeout_s)
        by_name = {s.cfg.served_name: s.url for s in servers}
        receiver_url = opts.receiver_url or by_name[receiver_name]
        if opts.receiver_url is not None:
            receiver_name = served_model(opts.receiver_url, opts.api_key)
        receiver = VLLMClient(receiver_url, receiver_name, api_key=opts.api_key)
        sharer = None
        if want_sharer:
            if opts.sharer_url is not None:
                sharer_name = served_model(opts.sharer_url, opts.api_key)
            sharer = VLLMClient(opts.sharer_url or by_name[sharer_name], sharer_name, api_key=opts.api_key)
        log.info("engine: vLLM (receiver at %s%s)", receiver_url, f", sharer at {sharer.base_url}" if sharer else "")
        return VLLMEngine(backend, limits, receiver=receiver, sharer=sharer, handover=handover, servers=servers)
    except BaseException:
        for s in servers:
            s.stop()
        handover.close()
        raise


def served_model(url: str, api_key: str | None = None) -> str:
    """The model a running vLLM server serves (its first ``/v1/models`` entry)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(url.rstrip("/") + "/v1/models", headers=headers, timeout=10.0)
        r.raise_for_status()
        return str(r.json()["data"][0]["id"])
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
        raise VLLMUnavailable(f"no vLLM server answers at {url} ({type(e).__name__}: {e}); start it first") from e


def _config(opts: VLLMOptions, hf_model: Any, name: str, limits: ServeLimits, cpu: bool, which: int,
            *, connector: bool) -> VLLMServerConfig:  # fmt: skip
    gpu_util = None
    if not cpu:
        gpu_util = (opts.gpu_memory_utilization or (0.45, 0.25))[which]
    return VLLMServerConfig(
        model=str(getattr(hf_model, "name_or_path", "") or ""),
        served_name=name,
        connector=connector,
        # Same weights dtype as the HF models that fuse, so the fused rows mean the same thing to vLLM.
        dtype=str(hf_model.dtype).removeprefix("torch."),
        max_num_seqs=limits.max_batch_size,
        max_model_len=opts.max_model_len,
        block_size=opts.block_size,
        tensor_parallel_size=opts.tensor_parallel_size,
        gpu_memory_utilization=gpu_util,
        enable_prefix_caching=opts.enable_prefix_caching,
        enforce_eager=cpu if opts.enforce_eager is None else opts.enforce_eager,
        cpu_kv_cache_gib=opts.cpu_kv_cache_gib if cpu else None,
        cpu_threads_bind=_cpu_threads_bind(opts.tensor_parallel_size) if cpu else None,
        extra_args=list(opts.extra_args),
    )


def _cpu_threads_bind(ranks: int) -> str | None:
    """vLLM-CPU with several ranks on a one-NUMA-node machine needs the cores split by hand (unless set)."""
    if ranks <= 1 or "VLLM_CPU_OMP_THREADS_BIND" in os.environ:
        return None
    return cpu_binding(ranks, sorted(os.sched_getaffinity(0)))


def _log_path(opts: VLLMOptions, role: str) -> str | None:
    if opts.log_dir is None:
        return None
    os.makedirs(opts.log_dir, exist_ok=True)
    return os.path.join(opts.log_dir, f"vllm-{role}.log")


def _is_cpu_build(python: str) -> bool:
    """vllm-cpu installs as its own distribution; the GPU build is ``vllm``."""
    import subprocess

    code = "import importlib.metadata as m\ntry:\n    m.version('vllm-cpu'); print(1)\nexcept Exception:\n    print(0)"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    return out.stdout.strip() == "1"


def _wait_all(servers: list[VLLMServer], timeout_s: float) -> None:
    """Wait for every server in parallel (each takes most of a minute on a CPU); re-raise the first failure."""
    if not servers:
        return
    with ThreadPoolExecutor(len(servers)) as pool:
        for future in [pool.submit(s.wait_ready, timeout_s) for s in servers]:
            future.result()


__all__ = ["VLLMOptions", "launch_engine", "vllm_version"]
