"""The fuser families: networks that compute, for the K (or V) rows of every receiver layer, the projection
``P`` and the weight logits ``w`` (see :class:`c2c.fuser.FuserConfig`).

Each network runs on ``x [n, M, in]``: per token, the flattened ``[sharer ; receiver]`` rows (sharer rows
only for the "projection_only" variant) of ``n`` consecutive layers of the stack, ``layers`` being their
slice. It returns ``P [n, M, Hr * Dr]`` and ``w [n, M, Hr]`` (logits; None without dynamic weights).

Per layer and path (``in`` = input width, ``out = Hr * Dr``, ``Hr`` = receiver KV heads):

- full: ``Linear(in, h)``, FFN trunk, ``num_projection_blocks`` FFN blocks + ``Linear(h, out)``, FFN +
  ``Linear(h, Hr)``: the reference projector (about ``in*h + 6*h*h + h*out`` weights at the reference sizes).
- lowrank: ``Linear(in, r)``, FFN block at width ``r`` (the nonlinearity: without it the correction would be
  linear in the rows), ``Linear(r, out)``, ``Linear(r, Hr)``: about ``r * (in + out + 2r)`` weights.
- shared: per layer only an input norm, a layer embedding, a head norm and the heads ``Linear(h, out)``,
  ``Linear(h, Hr)``; ``Linear(in, h)`` and the FFN trunk are shared by all layers (one GEMM for all of them).
- linear: ``Linear(Hs * Ds, out)`` on the sharer rows and a weight head ``Linear(in, Hr)`` on the normalised
  ``[sharer ; receiver]``: the smallest design that still reads both caches.
"""

from __future__ import annotations

from torch import Tensor, nn

from c2c.fuser.config import FuserConfig
from c2c.fuser.stacked import FFNBlock, StackedFFN, StackedLinear, StackedRMSNorm, StackedVector

__all__ = ["FullPath", "LinearPath", "LowRankPath", "PathNetwork", "SharedPath", "build_path"]


class PathNetwork(nn.Module):
    """The K or V network of every receiver layer of one fuser (one family)."""

    def forward(self, x: Tensor, layers: slice) -> tuple[Tensor, Tensor | None]:  # pragma: no cover - interface
        raise NotImplementedError


class FullPath(PathNetwork):
    """The paper's projector (reference ``C2CProjector``), one per layer; parameter names as the reference
    converter maps them (``input``, ``trunk``, ``proj_blocks.i``, ``proj_out``, ``weight_block``, ``weight_out``)."""

    def __init__(self, config: FuserConfig, n: int, in_width: int, heads: int, head_dim: int) -> None:
        super().__init__()
        h = config.hidden_size
        self.input = StackedLinear(n, in_width, h)
        self.trunk = _ffn(config, n, h, config.intermediate_size)
        self.proj_blocks = nn.ModuleList(
            _ffn(config, n, h, config.intermediate_size) for _ in range(config.num_projection_blocks)
        )
        self.proj_out = StackedLinear(n, h, heads * head_dim)
        self.weight_block = _ffn(config, n, h, config.weight_intermediate_size or h) if config.has_weight else None
        self.weight_out = StackedLinear(n, h, heads) if config.has_weight else None

    def forward(self, x: Tensor, layers: slice) -> tuple[Tensor, Tensor | None]:
        z = self.trunk(self.input(x, layers), layers)
        p = z
        for blk in self.proj_blocks:
            p = blk(p, layers)
        proj = self.proj_out(p, layers)
        if self.weight_out is None or self.weight_block is None:
            return proj, None
        return proj, self.weight_out(self.weight_block(z, layers), layers)


