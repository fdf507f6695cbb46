"""The fuser network (method.md section 2).

For one receiver layer, separately for keys and values, per token (no mixing across tokens)::

    z   = Linear([sharer ; receiver])                  # [B, T, hidden]
    z   = FFN(z)                                       # shared trunk
    P   = Linear(FFN^k(z)) -> [B, Hr, T, Dr]           # projection head
    w   = Linear(FFN(z))   -> [B, Hr, T, 1]            # per-token, per-KV-head weight
    K'  = K + gate * sigmoid(w) * P                    # residual add

with ``FFN(x) = x + W2 act(W1 RMSNorm(x))`` (bias-free inner linears, as in the reference).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from c2c.cache import ModelSpec
from c2c.fuser.config import FuserConfig
from c2c.fuser.gates import gumbel_sigmoid, hard_gate

_ACT = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU}


class FFNBlock(nn.Module):
    """Pre-norm residual MLP block: ``x + Dropout(W2 act(W1 RMSNorm(x)))``."""

    def __init__(self, size: int, inner: int, *, dropout: float, activation: str, eps: float) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(size, eps=eps)
        self.w1 = nn.Linear(size, inner, bias=False)
        self.w2 = nn.Linear(inner, size, bias=False)
        self.act = _ACT[activation]()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop(self.w2(self.act(self.w1(self.norm(x)))))


class KVPath(nn.Module):
    """Fusion of one of K or V for one receiver layer.

    Args:
        sharer_width: ``Hs * Ds``. receiver_heads / receiver_head_dim: ``Hr``, ``Dr``.
    """

    def __init__(self, config: FuserConfig, sharer_width: int, receiver_heads: int, receiver_head_dim: int) -> None:
        super().__init__()
        h = config.hidden_size
        blk = dict(dropout=config.dropout, activation=config.activation, eps=config.rms_norm_eps)
        self.receiver_heads = receiver_heads
        self.receiver_head_dim = receiver_head_dim
        out_width = receiver_heads * receiver_head_dim
        in_width = sharer_width + (out_width if config.reads_receiver else 0)
        self.input = nn.Linear(in_width, h, bias=True)
        self.trunk = FFNBlock(h, config.intermediate_size, **blk)
        self.proj_blocks = nn.ModuleList(
            FFNBlock(h, config.intermediate_size, **blk) for _ in range(config.num_projection_blocks)
        )
        self.proj_out = nn.Linear(h, out_width, bias=True)
        if config.has_weight:
            self.weight_block = FFNBlock(h, config.weight_intermediate_size or h, **blk)
            self.weight_out = nn.Linear(h, receiver_heads, bias=True)
        else:
            self.weight_block = None
            self.weight_out = None

    def forward(self, sharer: Tensor, receiver: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``sharer [B, Hs, T, Ds]``, ``receiver [B, Hr, T, Dr]`` -> projection ``[B, Hr, T, Dr]`` and
        sigmoid weight ``[B, Hr, T, 1]`` (None without dynamic weights)."""
        b, _, t, _ = sharer.shape
        parts = [sharer.transpose(1, 2).reshape(b, t, -1)]
        if receiver is not None:
            parts.append(receiver.transpose(1, 2).reshape(b, t, -1))
        z = self.trunk(self.input(torch.cat(parts, dim=-1)))
        p = z
        for blk in self.proj_blocks:
            p = blk(p)
        proj = self.proj_out(p).view(b, t, self.receiver_heads, self.receiver_head_dim).transpose(1, 2)
        if self.weight_out is None:
            return proj, None
        w = torch.sigmoid(self.weight_out(self.weight_block(z)))  # [B, T, Hr]
        return proj, w.transpose(1, 2).unsqueeze(-1)


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


