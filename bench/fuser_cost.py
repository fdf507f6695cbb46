"""What fusion costs per fuser family at real shapes, and how close the fuser runs to the machine's GEMM speed.

Geometry: receiver Qwen3-0.6B (28 layers, 8 KV heads x 128), sharer Qwen2.5-0.5B (24 layers, 2 KV heads x 64),
terminal layer map, every gate open. Rows are random (the cost does not depend on their values), ``N`` fused
tokens per layer, batch 1 (the fusion path packs a batch's fused rows into one sequence).

Per family (the configs in ``FAMILY_CONFIGS``, or ``--family``): parameters, GEMM FLOPs per token
(``fuser_size``), and the median time of ``C2CFuser.forward`` on the rows of every layer. For the full
fuser also:

- **per-layer loop**: the same forward called layer by layer (what the fuser did before its layers were
  stacked: one small GEMM per linear and layer, in a Python loop);
- **matmul chain**: one plain ``torch.mm`` per linear of a layer, over the rows of all layers at once
  (``[L * N, in] @ [in, out]``): exactly the fuser's GEMM FLOPs, as the large GEMMs the machine runs best.
  The fusion-efficiency ratio is fuser time / chain time (target <= 1.3).

``bench/perf_suite.py`` calls :func:`fusion_efficiency` and :func:`family_table` in its own run, next to the
end-to-end latencies. Standalone (no LLMs are built: seconds to a minute on a CPU)::

    python bench/fuser_cost.py [--tokens 63] [--repeats 5] [--device cpu] [--dtype float32]

Writes ``bench/results/fuser_cost_<device>.json``. Not part of the tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from c2c.alignment.layers import terminal_map
from c2c.cache import ModelSpec
from c2c.fuser import C2CFuser, FuserConfig, FuserGeometry, LayerRows, StackedLinear, fuser_size
from c2c.hf import synchronize
from c2c.testing.models import QWEN2_5_0_5B_SHAPES, QWEN3_0_6B_SHAPES

RESULTS = Path(__file__).resolve().parent / "results"

FAMILY_CONFIGS: dict[str, dict[str, Any]] = {
    "full": {},
    "lowrank-64": {"family": "lowrank", "rank": 64},
    "lowrank-16": {"family": "lowrank", "rank": 16},
    "shared-256": {"family": "shared", "shared_hidden_size": 256},
    "shared-128": {"family": "shared", "shared_hidden_size": 128},
    "linear": {"family": "linear"},
}
"""Named fuser configs measured side by side (dropout off: inference)."""


def paper_geometry(receiver_layers: int = 28, sharer_layers: int = 24) -> FuserGeometry:
    from transformers import Qwen2Config, Qwen3Config

    r = ModelSpec.from_config(Qwen3Config(**{**QWEN3_0_6B_SHAPES, "num_hidden_layers": receiver_layers}))
    s = ModelSpec.from_config(Qwen2Config(**{**QWEN2_5_0_5B_SHAPES, "num_hidden_layers": sharer_layers}))
    return FuserGeometry(r, s, terminal_map(r.kv_layers, s.kv_layers))


def fuser_config(name_or_fields: str | dict[str, Any]) -> FuserConfig:
    fields = FAMILY_CONFIGS[name_or_fields] if isinstance(name_or_fields, str) else name_or_fields
    return FuserConfig.from_dict({"dropout": 0.0, **fields})


def build_fuser(
    config: FuserConfig, geometry: FuserGeometry, device: str, dtype: torch.dtype, seed: int = 0
) -> C2CFuser:
    torch.manual_seed(seed)
    fuser = C2CFuser(config, geometry).to(device=device, dtype=dtype).eval()
    fuser.set_gates(True)
    return fuser


def synthetic_rows(
    geometry: FuserGeometry, n_tokens: int, device: str, dtype: torch.dtype, seed: int = 0
) -> dict[int, LayerRows]:
    """Packed rows ``[1, H, N, D]`` of every mapped layer, laid out as ``c2c.fusion`` hands them to the fuser
    (rows gathered as ``[N, H, D]``, then a transposed view)."""
    g = torch.Generator().manual_seed(seed)
    r, s = geometry.receiver, geometry.sharer

    def t(h: int, d: int) -> torch.Tensor:
        return torch.randn(n_tokens, h, d, generator=g).to(device=device, dtype=dtype).transpose(0, 1).unsqueeze(0)

    return {
        rl: LayerRows(
            t(s.num_kv_heads, s.head_dim),
            t(s.num_kv_heads, s.value_dim),
            t(r.num_kv_heads, r.head_dim),
            t(r.num_kv_heads, r.value_dim),
        )
        for rl in geometry.layer_map
    }


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "process": time.process_time}
_clock: list[Callable[[], float]] = [time.perf_counter]


def median_seconds(fn: Callable[[], Any], repeats: int, device: str, warmup: int = 1) -> float:
    """Median over ``repeats`` calls after ``warmup`` ones, by the wall clock, or by this process's CPU time
    (``--clock process``: on a CPU shared with other jobs it counts only this process's work, summed over its
    threads, so with T threads it reads about T x the wall time of a quiet machine)."""
    clock = _clock[0]
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(torch.device(device))
        start = clock()
        fn()
        synchronize(torch.device(device))
        times.append(clock() - start)
    return statistics.median(times)


def gemm_shapes(fuser: C2CFuser) -> list[tuple[int, int]]:
    """``(in, out)`` of every linear one layer's rows go through (K and V paths)."""
    shapes = []
    for m in fuser.modules():
        if isinstance(m, (StackedLinear, nn.Linear)):
            shapes.append((m.in_features, m.out_features))
    return shapes


