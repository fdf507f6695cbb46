"""c2c: Cache-to-Cache communication between LLMs (Fu et al., arXiv 2510.03215)."""

from c2c.batch import C2CBatch, collate
from c2c.cache import ModelSpec
from c2c.config import C2CConfig
from c2c.fuser import C2CFuser, FuserConfig, FuserGeometry, fuser_size, gate_temperature
from c2c.generation import GenerationOptions, GenerationResult
from c2c.model import C2CModel, C2COutput
from c2c.version import __version__

__all__ = [
    "C2CBatch",
    "C2CConfig",
    "C2CFuser",
    "C2CModel",
    "C2COutput",
    "FuserConfig",
    "FuserGeometry",
    "GenerationOptions",
    "GenerationResult",
    "ModelSpec",
    "__version__",
    "collate",
    "fuser_size",
    "gate_temperature",
]