class LayerFuser(nn.Module):
    """K and V fusion plus the layer's two gates, for one receiver layer."""

    def __init__(
        self,
        config: FuserConfig,
        sharer: ModelSpec,
        receiver: ModelSpec,
    ) -> None:
        super().__init__()
        self.config = config
        self.key = KVPath(config, sharer.key_width, receiver.num_kv_heads, receiver.head_dim)
        self.value = KVPath(config, sharer.value_width, receiver.num_kv_heads, receiver.value_dim)
        if config.has_gate:
            # [2] = (key gate logit, value gate logit)
            self.gate_logit = nn.Parameter(torch.full((2,), float(config.gate_init)))
        else:
            self.register_parameter("gate_logit", None)

    def open_gates(self) -> tuple[bool, bool]:
        """Hard (inference) state of the key and value gates (one host sync: not for hot loops, where
        :meth:`C2CFuser.hard_gates` reads every layer at once)."""
        if self.gate_logit is None:
            return (True, True)
        k, v = (self.gate_logit.detach() > 0).tolist()
        return (bool(k), bool(v))

    def _gate(self, which: int, shape: tuple[int, ...], temperature: float | Tensor) -> Tensor | None:
        if self.gate_logit is None:
            return None
        logit = self.gate_logit[which]
        if self.training:
            return gumbel_sigmoid(logit, temperature, shape)
        return hard_gate(logit)

    def forward(
        self, rows: LayerRows, temperature: float | Tensor = 1.0, gates: tuple[bool, bool] | None = None
    ) -> Corrections:
        """Corrections for one layer.

        Args:
            rows: clean receiver rows and the sharer rows aligned to them (see :class:`LayerRows`).
            temperature: Gumbel-sigmoid temperature (training only).
            gates: hard gate states read beforehand (inference only: a closed path computes nothing); None
                reads this layer's own (one device read).

        Returns:
            ``(dK, dV)`` in fp32, each ``[B, Hr, N, Dr]``, to be added to the receiver rows (the caller
            adds in fp32 and rounds once to the cache dtype, as the reference does). For the
            "projection_only" variant they are the replacement rows minus the receiver rows.
        """
        out: list[Tensor | None] = []
        k_open, v_open = (True, True) if self.training else (gates if gates is not None else self.open_gates())
        for which, (path, s, r, is_open) in enumerate(
            (
                (self.key, rows.sharer_keys, rows.receiver_keys, k_open),
                (self.value, rows.sharer_values, rows.receiver_values, v_open),
            )
        ):
            if not is_open:
                out.append(None)
                continue
            dtype = path.input.weight.dtype
            proj, weight = path(s.to(dtype), r.to(dtype) if self.config.reads_receiver else None)
            proj = proj.float()
            if not self.config.reads_receiver:
                out.append(proj - r.float())
                continue
            delta = proj if weight is None else weight.float() * proj
            gate = self._gate(which, (proj.shape[0], proj.shape[1], proj.shape[2], 1), temperature)
            out.append(delta if gate is None else gate.float() * delta)
        return out[0], out[1]


@dataclass
class FuserGeometry:
    """Shapes a fuser was built for: receiver and sharer KV geometry and the resolved layer map."""

    receiver: ModelSpec
    sharer: ModelSpec
    layer_map: dict[int, int]


class C2CFuser(nn.Module):
    """All per-layer fusers between one sharer and the receiver (``layers[str(receiver layer)]``)."""

    def __init__(self, config: FuserConfig, geometry: FuserGeometry) -> None:
        super().__init__()
        self.config = config
        self.geometry = geometry
        r, s = geometry.receiver, geometry.sharer
        self.layers = nn.ModuleDict({str(rl): LayerFuser(config, s, r) for rl in geometry.layer_map})
        # Non-persistent: inference uses hard gates; training recomputes it from the step.
        self.register_buffer("gate_temperature", torch.tensor(float(config.temperature_start)), persistent=False)

    @property
    def layer_map(self) -> Mapping[int, int]:
        return self.geometry.layer_map

    def set_gate_temperature(self, temperature: float) -> None:
        self.gate_temperature.fill_(float(temperature))

    def hard_gates(self) -> dict[int, tuple[bool, bool]]:
        """``{receiver layer: (key gate open, value gate open)}`` under hard (inference) gating, read from the
        device in one transfer."""
        keys = [int(k) for k in self.layers]
        logits = [lay.gate_logit for lay in self.layers.values() if isinstance(lay, LayerFuser) and lay.gate_logit is not None]
        if len(logits) != len(keys):  # variants without gates: always open
            return {k: (True, True) for k in keys}
        states = (torch.stack([g.detach() for g in logits]) > 0).tolist()
        return {k: (bool(s[0]), bool(s[1])) for k, s in zip(keys, states)}

    def gate_states(self) -> dict[int, tuple[bool, bool]]:
        """Alias of :meth:`hard_gates` (the per-layer readout shown by ``c2c info`` and the reports)."""
        return self.hard_gates()

    def num_open_gates(self) -> int:
        return sum(int(k) + int(v) for k, v in self.hard_gates().values())

    def forward(
        self, rows: Mapping[int, LayerRows], gates: Mapping[int, tuple[bool, bool]] | None = None
    ) -> dict[int, Corrections]:
        """Corrections of every receiver layer in ``rows`` (keys: receiver layer indices).

        ``gates`` are the hard states from :meth:`hard_gates`, read once per call by the fusion path; in
        training they are ignored (every path runs, gated by Gumbel-sigmoid samples).
        """
        temperature = self.gate_temperature
        out: dict[int, Corrections] = {}
        for rl, layer_rows in rows.items():
            layer = self.layers[str(rl)]
            out[rl] = layer(layer_rows, temperature, None if gates is None else gates[rl])
        return out

    def set_gates(self, open_: bool | None = None, *, logit: float | None = None) -> None:
        """Force every gate open (logit +1) or closed (logit -1), or to ``logit`` (for tests and ablations)."""
        value = logit if logit is not None else (1.0 if open_ else -1.0)
        with torch.no_grad():
            for lay in self.layers.values():
                if lay.gate_logit is not None:
                    lay.gate_logit.fill_(value)

    def active_layers(self) -> list[int]:
        """Receiver layers that do any work at inference (at least one open gate)."""
        return [rl for rl, state in self.hard_gates().items() if any(state)]
