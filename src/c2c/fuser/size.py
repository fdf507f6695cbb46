"""Parameter count and fusion FLOPs of a fuser, without allocating its weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from c2c.fuser.config import FuserConfig
from c2c.fuser.modules import C2CFuser, FuserGeometry


@dataclass
class FuserSize:
    """Size of a fuser between one sharer and the receiver.

    Attributes:
        parameters: trainable parameters in total.
        parameters_per_layer: ``{receiver layer: parameters}``.
        flops_per_token: multiply-adds x 2 of one fused token through every layer fuser (K and V).
        bytes_bf16 / bytes_fp32: weight storage at those precisions.
    """

    parameters: int
    parameters_per_layer: dict[int, int]
    flops_per_token: int

    @property
    def bytes_bf16(self) -> int:
        return 2 * self.parameters

    @property
    def bytes_fp32(self) -> int:
        return 4 * self.parameters


def fuser_size(config: FuserConfig, geometry: FuserGeometry) -> FuserSize:
    """Count parameters on the meta device (no memory) and FLOPs from the linear layers' shapes."""
    with torch.device("meta"):
        fuser = C2CFuser(config, geometry)
    per_layer = {int(k): sum(p.numel() for p in lay.parameters()) for k, lay in fuser.layers.items()}
    # Every Linear weight of shape [out, in] costs 2*out*in FLOPs per token; norms/activations are noise.
    flops = sum(2 * m.weight.numel() for m in fuser.modules() if isinstance(m, nn.Linear))
    return FuserSize(parameters=sum(per_layer.values()), parameters_per_layer=per_layer, flops_per_token=flops)
