"""C2C vs receiver-only latency on the real shapes of Qwen3-0.6B <- Qwen2.5-0.5B (random weights).

Measures, in one run and interleaved (so machine load hits both alike):
- end-to-end latency ratio C2C / receiver-only for one ~170-token prompt and 16 new tokens;
- the C2C split into sharer prefill / fusion / receiver prefill / decode;
- the per-token decode cost ratio C2C / receiver-only (target <= 1.02: fusion costs nothing after the prompt).

All gates are opened (every layer fused: the worst case). Writes ``bench/results/c2c_latency_<device>.json``.

    python bench/c2c_latency.py [--device cuda] [--dtype bfloat16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

import c2c
from c2c import C2CModel, FuserConfig, fuser_size
from c2c.testing.models import QWEN2_5_0_5B_SHAPES, QWEN3_0_6B_SHAPES


def build(device: str, dtype: torch.dtype, seed: int = 0) -> C2CModel:
    torch.manual_seed(seed)
    receiver = AutoModelForCausalLM.from_config(Qwen3Config(**QWEN3_0_6B_SHAPES), dtype=dtype).to(device).eval()
    sharer = AutoModelForCausalLM.from_config(Qwen2Config(**QWEN2_5_0_5B_SHAPES), dtype=dtype).to(device).eval()
    model = C2CModel.from_models(receiver, sharer, fuser_config=FuserConfig(), dtype=dtype, seed=seed)
    model.fusers[0].set_gates(True)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    ap.add_argument("--prompt-tokens", type=int, default=170)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dtype_name = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name)
    model = build(args.device, dtype)
    size = fuser_size(model.fusers[0].config, model.fusers[0].geometry)
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(1000, 100000, (args.prompt_tokens,), generator=gen).tolist()

    def run(mode: str) -> dict[str, float]:
        # min_new_tokens via a prompt-independent eos: random models rarely emit eos; cut is checked below
        out = model.generate(prompt, mode=mode, max_new_tokens=args.new_tokens, return_dict=True)
        t = dict(out.timings)
        t["new_tokens"] = len(out.sequences[0])
        return t

    run("c2c"), run("receiver")  # warm-up
    rows: dict[str, list[dict[str, float]]] = {"c2c": [], "receiver": []}
    for i in range(args.repeats):
        for mode in ("c2c", "receiver") if i % 2 == 0 else ("receiver", "c2c"):
            rows[mode].append(run(mode))

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[mode])

    def per_token(mode: str) -> float:
        return statistics.median(r["decode"] / max(r["new_tokens"], 1) for r in rows[mode])

    n_new = {m: statistics.median(r["new_tokens"] for r in rows[m]) for m in rows}
    result = {
        "benchmark": "c2c_latency",
        "setup": {
            "receiver": "Qwen3-0.6B shapes (random weights)",
            "sharer": "Qwen2.5-0.5B shapes (random weights)",
            "fuser_parameters": size.parameters,
            "fuser_gflops_per_token": size.flops_per_token / 1e9,
            "prompt_tokens": args.prompt_tokens,
            "max_new_tokens": args.new_tokens,
            "new_tokens_median": n_new,
            "repeats": args.repeats,
            "device": args.device,
            "dtype": dtype_name,
            "gates": "all open",
            "torch_threads": torch.get_num_threads(),
        },
        "seconds_median": {
            m: {k: med(m, k) for k in ("sharer_prefill", "fusion", "receiver_prefill", "decode", "total")} for m in rows
        },
        "ratios": {
            "c2c_over_receiver_total": med("c2c", "total") / med("receiver", "total"),
            "c2c_over_receiver_decode_per_token": per_token("c2c") / per_token("receiver"),
        },
        "targets": {"c2c_over_receiver_decode_per_token": "<= 1.02"},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
        },
        "versions": {"c2c": c2c.__version__, "torch": torch.__version__},
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = Path(args.out or Path(__file__).parent / "results" / f"c2c_latency_{args.device.split(':')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"seconds_median": result["seconds_median"], "ratios": result["ratios"]}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
