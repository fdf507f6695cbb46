"""Typed configuration of a fuser (docs/method.md, "The fuser")."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from c2c.fields import check_field_types

Variant = Literal["full", "no_gate", "no_dynamic_weight", "projection_only"]
VARIANTS: tuple[str, ...] = get_args(Variant)
Activation = Literal["gelu", "silu", "relu"]
LayerMapName = Literal["terminal", "proportional"]
LayerMapSpec = LayerMapName | dict[int, int]
"""A layer map by name, or explicit ``{receiver layer: sharer layer}``."""


@dataclass
class FuserConfig:
    """Sizes and behaviour of the per-layer fusers (defaults are the reference implementation's).

    Attributes:
        hidden_size: width of the trunk (reference 1024).
        intermediate_size: inner width of the trunk and projection FFN blocks (reference 1024).
        weight_intermediate_size: inner width of the weight head's FFN block (reference: ``hidden_size``).
        num_projection_blocks: residual FFN blocks in the projection head (reference ``num_layers - 2`` = 1).
        dropout: dropout inside every FFN block (training only).
        activation: "gelu", "silu" or "relu".
        rms_norm_eps: epsilon of the pre-norms.
        variant: "full" (gate x dynamic weight x projection, added), "no_gate" (gate fixed open),
            "no_dynamic_weight" (weight fixed to 1), "projection_only" (the sharer rows alone are
            projected and *replace* the receiver rows: the paper's weakest ablation).
        gate_init: initial gate logit. Hard gates open where the logit is > 0, so 0.0 leaves a fresh
            fuser's receiver exactly unchanged at inference.
        temperature_start / temperature_end: Gumbel-sigmoid temperature, annealed exponentially over
            training (``gate_temperature(step, total)``).
        layer_map: "terminal" (last meets last), "proportional", or an explicit
            ``{receiver layer: sharer layer}`` mapping.
    """

    hidden_size: int = 1024
    intermediate_size: int = 1024
    weight_intermediate_size: int | None = None
    num_projection_blocks: int = 1
    dropout: float = 0.1
    activation: Activation = "gelu"
    rms_norm_eps: float = 1e-6
    variant: Variant = "full"
    gate_init: float = 0.0
    temperature_start: float = 1.0
    temperature_end: float = 0.001
    layer_map: LayerMapSpec = field(default="terminal")

    def __post_init__(self) -> None:
        if isinstance(self.layer_map, dict):  # JSON keys are strings
            try:
                self.layer_map = {int(k): int(v) for k, v in self.layer_map.items()}
            except (TypeError, ValueError) as exc:
                raise TypeError(f"layer_map must map receiver layer indices to sharer layer indices: {exc}") from exc
        if isinstance(self.variant, str) and self.variant not in VARIANTS:
            raise ValueError(f"unknown fuser variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if isinstance(self.activation, str) and self.activation not in get_args(Activation):
            raise ValueError(f"unknown activation {self.activation!r}; use 'gelu', 'silu' or 'relu'")
        if isinstance(self.layer_map, str) and self.layer_map not in get_args(LayerMapName):
            raise ValueError(
                f"unknown layer_map {self.layer_map!r}; use 'terminal', 'proportional' or an explicit "
                "{receiver layer: sharer layer} mapping"
            )
        check_field_types(self, "FuserConfig")
        for name in ("hidden_size", "intermediate_size"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_projection_blocks < 0:
            raise ValueError("num_projection_blocks must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.weight_intermediate_size is not None and self.weight_intermediate_size <= 0:
            raise ValueError(f"weight_intermediate_size must be positive, got {self.weight_intermediate_size}")
        if not 0 < self.temperature_end <= self.temperature_start:
            raise ValueError("need 0 < temperature_end <= temperature_start")

    @property
    def has_gate(self) -> bool:
        return self.variant in ("full", "no_dynamic_weight")

    @property
    def has_weight(self) -> bool:
        return self.variant in ("full", "no_gate")

    @property
    def reads_receiver(self) -> bool:
        return self.variant != "projection_only"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(self.layer_map, dict):
            d["layer_map"] = {str(k): v for k, v in self.layer_map.items()}
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "FuserConfig") -> FuserConfig:
        """Build from a mapping (YAML section, ``fuser_config.json``); unknown keys and wrong types are errors."""
        if not isinstance(data, dict):
            raise TypeError(f"{source} must be a mapping of FuserConfig fields, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{source}: unknown FuserConfig fields {unknown} (known: {', '.join(sorted(known))}); "
                "was it written by a newer c2c?"
            )
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            if source == "FuserConfig":
                raise
            raise type(exc)(f"{source}: {exc}") from exc
