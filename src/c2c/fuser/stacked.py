"""Layers that hold one weight per receiver layer, stacked along a leading layer dimension.

A fuser applies the same small network to every receiver layer, each with its own weights. Run as a Python
loop, that is dozens of small GEMMs per call; stacked, the layers of a call run as one batched GEMM
(``baddbmm``) per linear. A stacked module is called on ``x [n, M, in]``, the rows of ``n`` consecutive layers
of the stack, and ``layers``, the slice of the stack they are (a view: no weight is copied).

Layout follows the input. Rows may arrive *feature-major* (``x [n, M, in]`` a view of a contiguous
``[n, in, M]`` buffer, see :func:`feature_major`): then each linear computes ``W @ x^T`` and returns a
feature-major view again, so a chain of linears never copies. With few rows the weights are then the
large operand of the GEMM, which a CPU runs faster: 28 layers' 1024 x 1024 weights on 2 cores, 1.5x at 16
rows, 1.14x at 63, even at 256 (row-major wins from about 512 rows, a training batch). Prompt fusion runs
feature-major (``c2c.fuser.modules.FEATURE_MAJOR_MAX_ROWS``); results agree with row-major to float rounding.

Each stacked parameter ``[L, ...]`` is saved as ``L`` per-layer tensors (see ``C2CFuser``'s state-dict
mapping), so checkpoints keep the one-module-per-layer layout of the reference implementation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "FFNBlock",
    "Stacked",
    "StackedFFN",
    "StackedLinear",
    "StackedRMSNorm",
    "StackedVector",
    "feature_major",
    "is_feature_major",
]

ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU}


def feature_major(shape: tuple[int, int, int], *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised ``[n, M, in]`` tensor stored feature-major (a view of a contiguous ``[n, in, M]``)."""
    n, m, width = shape
    return torch.empty((n, width, m), dtype=dtype, device=device).mT


def is_feature_major(x: Tensor) -> bool:
    """Whether ``x [..., M, in]`` (more than one row) is stored feature-major: rows adjacent in memory, so that
    ``x.mT`` is a GEMM operand without a copy (a slice of the features of such a tensor is one too)."""
    return x.dim() >= 2 and x.shape[-2] > 1 and x.stride(-2) == 1 and x.stride(-1) >= x.shape[-2]


class Stacked(nn.Module):
    """Marker: every parameter held directly by this module has one slice per receiver layer (dim 0)."""

    num_layers: int


class StackedLinear(Stacked):
    """``L`` independent ``nn.Linear(in_features, out_features)``: ``weight [L, out, in]``, ``bias [L, out]``.

    Initialised as ``nn.Linear`` is, layer by layer (uniform in ``+-1/sqrt(in_features)``).
    """

    def __init__(self, num_layers: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.num_layers, self.in_features, self.out_features = num_layers, in_features, out_features
        self.weight = nn.Parameter(torch.empty(num_layers, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_layers, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, layers: slice) -> Tensor:
        """``x [n, M, in]`` -> ``[n, M, out]`` with the weights of ``layers`` (``n`` of them), in ``x``'s layout."""
        if is_feature_major(x):
            w = self.weight[layers]
            if self.bias is None:
                return torch.bmm(w, x.mT).mT
            return torch.baddbmm(self.bias[layers].unsqueeze(2), w, x.mT).mT
        w = self.weight[layers].transpose(1, 2)
        if self.bias is None:
            return torch.bmm(x, w)
        return torch.baddbmm(self.bias[layers].unsqueeze(1), x, w)

    def extra_repr(self) -> str:
        return f"layers={self.num_layers}, in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class StackedRMSNorm(Stacked):
    """``L`` independent ``nn.RMSNorm(size)``: ``weight [L, size]``."""

    def __init__(self, num_layers: int, size: int, eps: float) -> None:
        super().__init__()
        self.num_layers, self.size, self.eps = num_layers, size, eps
        self.weight = nn.Parameter(torch.ones(num_layers, size))

    def forward(self, x: Tensor, layers: slice) -> Tensor:
        """``x [n, M, size]`` normalised over its last dim, scaled by each layer's weight (in ``x``'s layout)."""
        if is_feature_major(x):
            xt = x.mT  # [n, size, M]: F.rms_norm would return row-major rows
            acc = xt.float() if xt.dtype in (torch.float16, torch.bfloat16) else xt
            normed = (acc * torch.rsqrt(acc.pow(2).mean(-2, keepdim=True) + self.eps)).to(x.dtype)
            return (normed * self.weight[layers].unsqueeze(2)).mT
        return F.rms_norm(x, (self.size,), eps=self.eps) * self.weight[layers].unsqueeze(1)

    def extra_repr(self) -> str:
        return f"layers={self.num_layers}, size={self.size}, eps={self.eps}"


class StackedVector(Stacked):
    """One learned vector per layer (``weight [L, size]``), e.g. a layer embedding, normal(0, ``std``) at init."""

    def __init__(self, num_layers: int, size: int, std: float = 0.02) -> None:
        super().__init__()
        self.num_layers, self.size = num_layers, size
        self.weight = nn.Parameter(torch.empty(num_layers, size))
        nn.init.normal_(self.weight, std=std)

    def forward(self, layers: slice) -> Tensor:
        """``[n, 1, size]``: the vectors of ``layers``, ready to broadcast over rows."""
        return self.weight[layers].unsqueeze(1)


class StackedFFN(nn.Module):
    """``L`` pre-norm residual MLP blocks ``x + Dropout(W2 act(W1 RMSNorm(x)))`` (bias-free inner linears, as in
    the reference); per layer the same parameters, names and function as :class:`FFNBlock`."""

    def __init__(self, num_layers: int, size: int, inner: int, *, dropout: float, activation: str, eps: float) -> None:
        super().__init__()
        self.norm = StackedRMSNorm(num_layers, size, eps)
        self.w1 = StackedLinear(num_layers, size, inner, bias=False)
        self.w2 = StackedLinear(num_layers, inner, size, bias=False)
        self.act = ACTIVATIONS[activation]()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor, layers: slice) -> Tensor:
        return x + self.drop(self.w2(self.act(self.w1(self.norm(x, layers), layers)), layers))


class FFNBlock(nn.Module):
    """Pre-norm residual MLP block ``x + Dropout(W2 act(W1 RMSNorm(x)))`` with one set of weights (a block
    shared by every layer: it runs on ``[n, M, size]`` as one GEMM over all ``n * M`` rows)."""

    def __init__(self, size: int, inner: int, *, dropout: float, activation: str, eps: float) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(size, eps=eps)
        self.w1 = nn.Linear(size, inner, bias=False)
        self.w2 = nn.Linear(inner, size, bias=False)
        self.act = ACTIVATIONS[activation]()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop(self.w2(self.act(self.w1(self.norm(x)))))