def matmul_chain(
    fuser: C2CFuser, n_tokens: int, device: str, dtype: torch.dtype, *, per_layer: bool = False
) -> tuple[Callable[[], None], int]:
    """A plain GEMM chain with the fuser's FLOPs for ``n_tokens`` tokens in every layer. Returns the callable
    and its FLOPs.

    Per linear: one ``[L * N, in] @ [in, out]`` (``mm``: one weight, the large GEMM a machine runs best), or
    with ``per_layer`` one ``bmm`` of ``[L, N, in]`` by ``L`` distinct ``[in, out]`` weights: the fuser's own
    weight bytes and GEMM shapes, which a fuser with per-layer weights cannot avoid."""
    layers, shapes = len(fuser.order), gemm_shapes(fuser)
    lead = (layers, n_tokens) if per_layer else (layers * n_tokens,)
    g = torch.Generator().manual_seed(2 if per_layer else 1)
    inputs = {i: torch.randn(*lead, i, generator=g).to(device=device, dtype=dtype) for i in {i for i, _ in shapes}}
    wlead = (layers,) if per_layer else ()
    weights = [torch.randn(*wlead, i, o, generator=g).to(device=device, dtype=dtype) / i**0.5 for i, o in shapes]
    gemm = torch.bmm if per_layer else torch.mm

    def run() -> None:
        for w in weights:
            gemm(inputs[w.shape[-2]], w)

    return run, sum(2 * layers * n_tokens * i * o for i, o in shapes)


def weight_read_seconds(fuser: C2CFuser, repeats: int, device: str) -> tuple[float, int]:
    """Time to read every parameter of ``fuser`` once (a sum over each tensor: the memory-bandwidth floor of
    any forward that touches all its weights), and those bytes."""
    params = list(fuser.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in params)
    with torch.inference_mode():
        return median_seconds(lambda: [p.sum() for p in params], repeats, device), nbytes


def time_forward(fuser: C2CFuser, rows: dict[int, LayerRows], repeats: int, device: str) -> float:
    gates = fuser.hard_gates()
    with torch.inference_mode():
        return median_seconds(lambda: fuser(rows, gates), repeats, device)


def time_per_layer_loop(fuser: C2CFuser, rows: dict[int, LayerRows], repeats: int, device: str) -> float:
    gates = fuser.hard_gates()
    with torch.inference_mode():
        return median_seconds(lambda: [fuser({rl: r}, {rl: gates[rl]}) for rl, r in rows.items()], repeats, device)