class LowRankPath(PathNetwork):
    """``[sharer ; receiver] -> rank -> receiver``, with one residual FFN block at width ``rank`` in between."""

    def __init__(self, config: FuserConfig, n: int, in_width: int, heads: int, head_dim: int) -> None:
        super().__init__()
        r = config.resolved_rank
        self.input = StackedLinear(n, in_width, r)
        self.trunk = _ffn(config, n, r, r)
        self.proj_out = StackedLinear(n, r, heads * head_dim)
        self.weight_out = StackedLinear(n, r, heads) if config.has_weight else None

    def forward(self, x: Tensor, layers: slice) -> tuple[Tensor, Tensor | None]:
        z = self.trunk(self.input(x, layers), layers)
        return self.proj_out(z, layers), None if self.weight_out is None else self.weight_out(z, layers)


class SharedPath(PathNetwork):
    """One trunk for every layer. Per layer: an input RMSNorm (K/V scales differ a lot between layers), a
    layer embedding added to the projected input (so the shared trunk knows which layer it serves), a head
    RMSNorm and linear heads."""

    def __init__(self, config: FuserConfig, n: int, in_width: int, heads: int, head_dim: int) -> None:
        super().__init__()
        h = config.resolved_shared_hidden_size
        eps = config.rms_norm_eps
        self.input_norm = StackedRMSNorm(n, in_width, eps)
        self.input = nn.Linear(in_width, h)
        # Same scale as the projected normalised input at init (uniform +-1/sqrt(in) weights: std 1/sqrt(3)).
        self.layer_embedding = StackedVector(n, h, std=3**-0.5)
        self.trunk = FFNBlock(h, h, dropout=config.dropout, activation=config.activation, eps=eps)
        self.head_norm = StackedRMSNorm(n, h, eps)
        self.proj_out = StackedLinear(n, h, heads * head_dim)
        self.weight_out = StackedLinear(n, h, heads) if config.has_weight else None

    def forward(self, x: Tensor, layers: slice) -> tuple[Tensor, Tensor | None]:
        z = self.trunk(self.input(self.input_norm(x, layers)) + self.layer_embedding(layers))
        z = self.head_norm(z, layers)
        return self.proj_out(z, layers), None if self.weight_out is None else self.weight_out(z, layers)


class LinearPath(PathNetwork):
    """A linear map from the sharer rows to the receiver rows, and a linear weight head on the normalised
    ``[sharer ; receiver]`` (the weight decides, per token and head, how much of the sharer to take)."""

    def __init__(
        self, config: FuserConfig, n: int, in_width: int, heads: int, head_dim: int, sharer_width: int
    ) -> None:
        super().__init__()
        self.sharer_width = sharer_width
        self.proj = StackedLinear(n, sharer_width, heads * head_dim)
        self.weight_norm = StackedRMSNorm(n, in_width, config.rms_norm_eps) if config.has_weight else None
        self.weight_out = StackedLinear(n, in_width, heads) if config.has_weight else None

    def forward(self, x: Tensor, layers: slice) -> tuple[Tensor, Tensor | None]:
        proj = self.proj(x[..., : self.sharer_width], layers)
        if self.weight_out is None or self.weight_norm is None:
            return proj, None
        return proj, self.weight_out(self.weight_norm(x, layers), layers)


def _ffn(config: FuserConfig, n: int, size: int, inner: int) -> StackedFFN:
    return StackedFFN(n, size, inner, dropout=config.dropout, activation=config.activation, eps=config.rms_norm_eps)


def build_path(config: FuserConfig, n: int, sharer_width: int, heads: int, head_dim: int) -> PathNetwork:
    """The K or V network of ``config.family`` for ``n`` layers (``sharer_width = Hs * Ds``)."""
    in_width = sharer_width + (heads * head_dim if config.reads_receiver else 0)
    if config.family == "full":
        return FullPath(config, n, in_width, heads, head_dim)
    if config.family == "lowrank":
        return LowRankPath(config, n, in_width, heads, head_dim)
    if config.family == "shared":
        return SharedPath(config, n, in_width, heads, head_dim)
    if config.family == "linear":
        return LinearPath(config, n, in_width, heads, head_dim, sharer_width)
    raise ValueError(f"unknown fuser family {config.family!r}")
