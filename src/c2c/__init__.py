"""c2c: Cache-to-Cache communication between LLMs (Fu et al., arXiv 2510.03215)."""

__version__ = "0.1.0"

from c2c.batch import C2CBatch, collate  # noqa: E402
from c2c.cache import ModelSpec  # noqa: E402
from c2c.fuser import C2CFuser, FuserConfig, FuserGeometry, fuser_size, gate_temperature  # noqa: E402
from c2c.generation import GenerationResult  # noqa: E402
from c2c.model import C2CConfig, C2CModel, C2COutput  # noqa: E402

__all__ = [
    "C2CBatch",
    "C2CConfig",
    "C2CFuser",
    "C2CModel",
    "C2COutput",
    "FuserConfig",
    "FuserGeometry",
    "GenerationResult",
    "ModelSpec",
    "__version__",
    "collate",
    "fuser_size",
    "gate_temperature",
]
