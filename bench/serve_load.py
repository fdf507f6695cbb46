"""Load check of ``c2c serve``: N concurrent streaming clients on loopback, JSON out.

Starts the real server (``python -m c2c.serve.cli serve``) as a subprocess, warms it up, then fires
``--clients`` streaming chat completions at once (each a different question) and records requests
completed, errors, time to first token (median / p95), end-to-end latency, throughput, the micro-batch
sizes the server reported and the server's peak resident memory (``VmHWM`` from ``/proc``).

Models: ``--fuser DIR`` serves a saved fuser (e.g. the demo's trained one, with its recorded receiver and
sharer). Without it, a pair with the demo's architectures and sizes (:data:`c2c.demo.lms.RECEIVER` /
``SHARER``, random weights, fuser gates open so fusion really runs) is built into a temporary folder:
answers are garbage, timings and memory are those of the demo pair.

    python bench/serve_load.py --clients 32 --out bench/results/serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx


def build_demo_sized_pair(root: Path, fuser_hidden: int) -> dict[str, Any]:
    """Random models of the demo pair's architectures + a fresh fuser, saved the way real ones are."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from c2c.demo.lms import RECEIVER, SHARER, build_model
    from c2c.fuser import FuserConfig
    from c2c.model import C2CModel
    from c2c.testing.tokenizers import build_tokenizer

    torch.manual_seed(0)
    paths = {}
    for role, lm in (("receiver", RECEIVER), ("sharer", SHARER)):
        tok = build_tokenizer(None, lm.vocab_size, chat_template=lm.chat_template)
        model = build_model(lm, tok)
        paths[role] = root / role
        model.save_pretrained(paths[role])
        tok.save_pretrained(paths[role])
    receiver = AutoModelForCausalLM.from_pretrained(str(paths["receiver"])).eval()
    sharer = AutoModelForCausalLM.from_pretrained(str(paths["sharer"])).eval()
    fuser_config = FuserConfig(hidden_size=fuser_hidden, intermediate_size=fuser_hidden, gate_init=2.0, dropout=0.0)
    model = C2CModel.from_models(
        receiver,
        sharer,
        fuser_config=fuser_config,
        receiver_tokenizer=AutoTokenizer.from_pretrained(str(paths["receiver"])),
        sharer_tokenizer=AutoTokenizer.from_pretrained(str(paths["sharer"])),
        seed=0,
    )
    fuser_dir = root / "demo-sized-fuser"
    model.save_pretrained(str(fuser_dir))
    count = lambda m: sum(p.numel() for p in m.parameters())
    return {
        "fuser": str(fuser_dir),
        "kind": "demo-sized random pair (c2c.demo.lms RECEIVER/SHARER architectures, untrained)",
        "receiver": {"family": RECEIVER.family, "parameters": count(receiver)},
        "sharer": {"family": SHARER.family, "parameters": count(sharer)},
        "fuser_parameters": sum(p.numel() for p in model.fusers.parameters()),
        "fuser_config": {"hidden_size": fuser_hidden, "intermediate_size": fuser_hidden, "gate_init": 2.0},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[k]


async def one_client(client: httpx.AsyncClient, i: int, args: argparse.Namespace) -> dict[str, Any]:
    body = {
        "messages": [{"role": "user", "content": f"Question {i}: where does entity number {i} live, and why?"}],
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "stream": True,
        "mode": args.mode,
    }
    t0 = time.perf_counter()
    ttft = None
    final: dict[str, Any] | None = None
    done = False
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return {"ok": False, "error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    continue
                chunk = json.loads(data)
                if "error" in chunk:
                    return {"ok": False, "error": chunk["error"]["message"]}
                if chunk["choices"][0]["delta"].get("content") and ttft is None:
                    ttft = time.perf_counter() - t0
                if chunk["choices"][0].get("finish_reason"):
                    final = chunk
    except httpx.HTTPError as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    if not done or final is None:
        return {"ok": False, "error": "stream ended without a final chunk and [DONE]"}
    return {
        "ok": True,
        "ttft": ttft,
        "latency": time.perf_counter() - t0,
        "completion_tokens": final["usage"]["completion_tokens"],
        "finish_reason": final["choices"][0]["finish_reason"],
        "batch_size": final["timings"]["batch_size"],
        "server_first_token": final["timings"].get("first_token"),
    }


async def run_load(url: str, args: argparse.Namespace) -> tuple[list[dict[str, Any]], float]:
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=limits) as client:
        await one_client(client, -1, args)  # warm-up (first calls pay one-off costs)
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one_client(client, i, args) for i in range(args.clients)))
        return list(results), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fuser", help="saved fuser folder; default: build a demo-sized random pair")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-concurrency", type=int, default=16, help="server micro-batch size")
    ap.add_argument("--mode", default="c2c", choices=["c2c", "receiver", "sharer", "t2t"])
    ap.add_argument("--fuser-hidden", type=int, default=256, help="fuser width of the built pair")
    ap.add_argument("--threads", type=int, default=None, help="server torch threads (default: torch's choice)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", default="bench/results/serve_load.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="c2c-serve-load-") as tmp:
        pair = (
            {"fuser": args.fuser, "kind": "saved fuser"}
            if args.fuser
            else build_demo_sized_pair(Path(tmp), args.fuser_hidden)
        )
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [
            sys.executable,
            "-m",
            "c2c.serve.cli",
            "serve",
            pair["fuser"],
            "--port",
            str(port),
            "--max-concurrency",
            str(args.max_concurrency),
            "--max-queue",
            str(max(64, args.clients)),
            "--max-tokens",
            str(max(args.max_tokens, 1)),
            "--log-level",
            "warning",
        ] + (["--threads", str(args.threads)] if args.threads else [])
        log_path = Path(tmp) / "server.log"
        with open(log_path, "w") as log:
            server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 180
                while True:
                    if server.poll() is not None:
                        raise SystemExit(f"server exited:\n{log_path.read_text()}")
                    try:
                        if httpx.get(url + "/health", timeout=1).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        raise SystemExit("server did not come up in 180 s")
                    time.sleep(0.25)
                rss_idle = peak_rss_mb(server.pid)
                results, wall = asyncio.run(run_load(url, args))
                rss_peak = peak_rss_mb(server.pid)
            finally:
                server.send_signal(signal.SIGINT)
                try:
                    server.wait(30)
                except subprocess.TimeoutExpired:
                    server.kill()

    ok = [r for r in results if r["ok"]]
    errors = [r["error"] for r in results if not r["ok"]]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    lat = [r["latency"] for r in ok]
    tokens = sum(r["completion_tokens"] for r in ok)
    import torch
    import transformers

    report = {
        "benchmark": "serve_load",
        "description": f"{args.clients} concurrent streaming clients on loopback against `c2c serve`",
        "pair": pair,
        "settings": {
            "clients": args.clients,
            "max_tokens": args.max_tokens,
            "mode": args.mode,
            "greedy": True,
            "server_max_concurrency": args.max_concurrency,
            "server_torch_threads": args.threads or "default",
        },
        "results": {
            "requests": len(results),
            "completed": len(ok),
            "errors": len(errors),
            "error_messages": errors[:10],
            "ttft_median_s": statistics.median(ttft) if ttft else None,
            "ttft_p95_s": pct(ttft, 0.95),
            "latency_median_s": statistics.median(lat) if lat else None,
            "latency_p95_s": pct(lat, 0.95),
            "wall_s": wall,
            "completion_tokens": tokens,
            "throughput_tokens_per_s": tokens / wall if wall > 0 else None,
            "batch_sizes_seen": sorted({r["batch_size"] for r in ok}),
            "server_peak_rss_mb": rss_peak,
            "server_peak_rss_before_requests_mb": rss_idle,
        },
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "cpu_count": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0],
            "machine": platform.machine(),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["results"], indent=2))


if __name__ == "__main__":
    main()
