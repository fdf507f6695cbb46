"""Per-stage wall-clock timing and its summary statistics.

Stages (seconds, per generate call = one batch): ``sharer_prefill``, ``fusion``, ``receiver_prefill``,
``note`` (text-to-text: the sharer decoding its note), ``routing``, ``decode``, and ``total`` (wall time of
the whole call as the runner saw it). CUDA work is synchronised at every stage boundary so a stage is charged
with its own kernels, not with the ones it happened to wait for.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch

__all__ = ["STAGES", "StageTimer", "synchronize", "percentile", "summarize", "summarize_stages"]

STAGES: tuple[str, ...] = ("routing", "sharer_prefill", "note", "fusion", "receiver_prefill", "decode", "total")
PERCENTILES: tuple[int, ...] = (10, 50, 90, 95, 99)


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued accelerator work (no-op on CPU)."""
    dev = torch.device(device) if device is not None else None
    if torch.cuda.is_available() and (dev is None or dev.type == "cuda"):
        torch.cuda.synchronize(dev)


class StageTimer:
    """Accumulates seconds per stage: ``with timer.stage("decode"): ...``."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def add(self, timings: Mapping[str, float]) -> None:
        """Add stage seconds measured elsewhere (e.g. by ``C2CModel.generate``)."""
        for k, v in timings.items():
            self.seconds[k] = self.seconds.get(k, 0.0) + float(v)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), ``q`` in [0, 100]."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """n, mean, min, max and the :data:`PERCENTILES` (``p50`` is the median) of ``values``."""
    vals = [float(v) for v in values]
    out: dict[str, float] = {"n": len(vals)}
    if not vals:
        return out
    out["mean"] = sum(vals) / len(vals)
    out["min"], out["max"] = min(vals), max(vals)
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(vals, q)
    out["median"] = out["p50"]
    return out


def summarize_stages(timings: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Per-stage :func:`summarize` over a list of timing dicts (a stage absent from a dict is skipped)."""
    names = [s for s in STAGES if any(s in t for t in timings)]
    names += sorted({k for t in timings for k in t} - set(names))
    return {name: summarize([t[name] for t in timings if name in t]) for name in names}
