"""Training throughput and peak memory of one optimizer step, real shapes, random weights.

Receiver: Qwen3-0.6B shapes; sharer: Qwen2.5-0.5B shapes (both fp32 on CPU, bf16 on CUDA, frozen, eval);
fuser: ``--fuser`` (a config of ``bench/fuser_cost.py``; default "full", the reference sizes: ~478 M fp32
parameters), AdamW. One conversation of ``--seq-len`` (256)
receiver tokens: an instruction of ``--prompt-tokens`` (128) random ids, every row but the last fused
(identity alignment: the pair shares its vocabulary), then the response. The step is the trainer's own
``optimizer_step`` (forward, backward, clipping, AdamW) on the fuser prepared by accelerate.

Where the step's time goes, from hooks on the real step (no separate re-runs):
- sharer: its backbone prefill (no grad);
- receiver: prefix prefill (no grad) + the response pass on the fused cache + its backward (from the end
  of the forward to the first gradient at a fuser output: autograd runs the later created receiver nodes
  before any node of the fusion, checked on tiny models by hooks on the decoder layers);
- fuser: its forward + its backward (to the last parameter gradient);
- optimizer: gradient clipping + AdamW update; other: loss, collation glue.

Peak memory: the process's peak resident set (``ru_maxrss``), with the static parts computed from tensor
sizes. ``--steps`` steps run (the first allocates AdamW's state); timings are of the median later step.

    python bench/train_throughput.py [--fuser full] [--seq-len 256] [--prompt-tokens 128] [--batch 1] [--steps 3]
    python bench/train_throughput.py --families     # every fuser config, one process each (peak memory per family)

Writes ``bench/results/train_throughput_<device>.json`` (``--fuser full``), ``..._<device>_<fuser>.json``
(another fuser) or, with ``--families``, ``train_throughput_families_<device>.json`` with one entry per config.
Not part of the tests (minutes on a CPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import fuser_cost
import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

import c2c
from c2c import C2CModel, FuserConfig, fuser_size
from c2c.alignment.records import AlignedPrompt
from c2c.batch import collate
from c2c.testing.models import QWEN2_5_0_5B_SHAPES, QWEN3_0_6B_SHAPES
from c2c.train import TrainConfig
from c2c.train.step import FuserModule, make_accelerator, make_optimizer, make_scheduler, optimizer_step


class StepClock:
    """Forward/backward time stamps of the receiver, sharer and fuser inside one training step."""

    def __init__(self, model: C2CModel, module: torch.nn.Module, optimizer: Any) -> None:
        self.model = model
        self.reset()
        self._sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
        recv, sharer = model.receiver, model.sharers[0]
        self._interval(recv, "receiver_suffix", flag="in_receiver")
        self._interval(recv.model, "receiver_prefix", skip_if="in_receiver")
        self._interval(sharer.model, "sharer")
        for fuser in model.fusers:  # one call per fuser computes every layer (stacked)
            self._interval(fuser, "fuser_forward", outputs=True)
        module.register_forward_pre_hook(lambda m, a: self._mark("forward_start"))
        module.register_forward_hook(lambda m, a, o: self._mark("forward_end"))
        for p in model.fusers.parameters():
            p.register_post_accumulate_grad_hook(lambda p: self._mark("last_param_grad"))
        inner = getattr(optimizer, "optimizer", optimizer)
        inner.register_step_pre_hook(lambda *a: self._mark("adamw_start"))
        inner.register_step_post_hook(lambda *a: self._mark("adamw_end"))

    def reset(self) -> None:
        self.t: dict[str, float] = {}
        self.sums: dict[str, float] = {}
        self.flags: dict[str, bool] = {}
        self._open: dict[str, float] = {}

    def _now(self) -> float:
        self._sync()
        return time.perf_counter()

    def _mark(self, name: str) -> None:
        self.t[name] = self._now()

    def _mark_once(self, name: str) -> None:
        if name not in self.t:
            self.t[name] = self._now()

    def _interval(
        self,
        module: torch.nn.Module,
        name: str,
        *,
        flag: str | None = None,
        skip_if: str | None = None,
        outputs: bool = False,
    ) -> None:
        def pre(m: Any, args: Any, kwargs: Any) -> None:
            if skip_if and self.flags.get(skip_if):
                return
            if flag:
                self.flags[flag] = True
            self._open[name] = self._now()

        def post(m: Any, args: Any, kwargs: Any, out: Any) -> None:
            if name not in self._open:
                return
            self.sums[name] = self.sums.get(name, 0.0) + self._now() - self._open.pop(name)
            if flag:
                self.flags[flag] = False
            if outputs:  # first gradient at a fuser output = the receiver's backward is over (see split())
                pairs = out.values() if isinstance(out, dict) else [out]
                for o in (t for pair in pairs for t in (pair if isinstance(pair, tuple) else (pair,))):
                    if isinstance(o, torch.Tensor) and o.requires_grad:
                        o.register_hook(lambda g: self._mark_once("first_fused_row_grad"))

        module.register_forward_pre_hook(pre, with_kwargs=True)
        module.register_forward_hook(post, with_kwargs=True)

    def split(self, total: float) -> dict[str, float]:
        s, t = self.sums, self.t
        fwd = t["forward_end"] - t["forward_start"]
        # autograd runs ready nodes latest-created first: every receiver node of the response pass was created
        # after the fusion, so the receiver's whole backward runs before the first fuser node.
        receiver_bwd = t["first_fused_row_grad"] - t["forward_end"]
        fuser_bwd = t["last_param_grad"] - t["first_fused_row_grad"]
        parts = {
            "sharer": s.get("sharer", 0.0),
            "receiver": s.get("receiver_prefix", 0.0) + s.get("receiver_suffix", 0.0) + receiver_bwd,
            "fuser": s.get("fuser_forward", 0.0) + fuser_bwd,
            "optimizer": total - (t["last_param_grad"] - t["forward_start"]),
        }
        parts["other"] = total - sum(parts.values())
        detail = {
            "forward": fwd,
            "sharer_forward": parts["sharer"],
            "receiver_prefix_forward": s.get("receiver_prefix", 0.0),
            "receiver_suffix_forward": s.get("receiver_suffix", 0.0),
            "receiver_backward": receiver_bwd,
            "fuser_forward": s.get("fuser_forward", 0.0),
            "fuser_backward": fuser_bwd,
            "adamw_update": t["adamw_end"] - t["adamw_start"],
            "clip_and_adamw": parts["optimizer"],
        }
        return {"part_seconds": parts, "share": {k: v / total for k, v in parts.items()}, "detail_seconds": detail}


def nbytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def run_families(args: argparse.Namespace, argv: list[str]) -> None:
    """Each fuser config in its own process (the peak resident set is per process), then one JSON and a table."""
    device = args.device.split(":")[0]
    rows = {}
    passthrough = [a for a in argv if a != "--families"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in fuser_cost.FAMILY_CONFIGS:
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, __file__, *passthrough, "--fuser", name, "--out", str(out)]
            print(f"--- {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True)
            rows[name] = json.loads(out.read_text())
    target = (
        Path(args.out) if args.out else Path(__file__).parent / "results" / f"train_throughput_families_{device}.json"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"benchmark": "train_throughput_families", "runs": rows}, indent=2) + "\n")
    print("| fuser | parameters | step | fuser share | peak RSS | fuser + AdamW state |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        mem = r["memory_gib"]
        print(
            f"| {name} | {r['setup']['fuser_parameters'] / 1e6:,.2f} M | {r['step_seconds']:.2f}s | "
            f"{100 * r['time_share']['fuser']:.0f}% | {mem['peak_rss']:.2f} GiB | "
            f"{mem['fuser_weights'] + mem['fuser_grads_peak'] + mem['adamw_state']:.2f} GiB |"
        )
    print(f"wrote {target}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--fuser", default="full", choices=sorted(fuser_cost.FAMILY_CONFIGS), help="fuser config (bench/fuser_cost.py)"
    )
    ap.add_argument("--families", action="store_true", help="every fuser config, one process each")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true", help="2-layer, small-vocab shapes: checks the script in seconds")
    args = ap.parse_args(argv)
    if args.families:
        run_families(args, argv)
        return
    r_shape, s_shape = dict(QWEN3_0_6B_SHAPES), dict(QWEN2_5_0_5B_SHAPES)
    # dropout as the reference recipe trains (0.1), whatever the inference configs of fuser_cost say
    fuser_cfg = FuserConfig.from_dict({**fuser_cost.fuser_config(args.fuser).to_dict(), "dropout": 0.1})
    if args.smoke:
        for shape in (r_shape, s_shape):
            shape.update(num_hidden_layers=2, vocab_size=120000)
        if args.fuser == "full":
            fuser_cfg = FuserConfig(hidden_size=64, intermediate_size=64)
        args.out = args.out or f"/tmp/train_throughput_smoke_{args.fuser}.json"
    llm_dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    t_build = time.perf_counter()
    torch.manual_seed(0)
    receiver = AutoModelForCausalLM.from_config(Qwen3Config(**r_shape), dtype=llm_dtype).to(args.device).eval()
    sharer = AutoModelForCausalLM.from_config(Qwen2Config(**s_shape), dtype=llm_dtype).to(args.device).eval()
    model = C2CModel.from_models(receiver, sharer, fuser_config=fuser_cfg, seed=0)  # fp32 fuser
    build_seconds = time.perf_counter() - t_build

    cfg = TrainConfig(output_dir="unused", mixed_precision="auto")
    accelerator = make_accelerator(cfg)
    module = FuserModule(model)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, 0, 1000)
    module, optimizer = accelerator.prepare(module, optimizer)
    model.train()
    model.set_gate_temperature(1.0)
    clock = StepClock(model, accelerator.unwrap_model(module), optimizer)

    gen = torch.Generator().manual_seed(1)
    resp_len = args.seq_len - args.prompt_tokens
    alignments, responses = [], []
    for _ in range(args.batch):
        prompt = torch.randint(1000, 100000, (args.prompt_tokens,), generator=gen).tolist()
        alignments.append([AlignedPrompt.identity(prompt)])
        responses.append(torch.randint(1000, 100000, (resp_len,), generator=gen).tolist())
    batch = collate(alignments, pad_id=0, sharer_pad_ids=[0], responses=responses)

    steps = []
    for _ in range(args.steps):
        clock.reset()
        t0 = clock._now()
        out = optimizer_step(accelerator, module, optimizer, scheduler, [batch], max_grad_norm=cfg.max_grad_norm)
        total = clock._now() - t0
        steps.append({"seconds": total, "loss": out.loss, "tokens": out.seen, **clock.split(total)})
    # the first step allocates AdamW's state and warms the allocator: report the median of the others
    timed = sorted(steps[1:] or steps, key=lambda r: r["seconds"])
    last = timed[len(timed) // 2]
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    inner = getattr(optimizer, "optimizer", optimizer)
    adam = [v for st in inner.state.values() for v in st.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    fuser_params = list(model.fusers.parameters())
    size = fuser_size(model.fusers[0].config, model.fusers[0].geometry)
    gib = 2**30
    result = {
        "benchmark": "train_throughput",
        "setup": {
            "receiver": "Qwen3-0.6B shapes (random weights)",
            "sharer": "Qwen2.5-0.5B shapes (random weights)",
            "device": args.device,
            "llm_dtype": str(llm_dtype).replace("torch.", ""),
            "fuser_dtype": "float32",
            "mixed_precision": accelerator.mixed_precision,
            "fuser": args.fuser,
            "fuser_config": fuser_cfg.to_dict(),
            "fuser_parameters": size.parameters,
            "fuser_flops_per_token": size.flops_per_token,
            "sequence_length": args.seq_len,
            "instruction_tokens": args.prompt_tokens,
            "fused_rows_per_conversation": args.prompt_tokens - 1,
            "response_tokens": resp_len,
            "batch": args.batch,
            "gates": "trained-mode Gumbel gates (every layer computed)",
            "torch_threads": torch.get_num_threads(),
            "steps_run": args.steps,
            "model_build_seconds": build_seconds,
        },
        "step_seconds": last["seconds"],
        "tokens_per_second": last["tokens"] / last["seconds"],
        "response_tokens_per_second": args.batch * resp_len / last["seconds"],
        "time_share": last["share"],
        "time_seconds": last["part_seconds"],
        "component_seconds": last["detail_seconds"],
        "memory_gib": {
            "peak_rss": peak_rss / gib,
            "cuda_peak_allocated": torch.cuda.max_memory_allocated() / gib if args.device.startswith("cuda") else None,
            "llm_weights": nbytes(list(receiver.parameters()) + list(sharer.parameters())) / gib,
            "fuser_weights": nbytes(fuser_params) / gib,
            "fuser_grads_peak": nbytes(fuser_params) / gib,
            "adamw_state": nbytes(adam) / gib,
        },
        "all_steps": [{k: v for k, v in s.items() if k in ("seconds", "loss", "share")} for s in steps],
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "load_average_1m": _loadavg(),
        },
        "versions": {"c2c": c2c.__version__, "torch": torch.__version__},
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    suffix = "" if args.fuser == "full" else f"_{args.fuser}"
    out = Path(
        args.out or Path(__file__).parent / "results" / f"train_throughput_{args.device.split(':')[0]}{suffix}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps({k: result[k] for k in ("step_seconds", "tokens_per_second", "time_share", "memory_gib")}, indent=2)
    )
    print(f"wrote {out}")


def _loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return None


if __name__ == "__main__":
    main()
