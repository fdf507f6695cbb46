"""Performance suite: C2C against its baselines with random-weight models of the paper's real shapes.

Receiver: Qwen3-0.6B shapes (hidden 1024, 28 layers, 16 heads, 8 KV heads, head_dim 128, intermediate 3072,
vocab 151936). Sharer: Qwen2.5-0.5B shapes (hidden 896, 24 layers, 14 heads, 2 KV heads, head_dim 64,
intermediate 4864, vocab 151936). Fusers: the reference default sizes (family "full", hidden 1024, ~478 M
parameters) and a compact one (``--compact``, default ``lowrank-64``: 8.4 M parameters), on the same LLMs, with
**every gate open** (the worst case: a trained fuser usually closes some layers, which are then skipped).
Weights are random and the models have no end-of-sequence token, so every call produces exactly the
requested number of tokens: equal output lengths by construction. Prompts are random token ids.

Measured side by side in one run (medians over repeats, calls of the compared modes interleaved):

1. T2T / C2C end-to-end latency at the same prompts (the sharer's note capped at ``--note-tokens``, 64);
2. C2C / receiver-only latency at equal output length, with the full and with the compact fuser;
3. per-token decode cost C2C / receiver-only (decode stage / new tokens);
4. batched generation throughput (new tokens per second) at batch ``--batch`` (16) vs batch 1, for C2C (full
   and compact fuser) and for the receiver alone: C2C's gain relative to the receiver's gain;
5. fusion cost share (of the prefill phase and of the whole call) and its scaling with prompt length;
6. fusion efficiency: the full fuser's fusion stage (from 1-3) and its forward alone against a plain matmul
   chain with the same FLOPs (``bench/fuser_cost.py``), and the per-layer loop it replaced;
7. every fuser family of ``bench/fuser_cost.py``: parameters, FLOPs per token, fuser forward time.

C2C and receiver-only both run through ``C2CModel.generate`` (mode "c2c" / "receiver": the same code
path, fusion switched off). T2T runs the sharer through ``c2c.generation.generate_plain`` (prefill,
then the note) and the receiver through ``C2CModel.generate(mode="receiver")`` on note + prompt.

dtype: fp32 on CPU (bf16 matrix-vector products, i.e. decoding, are ~20x slower than fp32 on the CPUs we
measured), bf16 on CUDA. Usage::

    python bench/perf_suite.py                    # preset by device (cpu: small sizes, ~10 min)
    python bench/perf_suite.py --preset gpu       # 256 / 1k / 4k prompt lengths, 5 repeats
    python bench/perf_suite.py --lengths 256,1024,4096 --long-repeats 1 --scaling-repeats 3

Writes ``bench/results/perf_suite_<device>.json`` and a Markdown summary next to it. Not part of the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fuser_cost
import torch

from c2c.eval.runner import environment
from c2c.generation import GenerationOptions, generate_plain
from c2c.hf import StageTimer, synchronize
from c2c.testing.models import QWEN2_5_0_5B_SHAPES, QWEN3_0_6B_SHAPES

RESULTS = Path(__file__).resolve().parent / "results"

PRESETS: dict[str, dict[str, Any]] = {
    # The shared 2-core CPU runs the real shapes at a few GFLOP/s: keep the whole suite near 10 minutes.
    "cpu": dict(
        prompt_len=64,
        answer_tokens=8,
        repeats=2,
        batch_prompt_len=16,
        batch_answer_tokens=8,
        batch_repeats=1,
        lengths=[64, 256],
        scaling_repeats=1,
        long_repeats=1,
    ),
    "gpu": dict(
        prompt_len=256,
        answer_tokens=32,
        repeats=5,
        batch_prompt_len=256,
        batch_answer_tokens=32,
        batch_repeats=3,
        lengths=[256, 1024, 4096],
        scaling_repeats=3,
        long_repeats=2,
    ),
}


@dataclass
class SuiteConfig:
    device: str = "cpu"
    dtype: str = "float32"
    prompt_len: int = 64  # prompts of measurements 1-3
    answer_tokens: int = 8  # new tokens of the answer (1-3)
    note_tokens: int = 64  # T2T note length cap (reached: no EOS)
    repeats: int = 1  # repeats of measurements 1-3
    batch: int = 16
    batch_repeats: int = 1
    batch_prompt_len: int = 16
    batch_answer_tokens: int = 8
    lengths: list[int] = field(default_factory=lambda: [64, 256])
    scaling_repeats: int = 1
    long_repeats: int = 1  # scaling repeats for lengths >= long_threshold
    long_threshold: int = 2048
    receiver_layers: int = 28
    sharer_layers: int = 24
    seed: int = 0
    threads: int | None = None
    compact: str = "lowrank-64"  # a name of fuser_cost.FAMILY_CONFIGS
    families: bool = True  # measurement 7


def real_shape_models(cfg: SuiteConfig) -> tuple[Any, Any]:
    """Random-weight receiver (Qwen3-0.6B shapes) and sharer (Qwen2.5-0.5B shapes) without EOS."""
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

    common = dict(rope_theta=1_000_000.0, eos_token_id=None, bos_token_id=None, pad_token_id=0)
    receiver_cfg = Qwen3Config(**{**QWEN3_0_6B_SHAPES, "num_hidden_layers": cfg.receiver_layers, **common})
    sharer_cfg = Qwen2Config(**{**QWEN2_5_0_5B_SHAPES, "num_hidden_layers": cfg.sharer_layers, **common})
    dtype = getattr(torch, cfg.dtype)
    models = []
    for i, c in enumerate((receiver_cfg, sharer_cfg)):
        torch.manual_seed(cfg.seed + i)
        m = AutoModelForCausalLM.from_config(c, dtype=dtype).to(cfg.device).eval()
        m.generation_config.eos_token_id = None
        m.generation_config.pad_token_id = 0
        models.append(m)
    return models[0], models[1]


def prompts(n: int, length: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1000, 150000, (n, length), generator=g).tolist()


def _median_dicts(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for r in runs for k in r})
    return {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys}


def c2c_call(model: Any, ids: list[list[int]], mode: str, new_tokens: int) -> dict[str, float]:
    synchronize(model.device)
    start = time.perf_counter()
    res = model.generate(ids, mode=mode, max_new_tokens=new_tokens, return_dict=True)
    synchronize(model.device)
    wall = time.perf_counter() - start
    if any(n != new_tokens for n in res.new_tokens):
        raise RuntimeError(f"expected {new_tokens} new tokens per prompt, got {res.new_tokens} (an EOS was hit)")
    return {**{k: float(v) for k, v in res.timings.items() if k != "total"}, "total": wall}


def t2t_call(model: Any, ids: list[list[int]], note_tokens: int, new_tokens: int) -> dict[str, float]:
    """Sharer prefill + note (``note_tokens``), then the receiver answers reading note + prompt."""
    sharer = model.sharers[0]
    timer = StageTimer(model.device)
    start = time.perf_counter()
    notes = generate_plain(
        sharer,
        None,
        ids,
        GenerationOptions(max_new_tokens=note_tokens, min_new_tokens=note_tokens),
        timer=timer,
        prefill_stage="sharer_prefill",
        decode_stage="note",
    )
    answer = c2c_call(model, [n + p for n, p in zip(notes, ids)], "receiver", new_tokens)
    total = time.perf_counter() - start
    out = {**timer.seconds, **{k: v for k, v in answer.items() if k in ("receiver_prefill", "decode")}}
    out["total"] = total
    return out


def interleaved(
    calls: dict[str, Callable[[], dict[str, float]]], repeats: int, log: Callable[[str], None]
) -> dict[str, dict[str, float]]:
    """Run each call ``repeats`` times, alternating between them and reversing the order every other round
    (drift and after-effects of the previous call hit all alike); medians."""
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in calls}
    for r in range(repeats):
        order = list(calls.items())
        for name, fn in order if r % 2 == 0 else order[::-1]:
            runs[name].append(fn())
            log(f"  {name} #{r + 1}: {runs[name][-1]['total']:.2f}s")
    return {k: _median_dicts(v) for k, v in runs.items()}


def run_suite(cfg: SuiteConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    from c2c.fuser import FuserConfig
    from c2c.model import C2CModel

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    load_before = _loadavg()
    t_start = time.perf_counter()
    log("building real-shape models with random weights ...")
    receiver, sharer = real_shape_models(cfg)
    dtype = getattr(torch, cfg.dtype)
    model = C2CModel.from_models(receiver, sharer, fuser_config=FuserConfig(dropout=0.0), dtype=dtype, seed=cfg.seed)
    compact = C2CModel.from_models(
        receiver, sharer, fuser_config=fuser_cost.fuser_config(cfg.compact), dtype=dtype, seed=cfg.seed
    )
    for m in (model, compact):
        m.eval()
        for f in m.fusers:
            f.set_gates(True)
    build_s = time.perf_counter() - t_start
    info = {
        "receiver_params": sum(p.numel() for p in receiver.parameters()),
        "sharer_params": sum(p.numel() for p in sharer.parameters()),
        "fuser_params": sum(p.numel() for p in model.fusers.parameters()),
        "compact_fuser": cfg.compact,
        "compact_fuser_config": compact.fusers[0].config.to_dict(),
        "compact_fuser_params": sum(p.numel() for p in compact.fusers.parameters()),
        "fused_layers": len(model.fusers[0].layers),
        "gates": "all open",
        "build_seconds": build_s,
    }
    log(f"built in {build_s:.0f}s: {info}")

    log("warm-up ...")
    warm = prompts(1, 8, cfg.seed + 99)
    c2c_call(model, warm, "c2c", 2)
    c2c_call(compact, warm, "c2c", 2)
    c2c_call(model, warm, "receiver", 2)
    t2t_call(model, warm, 2, 2)

    results: dict[str, Any] = {}
    ids = prompts(1, cfg.prompt_len, cfg.seed)
    log(f"[1-3] prompt {cfg.prompt_len} tokens, answer {cfg.answer_tokens} tokens, note {cfg.note_tokens} tokens")
    med = interleaved(
        {
            "c2c": lambda: c2c_call(model, ids, "c2c", cfg.answer_tokens),
            "c2c_compact": lambda: c2c_call(compact, ids, "c2c", cfg.answer_tokens),
            "receiver": lambda: c2c_call(model, ids, "receiver", cfg.answer_tokens),
            "t2t": lambda: t2t_call(model, ids, cfg.note_tokens, cfg.answer_tokens),
        },
        cfg.repeats,
        log,
    )
    results["t2t_vs_c2c"] = {
        "prompt_len": cfg.prompt_len,
        "answer_tokens": cfg.answer_tokens,
        "note_tokens": cfg.note_tokens,
        "t2t": med["t2t"],
        "c2c": med["c2c"],
        "ratio": med["t2t"]["total"] / med["c2c"]["total"],
        "target": ">= 3",
    }
    results["c2c_vs_receiver"] = {
        "prompt_len": cfg.prompt_len,
        "answer_tokens": cfg.answer_tokens,
        "c2c": med["c2c"],
        "receiver": med["receiver"],
        "ratio": med["c2c"]["total"] / med["receiver"]["total"],
        "target": "<= 1.25",
    }
    results["c2c_compact_vs_receiver"] = {
        "prompt_len": cfg.prompt_len,
        "answer_tokens": cfg.answer_tokens,
        "fuser": cfg.compact,
        "c2c": med["c2c_compact"],
        "receiver": med["receiver"],
        "ratio": med["c2c_compact"]["total"] / med["receiver"]["total"],
        "target": "<= 1.25",
    }
    per_tok = {m: med[m]["decode"] / cfg.answer_tokens for m in ("c2c", "receiver")}
    results["decode_per_token"] = {
        "c2c_s": per_tok["c2c"],
        "receiver_s": per_tok["receiver"],
        "ratio": per_tok["c2c"] / per_tok["receiver"],
        "target": "<= 1.02",
    }

    log(f"[4] batch {cfg.batch} vs 1: prompt {cfg.batch_prompt_len}, answer {cfg.batch_answer_tokens}")
    batch_ids = prompts(cfg.batch, cfg.batch_prompt_len, cfg.seed + 1)
    runners = {"c2c": (model, "c2c"), "c2c_compact": (compact, "c2c"), "receiver": (model, "receiver")}
    calls: dict[str, Callable[[], dict[str, float]]] = {}
    for name, (m, mode) in runners.items():
        for b in (1, cfg.batch):
            calls[f"{name}@{b}"] = lambda m=m, mode=mode, b=b: c2c_call(m, batch_ids[:b], mode, cfg.batch_answer_tokens)
    bmed = interleaved(calls, cfg.batch_repeats, log)
    gains = {}
    for name in runners:
        tps1 = cfg.batch_answer_tokens / bmed[f"{name}@1"]["total"]
        tpsb = cfg.batch * cfg.batch_answer_tokens / bmed[f"{name}@{cfg.batch}"]["total"]
        gains[name] = {"tokens_per_s_batch_1": tps1, f"tokens_per_s_batch_{cfg.batch}": tpsb, "gain": tpsb / tps1}
    results["batch_throughput"] = {
        "batch": cfg.batch,
        "prompt_len": cfg.batch_prompt_len,
        "answer_tokens": cfg.batch_answer_tokens,
        "tokens_per_s_batch_1": gains["c2c"]["tokens_per_s_batch_1"],
        f"tokens_per_s_batch_{cfg.batch}": gains["c2c"][f"tokens_per_s_batch_{cfg.batch}"],
        "ratio": gains["c2c"]["gain"],
        "by_model": gains,
        # batching C2C must gain as much as batching the receiver does
        "relative_to_receiver": gains["c2c"]["gain"] / gains["receiver"]["gain"],
        "compact_relative_to_receiver": gains["c2c_compact"]["gain"] / gains["receiver"]["gain"],
        "timings": bmed,
        "target": ">= 0.9 x the receiver's gain",
    }

    log(f"[5] fusion scaling over prompt lengths {cfg.lengths} (one new token)")
    scaling = []
    for length in cfg.lengths:
        reps = cfg.long_repeats if length >= cfg.long_threshold else cfg.scaling_repeats
        lids = prompts(1, length, cfg.seed + length)
        both = interleaved(
            {
                "full": lambda lids=lids: c2c_call(model, lids, "c2c", 1),
                "compact": lambda lids=lids: c2c_call(compact, lids, "c2c", 1),
            },
            reps,
            log,
        )
        m, mc = both["full"], both["compact"]
        prefill = m["sharer_prefill"] + m["fusion"] + m["receiver_prefill"]
        scaling.append(
            {
                "prompt_len": length,
                "repeats": reps,
                **m,
                "fusion_share_of_prefill": m["fusion"] / prefill,
                "fusion_share_of_total": m["fusion"] / m["total"],
                "fusion_ms_per_token": 1000 * m["fusion"] / (length - 1),
                "compact": mc,
                "compact_fusion_ms_per_token": 1000 * mc["fusion"] / (length - 1),
            }
        )
    results["fusion_scaling"] = scaling

    log(f"[6] fusion efficiency: {cfg.prompt_len - 1} fused tokens per layer")
    eff = fuser_cost.fusion_efficiency(model.fusers[0], cfg.prompt_len - 1, max(3, cfg.repeats), cfg.device, dtype)
    eff["fusion_stage_s"] = med["c2c"]["fusion"]
    eff["fusion_stage_vs_chain"] = med["c2c"]["fusion"] / eff["matmul_chain_s"]
    eff["target"] = "<= 1.3"
    eff["met"] = eff["fusion_stage_vs_chain"] <= 1.3
    results["fusion_efficiency"] = eff
    if cfg.families:
        log("[7] fuser families")
        results["families"] = fuser_cost.family_table(
            model.fusers[0].geometry,
            cfg.prompt_len - 1,
            max(3, cfg.repeats),
            cfg.device,
            dtype,
            prebuilt={"full": model.fusers[0], cfg.compact: compact.fusers[0]},
            log=log,
        )
    results["t2t_vs_c2c"]["met"] = results["t2t_vs_c2c"]["ratio"] >= 3.0
    results["batch_throughput"]["met"] = results["batch_throughput"]["relative_to_receiver"] >= 0.9
    results["batch_throughput"]["compact_met"] = results["batch_throughput"]["compact_relative_to_receiver"] >= 0.9
    for key, target in (("c2c_vs_receiver", 1.25), ("c2c_compact_vs_receiver", 1.25), ("decode_per_token", 1.02)):
        results[key]["met"] = results[key]["ratio"] <= target
    return {
        "suite": "perf_suite",
        "config": asdict(cfg),
        "models": info,
        "environment": environment(),
        "results": results,
        "seconds": time.perf_counter() - t_start,
        # Other processes on a shared machine slow every stage: record how busy it was.
        "load_average": {"start": load_before, "end": _loadavg()},
    }


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def markdown(doc: dict[str, Any]) -> str:
    """The summary tables (for the README)."""
    r, c = doc["results"], doc["config"]
    env = doc["environment"]
    where = ", ".join(env["gpus"]) if env["gpus"] else f"CPU ({env['cpu_count']} cores)"
    bt = r["batch_throughput"]
    gains = bt["by_model"]
    eff = r["fusion_efficiency"]
    compact = doc["models"]["compact_fuser"]

    def ok(x: dict[str, Any], key: str = "met") -> str:
        return "yes" if x[key] else "no"

    def latency(key: str, label: str) -> tuple[str, ...]:
        x = r[key]
        return (
            label,
            f"prompt {c['prompt_len']}, answer {c['answer_tokens']} tokens",
            f"{x['c2c']['total']:.2f}s / {x['receiver']['total']:.2f}s",
            f"{x['ratio']:.2f}x",
            "<= 1.25x",
            ok(x),
        )

    def batching(name: str, label: str, key: str) -> tuple[str, ...]:
        rel = bt["relative_to_receiver" if name == "c2c" else "compact_relative_to_receiver"]
        return (
            label,
            f"prompt {bt['prompt_len']}, answer {bt['answer_tokens']} tokens",
            f"{gains[name]['gain']:.2f}x / {gains['receiver']['gain']:.2f}x",
            f"{rel:.2f}",
            ">= 0.9",
            ok(bt, key),
        )

    rows = [
        (
            "T2T / C2C end-to-end latency",
            f"prompt {c['prompt_len']}, note {c['note_tokens']}, answer {c['answer_tokens']} tokens",
            f"{r['t2t_vs_c2c']['t2t']['total']:.2f}s / {r['t2t_vs_c2c']['c2c']['total']:.2f}s",
            f"{r['t2t_vs_c2c']['ratio']:.2f}x",
            ">= 3x",
            ok(r["t2t_vs_c2c"]),
        ),
        latency("c2c_vs_receiver", "C2C / receiver-only latency, full fuser"),
        latency("c2c_compact_vs_receiver", f"C2C / receiver-only latency, {compact} fuser"),
        (
            "decode cost per token C2C / receiver",
            f"{c['answer_tokens']} tokens",
            f"{1000 * r['decode_per_token']['c2c_s']:.1f}ms / {1000 * r['decode_per_token']['receiver_s']:.1f}ms",
            f"{r['decode_per_token']['ratio']:.3f}",
            "<= 1.02",
            ok(r["decode_per_token"]),
        ),
        batching("c2c", f"batch {bt['batch']} / batch 1 gain: C2C (full) / receiver", "met"),
        batching("c2c_compact", f"batch {bt['batch']} / batch 1 gain: C2C ({compact}) / receiver", "compact_met"),
        (
            "fusion stage / matmul chain of equal FLOPs, full fuser",
            f"{eff['tokens_per_layer']} tokens x {eff['layers']} layers",
            f"{1000 * eff['fusion_stage_s']:.0f}ms / {1000 * eff['matmul_chain_s']:.0f}ms",
            f"{eff['fusion_stage_vs_chain']:.2f}x",
            "<= 1.3x",
            ok(eff),
        ),
    ]
    load = doc.get("load_average") or {}
    busy = f" (load average {load['start'][0]:.1f} at start, {load['end'][0]:.1f} at end)" if load.get("start") else ""
    lines = [
        (
            f"Measured on {where}{busy}, {c['dtype']}, in one run of `bench/perf_suite.py` ({doc['seconds'] / 60:.1f} min); "
            f"random weights with the shapes of Qwen3-0.6B (receiver, {c['receiver_layers']} layers) and Qwen2.5-0.5B "
            f"(sharer, {c['sharer_layers']} layers), fusers of {doc['models']['fuser_params'] / 1e6:.0f} M (full) and "
            f"{doc['models']['compact_fuser_params'] / 1e6:.1f} M ({compact}) parameters with all "
            f"{doc['models']['fused_layers']} layers' gates open; medians of {c['repeats']} / {c['batch_repeats']} / "
            f"{c['scaling_repeats']} repeat(s) (rows 1-4 / batch / scaling), calls interleaved."
        ),
        "",
        "| measurement | setting | measured | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += [
        "",
        (
            f"| prompt tokens | sharer prefill | fusion (full) | fusion ({compact}) | receiver prefill | "
            "fusion share of prefill (full) | fusion ms/token (full / compact) |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for x in r["fusion_scaling"]:
        lines.append(
            f"| {x['prompt_len']} | {x['sharer_prefill']:.2f}s | {x['fusion']:.2f}s | {x['compact']['fusion']:.3f}s"
            f" | {x['receiver_prefill']:.2f}s | {100 * x['fusion_share_of_prefill']:.0f}% | "
            f"{x['fusion_ms_per_token']:.1f} / {x['compact_fusion_ms_per_token']:.2f} |"
        )
    lines += [
        "",
        (
            f"Full fuser forward alone: {1000 * eff['fuser_forward_s']:.0f} ms stacked "
            f"({eff['fuser_gflops_per_s']:.0f} GFLOP/s), {1000 * eff['per_layer_loop_s']:.0f} ms as a per-layer "
            f"loop, matmul chain {1000 * eff['matmul_chain_s']:.0f} ms ({eff['chain_gflops_per_s']:.0f} GFLOP/s)."
        ),
    ]
    if "per_layer_weight_chain_s" in eff:
        lines[-1] += (
            f" The same FLOPs over the fuser's own {eff['weight_bytes'] / 1e9:.2f} GB of per-layer weights: "
            f"{1000 * eff['per_layer_weight_chain_s']:.0f} ms (fuser / that chain "
            f"{eff['forward_vs_per_layer_weight_chain']:.2f}x); reading those weights once "
            f"{1000 * eff['weight_read_s']:.0f} ms ({eff['weight_read_gb_per_s']:.1f} GB/s)."
        )
    if "families" in r:
        lines += [
            "",
            "| fuser | parameters | x fewer | MFLOP/token | x fewer | fuser forward | ms/token |",
            "|---|---|---|---|---|---|---|",
        ]
        for f in r["families"]:
            lines.append(
                f"| {f['name']} | {f['parameters'] / 1e6:,.2f} M | {f.get('parameters_vs_full', 1):.0f} | "
                f"{f['flops_per_token'] / 1e6:,.1f} | {f.get('flops_vs_full', 1):.0f} | {1000 * f['forward_s']:.1f} ms | "
                f"{f['ms_per_token']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="size preset (default: by device)")
    p.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: fp32 on CPU, bf16 on CUDA)")
    for name, typ in (
        ("prompt-len", int),
        ("answer-tokens", int),
        ("note-tokens", int),
        ("repeats", int),
        ("batch", int),
        ("batch-prompt-len", int),
        ("batch-answer-tokens", int),
        ("batch-repeats", int),
        ("scaling-repeats", int),
        ("long-repeats", int),
        ("receiver-layers", int),
        ("sharer-layers", int),
        ("threads", int),
        ("seed", int),
    ):
        p.add_argument(f"--{name}", type=typ, default=None)
    p.add_argument("--lengths", default=None, help="comma-separated prompt lengths for the fusion scaling")
    p.add_argument(
        "--compact",
        default=None,
        choices=sorted(fuser_cost.FAMILY_CONFIGS),
        help="the compact fuser of rows 2 and 4 (default lowrank-64)",
    )
    p.add_argument("--no-families", action="store_true", help="skip measurement 7 (the family table)")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/perf_suite_<device>.json)")
    a = p.parse_args(argv)
    device_kind = "cuda" if a.device.startswith("cuda") else "cpu"
    preset = PRESETS[a.preset or ("gpu" if device_kind == "cuda" else "cpu")]
    cfg = SuiteConfig(device=a.device, dtype=a.dtype or ("bfloat16" if device_kind == "cuda" else "float32"), **preset)
    for key in (
        "prompt_len",
        "answer_tokens",
        "note_tokens",
        "repeats",
        "batch",
        "batch_prompt_len",
        "batch_answer_tokens",
        "batch_repeats",
        "scaling_repeats",
        "long_repeats",
        "receiver_layers",
        "sharer_layers",
        "threads",
        "seed",
    ):
        if getattr(a, key) is not None:
            setattr(cfg, key, getattr(a, key))
    if a.lengths:
        cfg.lengths = [int(x) for x in a.lengths.split(",")]
    if a.compact:
        cfg.compact = a.compact
    cfg.families = not a.no_families

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    doc = run_suite(cfg, log)
    out = Path(a.out) if a.out else RESULTS / f"perf_suite_{device_kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    table = markdown(doc)
    out.with_suffix(".md").write_text(table)
    print(table)
    log(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
