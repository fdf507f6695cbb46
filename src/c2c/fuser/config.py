"""Typed configuration of a fuser (docs/method.md, "The fuser"): its family, sizes and behaviour."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from c2c.fields import check_field_types

Variant = Literal["full", "no_gate", "no_dynamic_weight", "projection_only"]
VARIANTS: tuple[str, ...] = get_args(Variant)
Family = Literal["full", "lowrank", "shared", "linear"]
FAMILIES: tuple[str, ...] = get_args(Family)
Inputs = Literal["both", "sharer"]
DEFAULT_RANK = 64
DEFAULT_SHARED_HIDDEN_SIZE = 256
# Fields that size one family only; setting one for another family is refused (it would be silently ignored).
_FULL_ONLY = ("hidden_size", "intermediate_size", "weight_intermediate_size", "num_projection_blocks")
_FAMILY_FIELDS: dict[str, tuple[str, ...]] = {
    "full": _FULL_ONLY,
    "lowrank": ("rank",),
    "shared": ("shared_hidden_size",),
    "linear": (),
}
Activation = Literal["gelu", "silu", "relu"]
LayerMapName = Literal["terminal", "proportional"]
LayerMapSpec = LayerMapName | dict[int, int]
"""A layer map by name, or explicit ``{receiver layer: sharer layer}``."""


@dataclass
class FuserConfig:
    """Family, sizes and behaviour of the per-layer fusers (defaults are the reference implementation's).

    Every family computes, per receiver layer and separately for keys and values, a projection ``P`` of the
    receiver's shape and a per-token, per-KV-head weight ``w``, and adds ``gate * sigmoid(w) * P`` to the
    receiver rows (see :mod:`c2c.fuser.families` for the networks and ``fuser_size`` for their costs).

    Attributes:
        family: the network that computes ``P`` and ``w``:
            "full" (the paper's: ``Linear([sharer; receiver])`` to ``hidden_size``, a residual FFN trunk, an FFN
            projection head and an FFN weight head, per layer);
            "lowrank" (the concat-and-project path factored through ``rank``: ``[sharer; receiver] -> rank``,
            one residual FFN block at width ``rank``, then ``rank -> receiver`` and ``rank -> heads``, per layer);
            "shared" (one trunk of width ``shared_hidden_size`` shared by every receiver layer, told the layer
            by a learned layer embedding, with a per-layer norm and per-layer linear heads);
            "linear" (a per-layer linear map from the sharer rows to the receiver rows, and a per-layer
            linear weight head on the normalised ``[sharer; receiver]``).
        hidden_size: width of the trunk (reference 1024; family "full" only).
        intermediate_size: inner width of the trunk and projection FFN blocks (reference 1024).
        weight_intermediate_size: inner width of the weight head's FFN block (reference: ``hidden_size``).
        num_projection_blocks: residual FFN blocks in the projection head (reference ``num_layers - 2`` = 1).
        dropout: dropout inside every FFN block (training only; family "linear" has none).
        activation: "gelu", "silu" or "relu".
        rms_norm_eps: epsilon of the pre-norms.
        variant: "full" (gate x dynamic weight x projection, added), "no_gate" (gate fixed open),
            "no_dynamic_weight" (weight fixed to 1), "projection_only" (the sharer rows alone are
            projected and *replace* the receiver rows: the paper's weakest ablation).
        inputs: what the networks read per token: "both" (the paper: the ``[sharer ; receiver]`` rows) or
            "sharer" (the sharer rows only; the correction is still gated, weighted per KV head and added to
            the receiver rows, and a fresh fuser still leaves the receiver unchanged). Without the receiver
            rows a fuser cannot key on what the receiver holds for a token, e.g. memorise the answers of the
            entities it trained on from the receiver's rows of their names instead of reading the sharer:
            measured in the offline demo, where it generalises to unseen entities better (docs/method.md).
        gate_init: initial gate logit. Hard gates open where the logit is > 0, so 0.0 leaves a fresh
            fuser's receiver exactly unchanged at inference.
        temperature_start / temperature_end: Gumbel-sigmoid temperature, annealed exponentially over
            training (``gate_temperature(step, total)``).
        layer_map: "terminal" (last meets last), "proportional", or an explicit
            ``{receiver layer: sharer layer}`` mapping.
        rank: bottleneck width of family "lowrank" (None: 64).
        shared_hidden_size: width of the shared trunk of family "shared" (None: 256).
        input_noise: training only: Gaussian noise added to every input row of the networks, with standard
            deviation ``input_noise`` times the row's RMS (0: none). A regulariser against keying on the
            exact rows of the training prompts.
    """

    hidden_size: int = 1024
    intermediate_size: int = 1024
    weight_intermediate_size: int | None = None
    num_projection_blocks: int = 1
    dropout: float = 0.1
    activation: Activation = "gelu"
    rms_norm_eps: float = 1e-6
    variant: Variant = "full"
    inputs: Inputs = "both"
    gate_init: float = 0.0
    temperature_start: float = 1.0
    temperature_end: float = 0.001
    layer_map: LayerMapSpec = field(default="terminal")
    family: Family = "full"
    rank: int | None = None
    shared_hidden_size: int | None = None
    input_noise: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.layer_map, dict):  # JSON keys are strings
            try:
                self.layer_map = {int(k): int(v) for k, v in self.layer_map.items()}
            except (TypeError, ValueError) as exc:
                raise TypeError(f"layer_map must map receiver layer indices to sharer layer indices: {exc}") from exc
        if isinstance(self.variant, str) and self.variant not in VARIANTS:
            raise ValueError(f"unknown fuser variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if isinstance(self.family, str) and self.family not in FAMILIES:
            raise ValueError(f"unknown fuser family {self.family!r}; choose one of {', '.join(FAMILIES)}")
        if isinstance(self.inputs, str) and self.inputs not in get_args(Inputs):
            raise ValueError(f"unknown fuser inputs {self.inputs!r}; use 'both' (the paper) or 'sharer'")
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
        if not 0.0 <= self.input_noise < float("inf"):
            raise ValueError(f"input_noise must be a finite number >= 0 (0 disables it), got {self.input_noise}")
        if self.weight_intermediate_size is not None and self.weight_intermediate_size <= 0:
            raise ValueError(f"weight_intermediate_size must be positive, got {self.weight_intermediate_size}")
        if not 0 < self.temperature_end <= self.temperature_start:
            raise ValueError("need 0 < temperature_end <= temperature_start")
        for name in ("rank", "shared_hidden_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self._check_family_fields()

    def _check_family_fields(self) -> None:
        """Refuse a size field the chosen family does not use (it would be silently ignored)."""
        defaults = {f.name: f.default for f in fields(self)}
        own = _FAMILY_FIELDS[self.family]
        for fam, names in _FAMILY_FIELDS.items():
            for name in names:
                if name in own or getattr(self, name) == defaults[name]:
                    continue
                raise ValueError(
                    f"{name}={getattr(self, name)!r} sizes family {fam!r} but this fuser is family {self.family!r}; "
                    f"set family={fam!r} (--set fuser.family={fam}) or drop {name}"
                    + (f" (family {self.family!r} is sized by {', '.join(own)})" if own else "")
                )

    def size_label(self) -> str:
        """What sizes this fuser, in words: ``full, hidden 1024``, ``lowrank, rank 16``, ``shared, trunk 256``
        (then ``, sharer rows only`` for ``inputs="sharer"``)."""
        if self.family == "full":
            label = f"full, hidden {self.hidden_size}"
        elif self.family == "lowrank":
            label = f"lowrank, rank {self.resolved_rank}"
        elif self.family == "shared":
            label = f"shared, trunk {self.resolved_shared_hidden_size}"
        else:
            label = self.family
        return label + (", sharer rows only" if self.inputs == "sharer" else "")

    @property
    def resolved_rank(self) -> int:
        """Bottleneck width of family "lowrank" (``rank``, default 64)."""
        return self.rank if self.rank is not None else DEFAULT_RANK

    @property
    def resolved_shared_hidden_size(self) -> int:
        """Trunk width of family "shared" (``shared_hidden_size``, default 256)."""
        return self.shared_hidden_size if self.shared_hidden_size is not None else DEFAULT_SHARED_HIDDEN_SIZE

    @property
    def has_gate(self) -> bool:
        return self.variant in ("full", "no_dynamic_weight")

    @property
    def has_weight(self) -> bool:
        return self.variant in ("full", "no_gate")

    @property
    def reads_receiver(self) -> bool:
        """Whether the networks read the receiver rows (not for ``inputs="sharer"`` nor "projection_only")."""
        return self.inputs == "both" and self.variant != "projection_only"

    @property
    def replaces_rows(self) -> bool:
        """The "projection_only" variant: the projection replaces the receiver rows instead of being added."""
        return self.variant == "projection_only"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(self.layer_map, dict):
            d["layer_map"] = {str(k): v for k, v in self.layer_map.items()}
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "FuserConfig") -> FuserConfig:
        """Build from a mapping (YAML section, ``fuser_config.json``); unknown keys and wrong types are errors.
        A mapping without ``family`` (written before families existed) is the paper's "full" fuser."""
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