def fusion_efficiency(fuser: C2CFuser, n_tokens: int, repeats: int, device: str, dtype: torch.dtype) -> dict[str, Any]:
    """The fuser's forward (stacked, and as a per-layer loop) against the matmul chain with the same FLOPs."""
    rows = synthetic_rows(fuser.geometry, n_tokens, device, dtype)
    size = fuser_size(fuser.config, fuser.geometry)
    chain, chain_flops = matmul_chain(fuser, n_tokens, device, dtype)
    if chain_flops != size.flops_per_token * n_tokens:
        raise AssertionError(f"matmul chain has {chain_flops} FLOPs, the fuser {size.flops_per_token * n_tokens}")
    layered, layered_flops = matmul_chain(fuser, n_tokens, device, dtype, per_layer=True)
    if layered_flops != chain_flops:
        raise AssertionError(f"per-layer chain has {layered_flops} FLOPs, the fuser {chain_flops}")
    with torch.inference_mode():
        chain_s = median_seconds(chain, repeats, device)
        layered_s = median_seconds(layered, repeats, device)
    del layered
    read_s, weight_bytes = weight_read_seconds(fuser, repeats, device)
    forward_s = time_forward(fuser, rows, repeats, device)
    loop_s = time_per_layer_loop(fuser, rows, repeats, device)
    return {
        "family": fuser.config.family,
        "tokens_per_layer": n_tokens,
        "layers": len(fuser.order),
        "gemm_flops": chain_flops,
        "matmul_chain_s": chain_s,
        "fuser_forward_s": forward_s,
        "per_layer_loop_s": loop_s,
        "chain_gflops_per_s": chain_flops / chain_s / 1e9,
        "fuser_gflops_per_s": chain_flops / forward_s / 1e9,
        "forward_vs_chain": forward_s / chain_s,
        "loop_vs_stacked": loop_s / forward_s,
        # The same FLOPs with the fuser's own weight bytes, and the time to read those bytes once.
        "per_layer_weight_chain_s": layered_s,
        "forward_vs_per_layer_weight_chain": forward_s / layered_s,
        "weight_bytes": weight_bytes,
        "weight_read_s": read_s,
        "weight_read_gb_per_s": weight_bytes / read_s / 1e9,
        "forward_vs_weight_read": forward_s / read_s,
    }


