"""Parameter count and fusion FLOPs of a fuser of any family, without allocating its weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from c2c.fuser.config import FuserConfig
from c2c.fuser.modules import C2CFuser, FuserGeometry
from c2c.fuser.stacked import StackedLinear


@dataclass
class FuserSize:
    """Size of a fuser between one sharer and the receiver.

    Attributes:
        parameters: trainable parameters in total (per-layer ones plus shared ones).
        parameters_per_layer: ``{receiver layer: parameters of that layer alone}`` (its slice of every
            per-layer tensor; the shared ones are counted once, in ``shared_parameters``).
        shared_parameters: parameters used by every layer (family "shared": its trunk); 0 for the others.
        flops_per_token: FLOPs (2 x multiply-adds) of the GEMMs that fuse one token through every layer, K and V,
            all gates open. Norms, activations, sigmoids and the residual add cost a few FLOPs per value and are
            not counted: well under 1 % of the full fuser's FLOPs, a few percent for the smallest fusers.
        family: the config's family.
    """

    parameters: int
    parameters_per_layer: dict[int, int]
    flops_per_token: int
    shared_parameters: int = 0
    family: str = "full"

    @property
    def bytes_bf16(self) -> int:
        return 2 * self.parameters

    @property
    def bytes_fp32(self) -> int:
        return 4 * self.parameters

    def summary(self) -> str:
        """One line: ``family lowrank: 2,004,992 parameters (3.8 MiB bf16), 4.0 MFLOP/token``."""
        return (
            f"family {self.family}: {self.parameters:,} parameters ({self.bytes_bf16 / 2**20:.1f} MiB bf16), "
            f"{self.flops_per_token / 1e6:,.1f} MFLOP/token"
        )


def fuser_size(config: FuserConfig, geometry: FuserGeometry) -> FuserSize:
    """Count parameters on the meta device (no memory) and FLOPs from the linear layers' shapes.

    Every layer's rows go through every linear of its path once: a per-layer ``StackedLinear`` and a shared
    ``nn.Linear`` alike cost ``2 * in * out`` FLOPs per token and layer.
    """
    with torch.device("meta"):
        fuser = C2CFuser(config, geometry)
    n = len(fuser.order)
    per_layer_names = set(fuser.per_layer_names)
    per_layer = 0
    shared = 0
    for name, p in fuser.named_parameters():
        if name in per_layer_names:
            per_layer += p.numel() // n
        else:
            shared += p.numel()
    per_token_per_layer = 0
    for m in fuser.modules():
        if isinstance(m, StackedLinear):
            per_token_per_layer += 2 * m.in_features * m.out_features
        elif isinstance(m, nn.Linear):
            per_token_per_layer += 2 * m.weight.numel()
    return FuserSize(
        parameters=per_layer * n + shared,
        parameters_per_layer=dict.fromkeys(fuser.order, per_layer),
        flops_per_token=per_token_per_layer * n,
        shared_parameters=shared,
        family=config.family,
    )
