"""The fuser: for every receiver layer, gated K and V corrections computed from sharer and receiver rows.

For one receiver layer, separately for keys and values, per token (no mixing across tokens)::

    P, w = network([sharer ; receiver])                # family "full": the paper's projector
    K'   = K + gate * sigmoid(w) * P                   # P: [B, Hr, T, Dr], w: one per token and KV head

The networks of all receiver layers are stacked (:mod:`c2c.fuser.stacked`): one call of
:meth:`C2CFuser.forward` runs every layer with equal row counts as one batched GEMM per linear instead of a
Python loop of small GEMMs. Saved weights keep the one-network-per-layer layout (``layers.{i}.key.input.weight``,
``layers.{i}.gate_logit``, ...): a state-dict hook splits each stacked parameter into per-layer tensors and a
load hook stacks them back, so checkpoints and the reference converter see per-layer weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from c2c.cache import ModelSpec
from c2c.fuser.config import FuserConfig
from c2c.fuser.families import PathNetwork, build_path
from c2c.fuser.gates import gumbel_sigmoid
from c2c.fuser.stacked import Stacked, feature_major, is_feature_major

__all__ = ["C2CFuser", "Corrections", "FuserGeometry", "LayerFuser", "LayerRows"]


class LayerRows(NamedTuple):
    """One receiver layer's fusion inputs: sharer rows aligned to the receiver rows they enrich.

    ``sharer_keys [B, Hs, N, Ds_k]``, ``sharer_values [B, Hs, N, Ds_v]``, ``receiver_keys [B, Hr, N, Dr_k]``,
    ``receiver_values [B, Hr, N, Dr_v]`` (the fusion path packs the fused rows of a batch into ``B = 1``).
    """

    sharer_keys: Tensor
    sharer_values: Tensor
    receiver_keys: Tensor
    receiver_values: Tensor


Corrections = tuple[Tensor | None, Tensor | None]
"""``(dK, dV)`` of one layer, fp32, shaped like the receiver rows; None for a path whose hard gate is closed."""


@dataclass
class FuserGeometry:
    """Shapes a fuser was built for: receiver and sharer KV geometry and the resolved layer map."""

    receiver: ModelSpec
    sharer: ModelSpec
    layer_map: dict[int, int]


class C2CFuser(nn.Module):
    """All per-layer fusers between one sharer and the receiver.

    Attributes:
        key / value: the K and V networks of every receiver layer (:mod:`c2c.fuser.families`), stacked in
            :attr:`order`.
        gate_logit: ``[L, 2]`` (key, value) gate logits per layer; None for variants without gates.
        order: receiver layers in stack order (ascending).
        layers: ``{str(receiver layer): LayerFuser}`` views of one layer each (state dict, gates, a forward).
    """

    def __init__(self, config: FuserConfig, geometry: FuserGeometry) -> None:
        super().__init__()
        self.config = config
        self.geometry = geometry
        r, s = geometry.receiver, geometry.sharer
        self.order: tuple[int, ...] = tuple(sorted(geometry.layer_map))
        self._position = {rl: i for i, rl in enumerate(self.order)}
        n = len(self.order)
        self.key = build_path(config, n, s.key_width, r.num_kv_heads, r.head_dim)
        self.value = build_path(config, n, s.value_width, r.num_kv_heads, r.value_dim)
        self.gate_logit: nn.Parameter | None
        if config.has_gate:
            self.gate_logit = nn.Parameter(torch.full((n, 2), float(config.gate_init)))
        else:
            self.register_parameter("gate_logit", None)
        # Non-persistent: inference uses hard gates; training recomputes it from the step.
        self.gate_temperature: Tensor
        self.register_buffer("gate_temperature", torch.tensor(float(config.temperature_start)), persistent=False)
        stacked = {
            f"{m}.{p}" if m else p
            for m, mod in self.named_modules()
            if isinstance(mod, Stacked)
            for p, _ in mod.named_parameters(recurse=False)
        }
        if self.gate_logit is not None:
            stacked.add("gate_logit")
        # Registration order (key.*, value.*, gate_logit): the order of the reference projector's state dict.
        self.per_layer_names: tuple[str, ...] = tuple(name for name, _ in self.named_parameters() if name in stacked)
        self.register_state_dict_post_hook(_split_per_layer)
        self.register_load_state_dict_pre_hook(_stack_per_layer)

    # ------------------------------------------------------------------ layers and gates
    @property
    def layer_map(self) -> Mapping[int, int]:
        return self.geometry.layer_map

    @property
    def layers(self) -> dict[str, LayerFuser]:
        return {str(rl): LayerFuser(self, i, rl) for i, rl in enumerate(self.order)}

    def set_gate_temperature(self, temperature: float) -> None:
        self.gate_temperature.fill_(float(temperature))

    def hard_gates(self) -> dict[int, tuple[bool, bool]]:
        """``{receiver layer: (key gate open, value gate open)}`` under hard (inference) gating, read from the
        device in one transfer."""
        if self.gate_logit is None:  # variants without gates: always open
            return dict.fromkeys(self.order, (True, True))
        states = (self.gate_logit.detach() > 0).tolist()
        return {rl: (bool(k), bool(v)) for rl, (k, v) in zip(self.order, states)}

    def gate_states(self) -> dict[int, tuple[bool, bool]]:
        """Alias of :meth:`hard_gates` (the per-layer readout shown by ``c2c info`` and the reports)."""
        return self.hard_gates()

    def num_open_gates(self) -> int:
        return sum(int(k) + int(v) for k, v in self.hard_gates().values())

    def set_gates(self, open_: bool | None = None, *, logit: float | None = None) -> None:
        """Force every gate open (logit +1) or closed (logit -1), or to ``logit`` (for tests and ablations)."""
        value = logit if logit is not None else (1.0 if open_ else -1.0)
        if self.gate_logit is not None:
            with torch.no_grad():
                self.gate_logit.fill_(value)

    def active_layers(self) -> list[int]:
        """Receiver layers that do any work at inference (at least one open gate)."""
        return [rl for rl, state in self.hard_gates().items() if any(state)]

    # ------------------------------------------------------------------ forward
    def forward(
        self, rows: Mapping[int, LayerRows], gates: Mapping[int, tuple[bool, bool]] | None = None
    ) -> dict[int, Corrections]:
        """Corrections of every receiver layer in ``rows`` (keys: receiver layer indices).

        Layers next to each other in the stack whose rows have the same shape run together, one batched GEMM
        per linear; a path whose hard gate is closed computes nothing.

        Args:
            rows: per receiver layer, its clean receiver rows and the sharer rows aligned to them.
            gates: the hard states from :meth:`hard_gates`, read once per call by the fusion path (None: read
                them now); in training they are ignored (every path runs, gated by Gumbel-sigmoid samples).

        Returns:
            ``{layer: (dK, dV)}``, each fp32 ``[B, Hr, N, Dr]`` or None (closed), to be added to the receiver rows
            (the caller adds in fp32 and rounds once to the cache dtype, as the reference does). For the
            "projection_only" variant they are the replacement rows minus the receiver rows.
        """
        return self.fuse(rows, gates, self.gate_temperature)

    def fuse(
        self, rows: Mapping[int, LayerRows], gates: Mapping[int, tuple[bool, bool]] | None, temperature: float | Tensor
    ) -> dict[int, Corrections]:
        """:meth:`forward` with an explicit Gumbel-sigmoid temperature (training only)."""
        unknown = [rl for rl in rows if rl not in self._position]
        if unknown:
            raise KeyError(f"receiver layers {unknown} have no fuser (this fuser covers layers {list(self.order)})")
        if not self.training and gates is None:
            gates = self.hard_gates()
        out: dict[int, list[Tensor | None]] = {rl: [None, None] for rl in rows}
        for which, path in enumerate((self.key, self.value)):
            members = sorted(
                (self._position[rl], rl) for rl in rows if self.training or gates is None or gates[rl][which]
            )
            for start, run in _runs(members, rows, which):
                deltas = self._run_path(path, which, start, [rows[rl] for rl in run], temperature)
                for rl, delta in zip(run, deltas):
                    out[rl][which] = delta
        return {rl: (pair[0], pair[1]) for rl, pair in out.items()}

    def _run_path(
        self, path: PathNetwork, which: int, start: int, rows: list[LayerRows], temperature: float | Tensor
    ) -> list[Tensor]:
        """K (``which`` 0) or V (1) corrections of consecutive stack positions ``start, start+1, ...``, whose
        rows all have the same shape."""
        n = len(rows)
        layers = slice(start, start + n)
        first = rows[0]
        sharer = first.sharer_keys if which == 0 else first.sharer_values
        receiver = first.receiver_keys if which == 0 else first.receiver_values
        b, hs, t, ds = sharer.shape
        _, hr, _, dr = receiver.shape
        reads_receiver = self.config.reads_receiver
        width = hs * ds + (hr * dr if reads_receiver else 0)
        dtype = next(path.parameters()).dtype
        m = b * t
        put: Callable[[int, slice, Tensor], Tensor]
        if _rows_feature_major(m):
            # x [n, M, in] stored as [n, in, M'] (M' = M rounded up to 16: GEMMs of that width run about 5 %
            # faster; the zero columns are computed and dropped, no column reads another), then every linear
            # of the path runs W @ x^T (see c2c.fuser.stacked).
            x = feature_major((n, -(-m // 16) * 16, width), dtype=dtype, device=sharer.device)
            x.mT[:, :, m:].zero_()
            xt = x.mT[:, :, :m].view(n, width, b, t)

            def put(j: int, cols: slice, src: Tensor) -> Tensor:  # src [B, H, T, D]
                return xt[j, cols].view(src.shape[1], src.shape[3], b, t).copy_(src.permute(1, 3, 0, 2))
        else:
            xr = torch.empty((n, b, t, width), dtype=dtype, device=sharer.device)
            x = xr.view(n, m, width)

            def put(j: int, cols: slice, src: Tensor) -> Tensor:
                return xr[j, ..., cols].view(b, t, src.shape[1], src.shape[3]).copy_(src.transpose(1, 2))

        # Per token the flattened [sharer ; receiver] rows, written by one (casting) copy per part, not a
        # reshape-copy, a cat and a stack.
        for j, lr in enumerate(rows):
            s, r = (lr.sharer_keys, lr.receiver_keys) if which == 0 else (lr.sharer_values, lr.receiver_values)
            put(j, slice(0, hs * ds), s)
            if reads_receiver:
                put(j, slice(hs * ds, width), r)
        noise = self.config.input_noise
        if self.training and noise > 0:
            x = x + noise * x.pow(2).mean(-1, keepdim=True).sqrt() * torch.randn_like(x)
        proj, weight = path(x, layers)  # [n, M', Hr*Dr], [n, M', Hr]
        proj, weight = proj[:, :m], None if weight is None else weight[:, :m]
        delta = _heads(proj, b, t, hr).float()  # [n, B, Hr, T, Dr]
        if self.config.replaces_rows:
            return [
                delta[j] - (lr.receiver_keys if which == 0 else lr.receiver_values).float() for j, lr in enumerate(rows)
            ]
        if weight is not None:
            scale = torch.sigmoid(_heads(weight, b, t, hr)).float()
            # Without autograd the product is written into the projection's own buffer (no new allocation).
            delta = scale * delta if torch.is_grad_enabled() else delta.mul_(scale)
        if self.training and self.gate_logit is not None:
            logit = self.gate_logit[layers, which].view(n, 1, 1, 1, 1)
            delta = gumbel_sigmoid(logit, temperature, (n, b, hr, t, 1)).float() * delta
        # At inference a computed path has an open hard gate (1.0): nothing to multiply.
        return list(delta.unbind(0))


FEATURE_MAJOR_MAX_ROWS = 256
"""Fused rows per call up to which inference runs the paths feature-major (see c2c.fuser.stacked; measured on
2 CPU cores: faster up to 256 rows, slower from about 512). Training keeps row-major, so a cached fuser
trains to the same weights as before; prompt fusion of the reference-size fuser at 63 tokens is about 15 %
faster (fusion stage at Qwen3-0.6B <- Qwen2.5-0.5B shapes, 2 cores: 267-270 ms against 312-314 ms row-major)."""


def _rows_feature_major(rows: int) -> bool:
    return 1 < rows <= FEATURE_MAJOR_MAX_ROWS and not torch.is_grad_enabled()


def _heads(y: Tensor, b: int, t: int, heads: int) -> Tensor:
    """``y [n, B*T, heads * D]`` (either layout) -> ``[n, B, heads, T, D]`` as a view."""
    n = y.shape[0]
    if is_feature_major(y):
        return y.mT.view(n, heads, -1, b, t).permute(0, 3, 1, 4, 2)
    return y.view(n, b, t, heads, -1).transpose(2, 3)


def _runs(members: list[tuple[int, int]], rows: Mapping[int, LayerRows], which: int) -> Iterator[tuple[int, list[int]]]:
    """Split ``(stack position, receiver layer)`` pairs (sorted) into runs of consecutive positions whose rows
    have the same batch size and length (a sliding-window layer may hold fewer rows): ``(start, layers)``."""
    run: list[int] = []
    start = prev = -2
    shape: tuple[int, int] | None = None
    for pos, rl in members:
        s = rows[rl].sharer_keys if which == 0 else rows[rl].sharer_values
        key = (int(s.shape[0]), int(s.shape[2]))
        if run and (pos != prev + 1 or key != shape):
            yield start, run
            run = []
        if not run:
            start, shape = pos, key
        run.append(rl)
        prev = pos
    if run:
        yield start, run


# ---------------------------------------------------------------------- per-layer state-dict layout


def _split_per_layer(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """State-dict hook: ``{prefix}key.input.weight [L, ...]`` -> ``{prefix}layers.{i}.key.input.weight`` per layer
    (views: no copy)."""
    assert isinstance(module, C2CFuser)
    stacked = {name: state_dict.pop(prefix + name) for name in module.per_layer_names if prefix + name in state_dict}
    for i, rl in enumerate(module.order):
        for name, t in stacked.items():
            state_dict[f"{prefix}layers.{rl}.{name}"] = t[i]


def _stack_per_layer(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Load pre-hook: stack ``{prefix}layers.{i}.{name}`` into ``{prefix}{name}``. A missing or misshapen layer
    tensor is reported under its per-layer name (the current value is kept in its slice); tensors of layers
    this fuser does not have stay in ``state_dict`` and are reported as unexpected."""
    assert isinstance(module, C2CFuser)
    for name in module.per_layer_names:
        if prefix + name in state_dict:
            continue
        current = module.get_parameter(name)
        parts = []
        for rl in module.order:
            key = f"{prefix}layers.{rl}.{name}"
            t = state_dict.pop(key, None)
            if t is None:
                missing_keys.append(key)
            elif tuple(t.shape) != tuple(current.shape[1:]):
                error_msgs.append(
                    f"size mismatch for {key}: copying a param with shape {tuple(t.shape)} from checkpoint, the shape "
                    f"in current model is {tuple(current.shape[1:])}."
                )
                t = None
            parts.append(t)
        like = next((t for t in parts if t is not None), None)
        if like is None:
            like = current.detach()
        state_dict[prefix + name] = torch.stack(
            [
                (current.detach()[i] if t is None else t).to(device=like.device, dtype=like.dtype)
                for i, t in enumerate(parts)
            ]
        )


