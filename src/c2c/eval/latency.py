"""Per-stage wall-clock timing and its summary statistics.

Stages (seconds, per generate call = one batch): ``sharer_prefill``, ``fusion``, ``receiver_prefill``,
``note`` (text-to-text: the sharer decoding its note), ``routing``, ``decode``, and ``total`` (wall time of
the whole call as the runner saw it). CUDA work is synchronised at every stage boundary so a stage is charged
with its own kernels, not with the ones it happened to wait for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["STAGES", "percentile", "summarize", "summarize_stages"]

STAGES: tuple[str, ...] = ("routing", "sharer_prefill", "note", "fusion", "receiver_prefill", "decode", "total")
PERCENTILES: tuple[int, ...] = (10, 50, 90, 95, 99)


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
