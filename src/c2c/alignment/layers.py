"""Receiver-layer -> sharer-layer maps (docs/method.md, "Layers").

Maps are built over the KV layers of each model (layers that hold per-token keys and values), and
returned as ``{receiver model layer index: sharer model layer index}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, Union

LayerMapSpec = Union[Literal["terminal", "proportional"], Mapping[int, int], Mapping[str, int]]


def terminal_map(receiver_layers: Sequence[int], sharer_layers: Sequence[int]) -> dict[int, int]:
    """Last meets last: receiver KV layer ``t`` of ``T`` reads sharer KV layer ``clamp(t + S - T, 0, S-1)``."""
    t_n, s_n = len(receiver_layers), len(sharer_layers)
    _check_nonempty(t_n, s_n)
    return {r: sharer_layers[min(max(t + s_n - t_n, 0), s_n - 1)] for t, r in enumerate(receiver_layers)}


def proportional_map(receiver_layers: Sequence[int], sharer_layers: Sequence[int]) -> dict[int, int]:
    """Depth-proportional nearest layer: first meets first, last meets last, linear in between."""
    t_n, s_n = len(receiver_layers), len(sharer_layers)
    _check_nonempty(t_n, s_n)
    if t_n == 1:
        return {receiver_layers[0]: sharer_layers[-1]}
    # Round half up explicitly so the map does not depend on banker's rounding.
    return {r: sharer_layers[int(t * (s_n - 1) / (t_n - 1) + 0.5)] for t, r in enumerate(receiver_layers)}


def build_layer_map(spec: LayerMapSpec, receiver_layers: Sequence[int], sharer_layers: Sequence[int]) -> dict[int, int]:
    """Resolve a layer-map spec ("terminal", "proportional" or an explicit mapping) and validate it.

    An explicit mapping may omit receiver layers (they get no fuser) but may only name KV layers.
    """
    if spec == "terminal":
        return terminal_map(receiver_layers, sharer_layers)
    if spec == "proportional":
        return proportional_map(receiver_layers, sharer_layers)
    if isinstance(spec, str):
        raise ValueError(f"unknown layer map {spec!r}; use 'terminal', 'proportional' or a dict")
    out = {int(r): int(s) for r, s in dict(spec).items()}
    bad_r = sorted(set(out) - set(receiver_layers))
    bad_s = sorted(set(out.values()) - set(sharer_layers))
    if bad_r:
        raise ValueError(
            f"layer map names receiver layers {bad_r} that hold no per-token KV; valid: {list(receiver_layers)}"
        )
    if bad_s:
        raise ValueError(
            f"layer map names sharer layers {bad_s} that hold no per-token KV; valid: {list(sharer_layers)}"
        )
    if not out:
        raise ValueError("explicit layer map is empty")
    return dict(sorted(out.items()))


def _check_nonempty(t_n: int, s_n: int) -> None:
    if t_n == 0 or s_n == 0:
        raise ValueError("both models need at least one layer with per-token keys/values to fuse")
