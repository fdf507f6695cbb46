"""TrainConfig: every knob of a C2C fuser training run, loadable from YAML or JSON.

Defaults follow the reference recipe (method.md section 5): AdamW lr 1e-4, weight decay 0.01 (none on gates,
norms and biases), linear schedule with 10 % warmup, gradient clipping at 1.0, gate temperature annealed
from 1.0 to 0.001, seed 42, max 2048 receiver tokens per example.
"""

from __future__ import annotations

import difflib
import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["TrainConfig", "ConfigError", "RESUME_MUTABLE_FIELDS"]


class ConfigError(ValueError):
    """A training configuration value or file is invalid."""


_LAYOUTS = ("auto", "messages", "conversations", "prompt_response")
_PRECISIONS = ("auto", "no", "bf16", "fp16")
_DTYPES = ("auto", "float32", "bfloat16", "float16")
_ON_MISMATCH = ("warn", "error")

# Fields that may change between a run and its resumption without changing what is computed.
RESUME_MUTABLE_FIELDS = frozenset(
    {
        "output_dir",
        "resume",
        "overwrite_output_dir",
        "save_steps",
        "save_total_limit",
        "eval_steps",
        "logging_steps",
        "log_with",
        "project_name",
        "num_workers",
        "preprocess_workers",
        "progress",
        "shard_llms",  # same numbers sharded or not (gathered weights are the same weights)
    }
)