def family_table(
    geometry: FuserGeometry,
    n_tokens: int,
    repeats: int,
    device: str,
    dtype: torch.dtype,
    names: list[str] | None = None,
    prebuilt: dict[str, C2CFuser] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Parameters, FLOPs per token and forward time of each named config, on the same rows."""
    rows = synthetic_rows(geometry, n_tokens, device, dtype)
    out = []
    for name in names or list(FAMILY_CONFIGS):
        cfg = fuser_config(name)
        size = fuser_size(cfg, geometry)
        fuser = (prebuilt or {}).get(name) or build_fuser(cfg, geometry, device, dtype)
        seconds = time_forward(fuser, rows, repeats, device)
        out.append(
            {
                "name": name,
                "config": dict(FAMILY_CONFIGS.get(name, {}).items()),
                "family": cfg.family,
                "parameters": size.parameters,
                "shared_parameters": size.shared_parameters,
                "flops_per_token": size.flops_per_token,
                "forward_s": seconds,
                "ms_per_token": 1000 * seconds / n_tokens,
            }
        )
        log(
            f"  {name}: {size.parameters / 1e6:.2f} M parameters, {size.flops_per_token / 1e6:.1f} MFLOP/token, "
            f"{1000 * seconds:.1f} ms for {n_tokens} tokens x {len(geometry.layer_map)} layers"
        )
        del fuser
    full = next((r for r in out if r["name"] == "full"), None)
    if full is not None:
        for r in out:
            r["parameters_vs_full"] = full["parameters"] / r["parameters"]
            r["flops_vs_full"] = full["flops_per_token"] / r["flops_per_token"]
            r["time_vs_full"] = full["forward_s"] / r["forward_s"]
    return out


def markdown(doc: dict[str, Any]) -> str:
    eff = doc["efficiency"]
    lines = [
        (
            f"Fusion of {eff['tokens_per_layer']} tokens in each of {eff['layers']} layers (K and V), every gate open, "
            f"{doc['dtype']} on {doc['device']} ({doc['threads']} thread(s), {doc['clock']} clock); medians of {doc['repeats']}."
        ),
        "",
        "| fuser | parameters | x fewer | MFLOP/token | x fewer | forward | ms/token |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in doc["families"]:
        lines.append(
            f"| {r['name']} | {r['parameters'] / 1e6:,.2f} M | {r.get('parameters_vs_full', 1):.0f} | "
            f"{r['flops_per_token'] / 1e6:,.1f} | {r.get('flops_vs_full', 1):.0f} | {1000 * r['forward_s']:.1f} ms | "
            f"{r['ms_per_token']:.2f} |"
        )
    lines += [
        "",
        (
            f"Full fuser: stacked forward {1000 * eff['fuser_forward_s']:.0f} ms ({eff['fuser_gflops_per_s']:.0f} GFLOP/s), "
            f"per-layer loop {1000 * eff['per_layer_loop_s']:.0f} ms, plain matmul chain with the same FLOPs "
            f"{1000 * eff['matmul_chain_s']:.0f} ms ({eff['chain_gflops_per_s']:.0f} GFLOP/s): fuser / chain "
            f"{eff['forward_vs_chain']:.2f} (target <= 1.3), loop / stacked {eff['loop_vs_stacked']:.2f}."
        ),
        "",
        (
            f"The same FLOPs with the fuser's own {eff['weight_bytes'] / 1e9:.2f} GB of per-layer weights (one bmm per "
            f"linear): {1000 * eff['per_layer_weight_chain_s']:.0f} ms, fuser / that chain "
            f"{eff['forward_vs_per_layer_weight_chain']:.2f}; reading those weights once takes "
            f"{1000 * eff['weight_read_s']:.0f} ms ({eff['weight_read_gb_per_s']:.1f} GB/s), fuser / weight read "
            f"{eff['forward_vs_weight_read']:.2f}."
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from c2c.eval.runner import environment

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: fp32 on CPU, bf16 on CUDA)")
    p.add_argument("--tokens", type=int, default=63, help="fused tokens per layer (prompt 64 minus its last token)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--family", action="append", choices=sorted(FAMILY_CONFIGS), help="configs to measure (default all)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall (default) or process (CPU time of this process: for a CPU shared with other jobs)",
    )
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    _clock[0] = CLOCKS[a.clock]
    if a.threads:
        torch.set_num_threads(a.threads)
    kind = "cuda" if a.device.startswith("cuda") else "cpu"
    dtype = getattr(torch, a.dtype or ("bfloat16" if kind == "cuda" else "float32"))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    start = time.perf_counter()
    geometry = paper_geometry()
    full = build_fuser(fuser_config("full"), geometry, a.device, dtype)
    log("fusion efficiency of the full fuser ...")
    eff = fusion_efficiency(full, a.tokens, a.repeats, a.device, dtype)
    log("families ...")
    table = family_table(geometry, a.tokens, a.repeats, a.device, dtype, a.family, prebuilt={"full": full}, log=log)
    doc = {
        "benchmark": "fuser_cost",
        "device": a.device,
        "dtype": str(dtype).replace("torch.", ""),
        "repeats": a.repeats,
        "clock": a.clock,
        "threads": torch.get_num_threads(),
        "efficiency": eff,
        "families": table,
        "environment": environment(),
        "seconds": time.perf_counter() - start,
        "load_average": _loadavg(),
    }
    out = Path(a.out) if a.out else RESULTS / f"fuser_cost_{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(markdown(doc))
    log(f"wrote {out}")
    return 0


def _loadavg() -> list[float] | None:
    try:
        import os

        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


if __name__ == "__main__":
    raise SystemExit(main())
