"""One optimizer step and its parts: the module accelerate prepares (the fusers only), the accelerator,
AdamW with its parameter groups, the learning-rate schedule, and the step itself."""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.tracking import GeneralTracker
from torch import Tensor, nn

from c2c.batch import C2CBatch
from c2c.model import C2CModel
from c2c.train.batching import count_response_tokens
from c2c.train.config import TrainConfig

__all__ = [
    "FuserModule",
    "StepOutput",
    "is_gate_logit",
    "make_accelerator",
    "make_optimizer",
    "make_scheduler",
    "optimizer_step",
]


class FuserModule(nn.Module):
    """What accelerate prepares: the fusers only. Calling it runs the whole C2C forward, so DDP's
    gradient hooks see the fuser parameters while the frozen LLMs stay outside the wrapper."""

    _c2c: C2CModel

    def __init__(self, model: C2CModel) -> None:
        super().__init__()
        self.fusers = model.fusers
        object.__setattr__(self, "_c2c", model)  # not a submodule: never wrapped, moved or broadcast

    def forward(self, batch: C2CBatch) -> Tensor:
        """Summed (not averaged) response-token loss of ``batch``."""
        out = self._c2c(batch)
        assert out.loss is not None  # training batches carry labels
        # Zero-weighted anchor: fuser layers that read nothing in this batch (e.g. sliding sharer layers)
        # get zero gradients rather than none, so DDP and AdamW see the same parameters on every process.
        anchor = torch.stack([p.reshape(-1)[0] for p in self.fusers.parameters() if p.requires_grad]).sum()
        return out.loss * out.num_tokens + 0.0 * anchor


def make_accelerator(cfg: TrainConfig, trackers: Sequence[GeneralTracker] = ()) -> Accelerator:
    has_gpu = torch.cuda.is_available()
    precision: str = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if has_gpu and torch.cuda.is_bf16_supported() else "no"
    # accelerate only starts a CPU process group (gloo) when told it runs on CPU.
    mps = getattr(torch.backends, "mps", None)
    cpu = not has_gpu and not (mps is not None and mps.is_available())
    kwargs: dict[str, Any] = {
        "mixed_precision": precision,
        "cpu": cpu,
        "log_with": [*cfg.log_with, *trackers] or None,
        "project_dir": cfg.output_dir,
        "step_scheduler_with_optimizer": False,  # the scheduler counts optimizer steps, whatever the process count
    }
    try:
        return Accelerator(**kwargs)
    except ValueError as exc:
        # accelerate keeps one state per process; a single-process caller (notebook, demo, tests) may train
        # again with another precision. Never reset a distributed state.
        if "already been initialized" not in str(exc) or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise
        AcceleratorState._reset_state()
        GradientState._reset_state()
        return Accelerator(**kwargs)


def is_gate_logit(name: str) -> bool:
    """Whether fuser parameter ``name`` is a gate logit (``...gate_logit``), the parameters
    ``gate_learning_rate`` applies to."""
    return name.rsplit(".", 1)[-1].startswith("gate_logit")


def make_optimizer(c2c: C2CModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on gates, norms and biases (anything 1-D). With ``gate_learning_rate`` the gate
    logits form their own group at that learning rate (the schedule scales every group alike)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    gates: list[nn.Parameter] = []
    for name, p in c2c.fusers.named_parameters():
        if not p.requires_grad:
            continue
        if cfg.gate_learning_rate is not None and is_gate_logit(name):
            gates.append(p)
        elif p.ndim < 2 or "gate" in name or "norm" in name or name.endswith("bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if gates:
        groups.append({"params": gates, "weight_decay": 0.0, "lr": cfg.gate_learning_rate})
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
    )


class _LinearWarmup:
    """Linear warmup to the peak learning rate, then linear decay to 0 (picklable for checkpoints)."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return float(step + 1) / float(self.warmup + 1)
        return max(0.0, float(self.total - step) / float(max(1, self.total - self.warmup)))


def make_scheduler(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _LinearWarmup(warmup, total))


@dataclass
class StepOutput:
    """One optimizer step, summed over processes."""

    loss: float  # mean over every response token of the step
    grad_norm: float | None
    tokens: int  # response tokens
    seen: int  # receiver tokens (prompt + response)


def optimizer_step(
    accelerator: Accelerator,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    window: Sequence[C2CBatch],
    *,
    max_grad_norm: float = 1.0,
) -> StepOutput:
    """Forward/backward over the micro-batches of ``window``, clip, step, zero.

    The loss is normalised by the response tokens of the whole window on all processes, so the gradient is
    that of the mean token loss of the global batch whatever the split into processes and micro-batches.
    """
    device, world = accelerator.device, accelerator.num_processes
    local = torch.tensor(
        [sum(count_response_tokens(b) for b in window), sum(int(b.attention_mask.sum()) for b in window)], device=device
    )
    counts = accelerator.reduce(local, "sum")
    global_tokens, global_seen = int(counts[0].item()), int(counts[1].item())
    loss_sum = torch.zeros((), device=device)
    for i, batch in enumerate(window):
        last = i == len(window) - 1
        with nullcontext() if last or world == 1 else accelerator.no_sync(module):
            summed = module(batch.to(device))
            # DDP averages gradients over processes: scale so the result is sum / all tokens of the step.
            accelerator.backward(summed * (world / global_tokens))
        loss_sum = loss_sum + summed.detach().float()
    grad_norm = None
    if max_grad_norm > 0:
        grad_norm = float(accelerator.clip_grad_norm_(module.parameters(), max_grad_norm))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    loss = float(accelerator.reduce(loss_sum, "sum").item()) / global_tokens
    return StepOutput(loss, grad_norm, global_tokens, global_seen)
