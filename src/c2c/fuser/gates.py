"""Layer gates: Gumbel-sigmoid (logistic noise) in training, hard threshold at inference."""

from __future__ import annotations

import torch
from torch import Tensor


def gate_temperature(step: int, total_steps: int, start: float = 1.0, end: float = 0.001) -> float:
    """Exponential annealing from ``start`` (step 0) to ``end`` (step ``total_steps`` and after)."""
    if total_steps <= 0:
        return end
    ratio = min(max(step / total_steps, 0.0), 1.0)
    return start * (end / start) ** ratio


def gumbel_sigmoid(logit: Tensor, temperature: float | Tensor, shape: tuple[int, ...]) -> Tensor:
    """Relaxed Bernoulli sample ``sigmoid((logit + L) / tau)`` with logistic noise ``L``, of ``shape``.

    Logistic noise (the difference of two Gumbels) makes the sample's hard limit ``logit + L > 0`` a
    Bernoulli(sigmoid(logit)) draw whose median is the inference gate ``logit > 0``; the reference's
    single Gumbel sample biases training away from inference.
    """
    u = torch.rand(shape, device=logit.device, dtype=torch.float32).clamp_(1e-6, 1 - 1e-6)
    noise = (torch.log(u) - torch.log1p(-u)).to(logit.dtype)
    return torch.sigmoid((logit + noise) / temperature)


def hard_gate(logit: Tensor) -> Tensor:
    """Inference gate: 1 where the logit is > 0, else 0 (same dtype as ``logit``)."""
    return (logit > 0).to(logit.dtype)
