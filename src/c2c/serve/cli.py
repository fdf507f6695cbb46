"""Command functions ``serve`` and ``chat`` (wired into the ``c2c`` typer app by :mod:`c2c.cli`).

Both load a saved fuser with the receiver and sharer recorded in its ``fuser_config.json`` (or given by
``--receiver`` / ``--sharer``). ``python -m c2c.serve.cli serve|chat ...`` runs them without the main CLI.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from c2c.cli_options import parse_dtype

if TYPE_CHECKING:  # the backend (and torch) load lazily, so that `c2c --help` starts fast
    from c2c.serve.backend import C2CBackend

from c2c.serve.engine import MODES, Engine, ServeLimits

FuserArg = Annotated[str, typer.Argument(help="Saved fuser folder (or hub id) from save_pretrained / c2c train.")]
ReceiverOpt = Annotated[
    Optional[str], typer.Option(help="Receiver model id or path (default: the one recorded in fuser_config.json).")
]
SharerOpt = Annotated[
    Optional[str], typer.Option(help="Sharer model id or path (default: the one recorded in fuser_config.json).")
]
DtypeOpt = Annotated[Optional[str], typer.Option(help="Weights dtype of the LLMs: float32, bfloat16 or float16.")]
DeviceOpt = Annotated[Optional[str], typer.Option(help="Device map for the LLMs, e.g. 'cpu', 'cuda', 'auto'.")]
EngineOpt = Annotated[
    str,
    typer.Option(
        help="builtin: c2c's own micro-batching engine. vllm: the receiver (and sharer) decode in vLLM "
        "servers (paged KV cache, continuous batching, tensor parallelism); c2c fuses and hands the fused "
        "rows over through vLLM's KV-connector API. Needs vLLM in its own environment: "
        "bash scripts/setup_vllm.sh"
    ),
]
ThreadsOpt = Annotated[
    Optional[int],
    typer.Option(
        help="CPU threads for torch (default: torch's choice). On a busy machine fewer threads avoid "
        "stalls: small models often run fastest with 1."
    ),
]


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise typer.BadParameter("--threads must be >= 1")
        import torch

        torch.set_num_threads(threads)


def _load(
    fuser: str, receiver: str | None, sharer: str | None, model_name: str | None, dtype: str | None, device: str | None
) -> C2CBackend:
    from c2c.serve.backend import load_backend

    kwargs: dict[str, object] = {}
    if dtype is not None:
        kwargs["dtype"] = parse_dtype(dtype)
    if device is not None:
        kwargs["device_map"] = device
    typer.echo(f"loading fuser {fuser} ...", err=True)
    try:
        return load_backend(fuser, receiver=receiver, sharer=sharer, model_id=model_name, **kwargs)
    except (OSError, ValueError) as e:  # missing folder, wrong pair, ...: the message says what to do
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_command(
    fuser: FuserArg,
    receiver: ReceiverOpt = None,
    sharer: SharerOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind; loopback by default.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[
        Optional[str],
        typer.Option(envvar="C2C_API_KEY", help="Require 'Authorization: Bearer KEY' on every route but /health."),
    ] = None,
    model_name: Annotated[Optional[str], typer.Option(help="Model id served (default: the fuser folder name).")] = None,
    max_prompt_tokens: Annotated[int, typer.Option(help="Longest prompt accepted (413 beyond).")] = 2048,
    max_tokens: Annotated[int, typer.Option(help="Largest max_tokens a request may ask (400 beyond).")] = 512,
    default_max_tokens: Annotated[
        int, typer.Option(help="max_tokens of requests that do not set it (lowered to what the context leaves).")
    ] = 256,
    max_concurrency: Annotated[int, typer.Option(help="Generations decoded together (micro-batch size).")] = 8,
    max_queue: Annotated[int, typer.Option(help="Requests that may wait; 503 beyond.")] = 64,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    warmup: Annotated[bool, typer.Option(help="Run each mode once before accepting requests.")] = True,
    threads: ThreadsOpt = None,
    engine: EngineOpt = "builtin",
    vllm_python: Annotated[
        Optional[str],
        typer.Option(
            help="vllm: Python of the vLLM environment (default: .venv-vllm of this checkout, $C2C_VLLM_PYTHON)."
        ),
    ] = None,
    vllm_url: Annotated[
        Optional[str],
        typer.Option(
            help="vllm: use this running receiver server (started with C2C's connector) instead of starting one."
        ),
    ] = None,
    vllm_sharer_url: Annotated[
        Optional[str], typer.Option(help="vllm: use this running sharer server instead of starting one.")
    ] = None,
    vllm_sharer: Annotated[bool, typer.Option(help="vllm: serve the sharer too (sharer and t2t modes).")] = True,
    tensor_parallel_size: Annotated[int, typer.Option(help="vllm: GPUs per vLLM server (tensor parallelism).")] = 1,
    vllm_gpu_memory: Annotated[
        Optional[str],
        typer.Option(help="vllm: GPU memory fractions of the receiver's and the sharer's server, e.g. 0.45,0.25."),
    ] = None,
    vllm_cpu_kv_cache_gib: Annotated[int, typer.Option(help="vllm-cpu: KV cache GiB of each server.")] = 2,
    vllm_arg: Annotated[
        Optional[list[str]],
        typer.Option(help="vllm: extra argument for both vLLM servers (repeat), e.g. --vllm-arg=--block-size=32."),
    ] = None,
    handover_dir: Annotated[
        str, typer.Option(help="vllm: where fused rows are handed to vLLM (a RAM disk on the same host).")
    ] = "/dev/shm",
) -> None:
    """Serve a fuser behind an OpenAI-compatible API, with a comparison page at /."""
    from c2c.serve.app import create_app
    from c2c.serve.server import run_server

    if not _is_loopback(host) and api_key is None:
        typer.echo(f"warning: serving on {host} without an API key; anyone who can reach it can use it", err=True)
    try:
        limits = ServeLimits(
            max_prompt_tokens=max_prompt_tokens,
            max_new_tokens=max_tokens,
            default_max_tokens=min(default_max_tokens, max_tokens),
            max_batch_size=max_concurrency,
            max_queue=max_queue,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    if engine not in ("builtin", "vllm"):
        raise typer.BadParameter(f"--engine must be 'builtin' or 'vllm', got {engine!r}")
    _set_threads(threads)
    backend = _load(fuser, receiver, sharer, model_name, dtype, device)
    if engine == "vllm":
        serving: Engine = _vllm_engine(backend, limits, vllm_python, vllm_url, vllm_sharer_url, vllm_sharer,
                                       tensor_parallel_size, vllm_gpu_memory, vllm_cpu_kv_cache_gib, vllm_arg or [],
                                       handover_dir, warmup)  # fmt: skip
    else:
        if warmup:
            from c2c.serve.backend import warmup as warm

            warm(backend)
        serving = Engine(backend, limits)
    app = create_app(serving, api_key=api_key)
    info = backend.info
    typer.echo(f"serving {info.model_id} on http://{host}:{port}/ (OpenAI base URL http://{host}:{port}/v1) "
               f"with the {engine} engine", err=True)  # fmt: skip
    if info.chat_refusal is not None:
        typer.echo(f"plain-text prompts only (/v1/completions): {info.chat_refusal}", err=True)
    # SIGINT / SIGTERM end open streams with an error event, then uvicorn waits for them to close.
    run_server(app, serving, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


def _vllm_engine(backend: Any, limits: ServeLimits, python: str | None, url: str | None, sharer_url: str | None,
                 with_sharer: bool, tp: int, gpu_memory: str | None, kv_gib: int, extra: list[str], handover_dir: str,
                 warmup: bool) -> Engine:  # fmt: skip
    from c2c.serve.vllm import VLLMOptions, VLLMUnavailable, launch_engine

    fractions = None
    if gpu_memory is not None:
        try:
            r, s = (float(x) for x in gpu_memory.split(","))
            fractions = (r, s)
        except ValueError as e:
            msg = f"--vllm-gpu-memory takes two fractions such as 0.45,0.25, got {gpu_memory!r}"
            raise typer.BadParameter(msg) from e
    opts = VLLMOptions(python=python, receiver_url=url, sharer_url=sharer_url, sharer=with_sharer,
                       tensor_parallel_size=tp, gpu_memory_utilization=fractions, cpu_kv_cache_gib=kv_gib,
                       extra_args=list(extra), handover_dir=handover_dir)  # fmt: skip
    typer.echo("starting the vLLM engine (vLLM servers take a minute or more to start) ...", err=True)
    try:
        eng = launch_engine(backend, limits, opts)
    except (VLLMUnavailable, ValueError) as e:  # missing/untested vLLM, a pair vLLM cannot serve: say what to do
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(eng.describe(), err=True)
    if warmup:
        try:
            eng.start()
            eng.warmup()
        except BaseException:
            eng.close()  # stops the vLLM servers it started
            raise
    return eng


def chat_command(
    fuser: FuserArg,
    receiver: ReceiverOpt = None,
    sharer: SharerOpt = None,
    mode: Annotated[str, typer.Option(help=f"Starting mode: {', '.join(MODES)} (switch with /mode).")] = "c2c",
    max_tokens: Annotated[
        int, typer.Option(help="New tokens per answer at most (lowered to what the context leaves).")
    ] = 256,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 = greedy.")] = 0.0,
    system: Annotated[Optional[str], typer.Option(help="System prompt.")] = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Chat with a fuser in the terminal: history, streaming answers, /mode to switch, Ctrl-D to quit."""
    from c2c.serve.chat import ChatSession, run_chat

    logging.getLogger("c2c.serve").setLevel(logging.ERROR)
    _set_threads(threads)
    backend = _load(fuser, receiver, sharer, None, dtype, device)
    if max_tokens < 1:
        raise typer.BadParameter("--max-tokens must be >= 1")
    limits = ServeLimits(
        max_new_tokens=max_tokens,
        default_max_tokens=max_tokens,
        max_queue=4,
        max_prompt_tokens=backend.info.context_length or 1_000_000,
        batch_window_s=0.0,
    )
    with Engine(backend, limits) as engine:
        try:  # max_tokens=None: the default above, lowered to what the context leaves after the prompt
            session = ChatSession(engine, mode=mode, max_tokens=None, temperature=temperature, system=system)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from e
        run_chat(session)


def main(argv: list[str] | None = None) -> None:
    """``python -m c2c.serve.cli serve|chat ...`` (the same commands as ``c2c serve|chat``)."""
    app = typer.Typer(add_completion=False, no_args_is_help=True)
    app.command("serve")(serve_command)
    app.command("chat")(chat_command)
    app(args=argv if argv is not None else sys.argv[1:], prog_name="c2c")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
