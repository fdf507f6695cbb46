"""The fuser: per-receiver-layer networks that add gated sharer corrections to the receiver cache."""

from c2c.fuser.config import VARIANTS, FuserConfig
from c2c.fuser.gates import gate_temperature, gumbel_sigmoid, hard_gate
from c2c.fuser.modules import C2CFuser, Corrections, FFNBlock, FuserGeometry, KVPath, LayerFuser, LayerRows
from c2c.fuser.size import FuserSize, fuser_size

__all__ = [
    "VARIANTS",
    "C2CFuser",
    "Corrections",
    "FFNBlock",
    "FuserConfig",
    "FuserGeometry",
    "FuserSize",
    "KVPath",
    "LayerFuser",
    "LayerRows",
    "fuser_size",
    "gate_temperature",
    "gumbel_sigmoid",
    "hard_gate",
]
