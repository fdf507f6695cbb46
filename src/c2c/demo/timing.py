"""Interleaved latency: every path timed query by query in one loop, so a change of machine load hits every
path alike and the ratios between paths do not depend on when each was measured.

For each query the paths run in a rotating order (query ``i`` starts with path ``i mod n``), after one
untimed warm-up round. Each call is one query at batch size 1 with its own stage split (``StageTimer``).
The load average is recorded at the start and at the end.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm

from c2c.demo.world import Question
from c2c.eval.latency import summarize_stages

PathTimer = Callable[[Question], dict[str, float]]
"""Runs one query along one path and returns its stage seconds, ``total`` included."""


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        return None


def interleaved(paths: dict[str, PathTimer], qs: Sequence[Question]) -> dict[str, Any]:
    """Median seconds per stage and per path over ``qs``, every path timed in one interleaved loop.

    Returns ``{"paths": {name: {"median_seconds", "stages"}}, "queries", "load_average_start",
    "load_average_end", "order"}``."""
    if not qs:
        raise ValueError("interleaved timing needs at least one query")
    names = list(paths)
    load_start = _load()
    for name in names:  # warm-up: first calls allocate caches and pick kernels
        paths[name](qs[0])
    per_path: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for i, q in enumerate(tqdm(qs, desc="interleaved latency", leave=False, dynamic_ncols=True)):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            per_path[name].append(paths[name](q))
    out: dict[str, Any] = {"paths": {}}
    for name, timings in per_path.items():
        stages = summarize_stages(timings)
        out["paths"][name] = {
            "median_seconds": stages["total"]["median"],
            "stages": {k: v["median"] for k, v in stages.items()},
        }
    out.update(queries=len(qs), order="rotating", load_average_start=load_start, load_average_end=_load())
    return out


def ratio(timing: dict[str, Any], num: str, den: str) -> float:
    """``median(num) / median(den)`` from one interleaved loop."""
    p = timing["paths"]
    return float(p[num]["median_seconds"]) / float(p[den]["median_seconds"])