@dataclass
class TrainConfig:
    """Configuration of one fuser training run.

    ``batch_size`` is per process; the global batch of one optimizer step is
    ``batch_size * gradient_accumulation_steps * world_size`` conversations.
    """

    # --- the pair (ignored when models are passed to ``train`` directly) ---
    receiver: str | None = None
    sharer: str | None = None
    model_dtype: str = "auto"  # dtype of the frozen LLMs; auto = bf16 on GPU, fp32 on CPU
    fuser: dict[str, Any] = field(default_factory=dict)  # FuserConfig overrides for a fresh fuser
    c2c: dict[str, Any] = field(default_factory=dict)  # C2CConfig overrides (alignment_shift, token_alignment, ...)
    init_fuser: str | None = None  # start from a saved fuser (save_pretrained folder) instead of a fresh one

    # --- data ---
    data: list[str] = field(default_factory=list)  # JSONL / JSON / parquet files
    eval_data: list[str] = field(default_factory=list)
    eval_fraction: float = 0.0  # held out from ``data`` when no ``eval_data`` is given
    eval_size: int | None = None  # absolute size of the held-out split (overrides eval_fraction)
    layout: str = "auto"  # auto | messages | conversations | prompt_response
    messages_field: str = "messages"
    conversations_field: str = "conversations"
    prompt_field: str = "prompt"
    response_field: str = "response"
    use_chat_template: bool | None = None  # None = when the receiver tokenizer has one
    enable_thinking: bool = False
    # When the rendered instruction is not a prefix of the rendered conversation: "warn" trains on
    # instruction + response content + eos and reports how many rows needed it; "error" stops.
    on_template_mismatch: str = "warn"
    max_length: int = 2048  # receiver tokens (instruction + response); longer examples are dropped
    max_examples: int | None = None  # use the first N rows of ``data`` (reference: 500k)
    preprocess_workers: int = 1

    # --- optimisation ---
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0  # <= 0 disables clipping
    batch_size: int = 8  # per process
    gradient_accumulation_steps: int = 1
    num_epochs: int = 1
    max_steps: int | None = None  # optimizer steps; overrides num_epochs
    # Gumbel-sigmoid temperature, annealed exponentially over all optimizer steps; None = the fuser's
    # own FuserConfig.temperature_start / temperature_end (1.0 -> 0.001 by default).
    gate_temperature_start: float | None = None
    gate_temperature_end: float | None = None
    seed: int = 42
    mixed_precision: str = "auto"  # auto = bf16 autocast on GPU, none on CPU
    # FSDP2 over the frozen LLMs' decoder layers across processes (LLMs that do not fit one device);
    # the fuser stays data-parallel. No effect with one process.
    shard_llms: bool = False

    # --- bookkeeping ---
    output_dir: str = "runs/c2c"
    save_steps: int = 500  # 0 = only the final save
    save_total_limit: int = 2  # keep the last K checkpoints (0 = keep all)
    eval_steps: int | None = None  # None = evaluate at the end only
    logging_steps: int = 10
    log_with: list[str] = field(default_factory=list)  # accelerate trackers (tensorboard, wandb, ...)
    project_name: str = "c2c"
    resume: bool = False
    overwrite_output_dir: bool = False
    num_workers: int = 0
    progress: bool = True

    # ------------------------------------------------------------------ construction

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Build a config from a mapping, coercing strings/numbers to the declared types.

        Unknown keys are an error (with the nearest valid name), so a typo never silently falls back
        to a default.
        """
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a mapping of option names to values, got {type(values).__name__}")
        hints = typing.get_type_hints(cls)
        names = cls.field_names()
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"{source}: unknown option '{key}'.{hint} Valid options: {', '.join(names)}")
            kwargs[name] = _coerce(value, hints[name], f"{source}: option '{name}'")
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Load a YAML (.yaml/.yml) or JSON (.json) config file."""
        return cls.from_dict(load_config_file(path), source=str(path))

    @classmethod
    def from_sources(cls, file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """File values, then ``overrides`` on top (CLI flags override the file). ``None`` overrides are ignored."""
        values: dict[str, Any] = load_config_file(file) if file is not None else {}
        for key, value in (overrides or {}).items():
            if value is not None:
                values[key.replace("-", "_")] = value
        return cls.from_dict(values, source=str(file) if file is not None else "config")

    def replace(self, **changes: Any) -> TrainConfig:
        values = self.to_dict()
        values.update(changes)
        return TrainConfig.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """Check ranges and choices; raises ConfigError naming the option and the fix."""

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        need(self.layout in _LAYOUTS, f"layout must be one of {_LAYOUTS}, got {self.layout!r}")
        need(self.mixed_precision in _PRECISIONS, f"mixed_precision must be one of {_PRECISIONS}, got {self.mixed_precision!r}")
        need(self.model_dtype in _DTYPES, f"model_dtype must be one of {_DTYPES}, got {self.model_dtype!r}")
        need(
            self.on_template_mismatch in _ON_MISMATCH,
            f"on_template_mismatch must be one of {_ON_MISMATCH}, got {self.on_template_mismatch!r}",
        )
        need(self.learning_rate > 0 and math.isfinite(self.learning_rate), f"learning_rate must be > 0, got {self.learning_rate}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(0.0 <= self.warmup_ratio < 1.0, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.gradient_accumulation_steps >= 1, f"gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}")
        need(self.num_epochs >= 1, f"num_epochs must be >= 1, got {self.num_epochs}")
        need(self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1 when set, got {self.max_steps}")
        need(self.max_length >= 2, f"max_length must be >= 2, got {self.max_length}")
        need(self.max_examples is None or self.max_examples >= 1, f"max_examples must be >= 1 when set, got {self.max_examples}")
        need(0.0 <= self.eval_fraction < 1.0, f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        need(self.eval_size is None or self.eval_size >= 1, f"eval_size must be >= 1 when set, got {self.eval_size}")
        check_temperatures(self.gate_temperature_start or 1.0, self.gate_temperature_end or 0.001)
        need(self.save_steps >= 0, f"save_steps must be >= 0, got {self.save_steps}")
        need(self.save_total_limit >= 0, f"save_total_limit must be >= 0, got {self.save_total_limit}")
        need(self.eval_steps is None or self.eval_steps >= 1, f"eval_steps must be >= 1 when set, got {self.eval_steps}")
        need(self.logging_steps >= 1, f"logging_steps must be >= 1, got {self.logging_steps}")
        need(self.num_workers >= 0 and self.preprocess_workers >= 1, "num_workers must be >= 0 and preprocess_workers >= 1")
        need(bool(self.output_dir), "output_dir must be set")
        need(
            not (self.resume and self.overwrite_output_dir),
            "resume and overwrite_output_dir contradict each other: --resume continues the run in output_dir, "
            "--overwrite-output-dir deletes it",
        )

    def fingerprint(self) -> dict[str, Any]:
        """The options that determine what a run computes (everything a resume must not change)."""
        return {k: v for k, v in self.to_dict().items() if k not in RESUME_MUTABLE_FIELDS}


# ---------------------------------------------------------------------- helpers


def check_temperatures(start: float, end: float) -> None:
    if not 0 < end <= start:
        raise ConfigError(
            "gate temperatures must satisfy 0 < gate_temperature_end <= gate_temperature_start, "
            f"got start={start}, end={end}"
        )


def load_config_file(path: str | Path | None) -> dict[str, Any]:
    """Read a YAML or JSON mapping; errors name the file and what is wrong with it."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (pass --config with a YAML or JSON file)")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            values = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        else:
            raise ConfigError(f"config file {path}: unknown extension '{path.suffix}', use .yaml, .yml or .json")
    except ConfigError:
        raise
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        raise ConfigError(f"config file {path} is not valid {suffix[1:].upper()}: {exc}") from exc
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option names to values, got {type(values).__name__}")
    return values


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert ``value`` to the annotated type (YAML reads ``1e-4`` as a string, CLI lists as strings)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for candidate in inner:
            try:
                return _coerce(value, candidate, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: cannot use {value!r}")
    if origin is list:
        (item,) = args
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            value = [value]
        return [_coerce(v, item, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                pass
            else:
                if f.is_integer():
                    return int(f)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, Path):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if hint is Any:
        return value
    return value