class LayerFuser:
    """One receiver layer of a :class:`C2CFuser`: a view whose tensors are slices of the fuser's stacked ones.

    What the reference converter and per-layer tools need: the layer's state dict (the reference projector's
    layout for family "full"), loading one, its gates, and its corrections alone.
    """

    def __init__(self, fuser: C2CFuser, index: int, receiver_layer: int) -> None:
        self.fuser = fuser
        self.index = index
        self.receiver_layer = receiver_layer

    def __repr__(self) -> str:
        return f"LayerFuser(receiver_layer={self.receiver_layer}, family={self.fuser.config.family!r})"

    @property
    def gate_logit(self) -> Tensor | None:
        """``[2]`` (key, value) gate logits (a view into the fuser's ``gate_logit``); None without gates."""
        g = self.fuser.gate_logit
        return None if g is None else g[self.index]

    def open_gates(self) -> tuple[bool, bool]:
        """Hard (inference) state of the key and value gates (one device read)."""
        g = self.gate_logit
        if g is None:
            return (True, True)
        k, v = (g.detach() > 0).tolist()
        return (bool(k), bool(v))

    def named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        """``(name, [...] view)`` of this layer's slice of every per-layer parameter (shared ones excluded)."""
        for name in self.fuser.per_layer_names:
            yield name, self.fuser.get_parameter(name)[self.index]

    def num_parameters(self) -> int:
        return sum(t.numel() for _, t in self.named_parameters())

    def state_dict(self) -> dict[str, Tensor]:
        """This layer's tensors, copied (saving one layer must not save the whole stack it is a slice of)."""
        return {name: t.detach().clone() for name, t in self.named_parameters()}

    def load_state_dict(self, state: Mapping[str, Tensor], strict: bool = True) -> None:
        """Copy ``state`` (names as :meth:`state_dict`'s) into this layer's slices; unknown or missing names and
        wrong shapes are errors (missing ones only with ``strict``)."""
        own = dict(self.named_parameters())
        problems = []
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and missing:
            problems.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing) + ".")
        if unexpected:
            problems.append("Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected) + ".")
        for k, t in state.items():
            if k in own and tuple(t.shape) != tuple(own[k].shape):
                problems.append(
                    f"size mismatch for {k}: copying a param with shape {tuple(t.shape)} from checkpoint, the shape in "
                    f"current model is {tuple(own[k].shape)}."
                )
        if problems:
            raise RuntimeError(f"Error(s) in loading state_dict for {self!r}:\n\t" + "\n\t".join(problems))
        with torch.no_grad():
            for k, t in state.items():
                own[k].copy_(t)

    def __call__(
        self, rows: LayerRows, temperature: float | Tensor = 1.0, gates: tuple[bool, bool] | None = None
    ) -> Corrections:
        """Corrections of this layer alone (see :meth:`C2CFuser.forward`)."""
        rl = self.receiver_layer
        return self.fuser.fuse({rl: rows}, None if gates is None else {rl: gates}, temperature)[rl]

    forward = __call__
