"""The fuser: per-receiver-layer networks that add gated sharer corrections to the receiver cache."""

from c2c.fuser.config import FAMILIES, VARIANTS, FuserConfig
from c2c.fuser.families import FullPath, LinearPath, LowRankPath, PathNetwork, SharedPath
from c2c.fuser.gates import gate_temperature, gumbel_sigmoid, hard_gate
from c2c.fuser.modules import C2CFuser, Corrections, FuserGeometry, LayerFuser, LayerRows
from c2c.fuser.size import FuserSize, fuser_size
from c2c.fuser.stacked import FFNBlock, StackedFFN, StackedLinear, StackedRMSNorm

__all__ = [
    "FAMILIES",
    "VARIANTS",
    "C2CFuser",
    "Corrections",
    "FFNBlock",
    "FullPath",
    "FuserConfig",
    "FuserGeometry",
    "FuserSize",
    "LayerFuser",
    "LayerRows",
    "LinearPath",
    "LowRankPath",
    "PathNetwork",
    "SharedPath",
    "StackedFFN",
    "StackedLinear",
    "StackedRMSNorm",
    "fuser_size",
    "gate_temperature",
    "gumbel_sigmoid",
    "hard_gate",
]
