"""Training a fuser: chat data -> aligned examples -> accelerate trainer with crash-safe checkpoints.

```python
from c2c.train import TrainConfig, train
result = train(c2c_model, "chats.jsonl", TrainConfig(output_dir="runs/a", max_steps=100))
result.model.generate("question")       # the trained C2CModel; result.final_dir holds the saved fuser
```
"""

from c2c.train.batching import TrainCollator
from c2c.train.checkpoint import CheckpointManager, TrainerState
from c2c.train.config import TrainConfig
from c2c.train.data import DataStats, prepare_dataset
from c2c.train.errors import CheckpointError, ConfigError, DataError, UnsupportedModelError
from c2c.train.loop import StepInfo
from c2c.train.render import ExampleRenderer
from c2c.train.trainer import TrainResult, train

__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "ConfigError",
    "DataError",
    "DataStats",
    "ExampleRenderer",
    "StepInfo",
    "TrainCollator",
    "TrainConfig",
    "TrainResult",
    "TrainerState",
    "UnsupportedModelError",
    "prepare_dataset",
    "train",
]
