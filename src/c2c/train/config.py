"""TrainConfig: every knob of a C2C fuser training run, loadable from YAML or JSON.

Defaults follow the paper's training recipe: AdamW lr 1e-4, weight decay 0.01 (none on gates, norms and
biases), linear schedule with 10 % warmup, gradient clipping at 1.0, gate temperature annealed from 1.0 to
0.001, seed 42, max 2048 receiver tokens per example.

The config is typed end to end: ``fuser`` is a :class:`~c2c.fuser.FuserConfig` and ``c2c`` a
:class:`~c2c.config.C2CConfig` (both accept a mapping, as YAML gives them), every string choice is a
``Literal``, and every value is checked (and coerced from YAML / command-line strings) when the config is
built, with a :class:`ConfigError` naming the option and the valid values.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from c2c.config import C2CConfig
from c2c.fuser import FuserConfig
from c2c.train.errors import ConfigError

__all__ = [
    "RESUME_MUTABLE_FIELDS",
    "ConfigError",
    "Layout",
    "MixedPrecision",
    "ModelDtype",
    "OnTemplateMismatch",
    "TrainConfig",
    "check_temperatures",
    "load_config_file",
    "merge_options",
]

Layout = Literal["auto", "messages", "conversations", "prompt_response"]
MixedPrecision = Literal["auto", "no", "bf16", "fp16"]
ModelDtype = Literal["auto", "float32", "bfloat16", "float16"]
OnTemplateMismatch = Literal["warn", "error"]

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
    ``batch_size * gradient_accumulation_steps * world_size`` conversations. Values are checked (and
    strings from YAML or ``--set`` coerced) when the config is built; a bad one is a :class:`ConfigError`.
    """

    # --- the pair (ignored when models are passed to ``train`` directly) ---
    receiver: str | None = None
    sharer: str | None = None
    model_dtype: ModelDtype = "auto"  # dtype of the frozen LLMs; auto = bf16 on GPU, fp32 on CPU
    fuser: FuserConfig = field(default_factory=FuserConfig)  # a fresh fuser's config (a mapping works too)
    c2c: C2CConfig = field(default_factory=C2CConfig)  # how fusion is applied (alignment_shift, token_alignment, ...)
    init_fuser: str | None = None  # start from a saved fuser (save_pretrained folder) instead of a fresh one

    # --- data ---
    data: list[str] = field(default_factory=list)  # JSONL / JSON / parquet files
    eval_data: list[str] = field(default_factory=list)
    eval_fraction: float = 0.0  # held out from ``data`` when no ``eval_data`` is given
    eval_size: int | None = None  # absolute size of the held-out split (overrides eval_fraction)
    layout: Layout = "auto"
    messages_field: str = "messages"
    conversations_field: str = "conversations"
    prompt_field: str = "prompt"
    response_field: str = "response"
    # None = when the receiver tokenizer has one (and the pair's c2c.prompt_format is not "text").
    use_chat_template: bool | None = None
    enable_thinking: bool = False
    # When the rendered instruction is not a prefix of the rendered conversation: "warn" trains on
    # instruction + response content + eos and reports how many rows needed it; "error" stops.
    on_template_mismatch: OnTemplateMismatch = "warn"
    max_length: int = 2048  # receiver tokens (instruction + response); longer examples are dropped
    max_examples: int | None = None  # use the first N rows of ``data`` (reference: 500k)
    preprocess_workers: int = 1

    # --- optimisation ---
    learning_rate: float = 1e-4
    # Learning rate of the gate logits (their own AdamW group, same schedule); None = learning_rate.
    gate_learning_rate: float | None = None
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
    mixed_precision: MixedPrecision = "auto"  # auto = bf16 autocast on GPU, none on CPU
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

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ construction

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Build a config from a mapping, coercing strings/numbers to the declared types.

        Unknown keys are an error (with the nearest valid name), so a typo never silently falls back
        to a default; so are unknown keys inside ``fuser`` and ``c2c``.
        """
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a mapping of option names to values, got {type(values).__name__}")
        names = cls.field_names()
        try:
            return cls(**{_known(str(key), names, ""): value for key, value in values.items()})
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Load a YAML (.yaml/.yml) or JSON (.json) config file."""
        return cls.from_dict(load_config_file(path), source=str(path))

    @classmethod
    def from_sources(cls, file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """File values, then ``overrides`` on top (flags override the file; nested mappings such as
        ``{"fuser": {"hidden_size": 64}}`` override field by field). ``None`` overrides are ignored."""
        values = load_config_file(file) if file is not None else {}
        values = merge_options(values, {k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_dict(values, source=str(file) if file is not None else "config")

    def replace(self, **changes: Any) -> TrainConfig:
        values = self.to_dict()
        values.update(changes)
        return TrainConfig.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (``fuser`` and ``c2c`` as their own ``to_dict``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["fuser"] = self.fuser.to_dict()
        out["c2c"] = self.c2c.to_dict()
        out["data"], out["eval_data"], out["log_with"] = list(self.data), list(self.eval_data), list(self.log_with)
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """Coerce every value to its annotation (again: attributes may be set after construction), then check
        ranges and combinations; raises ConfigError naming the option and the fix."""

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            setattr(self, f.name, _coerce(getattr(self, f.name), hints[f.name], f"option '{f.name}'"))
        need(
            self.learning_rate > 0 and math.isfinite(self.learning_rate),
            f"learning_rate must be > 0, got {self.learning_rate}",
        )
        need(
            self.gate_learning_rate is None or (self.gate_learning_rate > 0 and math.isfinite(self.gate_learning_rate)),
            f"gate_learning_rate must be > 0 when set (None = learning_rate), got {self.gate_learning_rate}",
        )
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(0.0 <= self.warmup_ratio < 1.0, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(
            self.gradient_accumulation_steps >= 1,
            f"gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}",
        )
        need(self.num_epochs >= 1, f"num_epochs must be >= 1, got {self.num_epochs}")
        need(self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1 when set, got {self.max_steps}")
        need(self.max_length >= 2, f"max_length must be >= 2, got {self.max_length}")
        need(
            self.max_examples is None or self.max_examples >= 1,
            f"max_examples must be >= 1 when set, got {self.max_examples}",
        )
        need(0.0 <= self.eval_fraction < 1.0, f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        need(self.eval_size is None or self.eval_size >= 1, f"eval_size must be >= 1 when set, got {self.eval_size}")
        check_temperatures(self.gate_temperature_start or 1.0, self.gate_temperature_end or 0.001)
        need(self.save_steps >= 0, f"save_steps must be >= 0, got {self.save_steps}")
        need(self.save_total_limit >= 0, f"save_total_limit must be >= 0, got {self.save_total_limit}")
        need(
            self.eval_steps is None or self.eval_steps >= 1, f"eval_steps must be >= 1 when set, got {self.eval_steps}"
        )
        need(self.logging_steps >= 1, f"logging_steps must be >= 1, got {self.logging_steps}")
        need(
            self.num_workers >= 0 and self.preprocess_workers >= 1,
            "num_workers must be >= 0 and preprocess_workers >= 1",
        )
        need(bool(self.output_dir), "output_dir must be set")
        need(
            not (self.resume and self.overwrite_output_dir),
            "resume and overwrite_output_dir contradict each other: --resume continues the run in output_dir, "
            "--overwrite-output-dir deletes it",
        )
        need(
            not (self.use_chat_template is True and self.c2c.prompt_format == "text"),
            "use_chat_template: true contradicts c2c.prompt_format: text (plain-text prompts); drop one of them",
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


def merge_options(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` on top; keys are normalised (``-`` -> ``_``) and a mapping overrides a
    mapping key by key (``--set fuser.hidden_size=64`` keeps the file's other ``fuser`` fields)."""
    out = {str(k).replace("-", "_"): v for k, v in base.items()}
    for key, value in overrides.items():
        name = str(key).replace("-", "_")
        if isinstance(value, dict) and isinstance(out.get(name), dict):
            out[name] = merge_options(out[name], value)
        else:
            out[name] = value
    return out


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
        raise ConfigError(
            f"config file {path} must hold a mapping of option names to values, got {type(values).__name__}"
        )
    return values


def _known(key: str, names: list[str], prefix: str) -> str:
    """``key`` normalised (``-`` -> ``_``), or a ConfigError naming the nearest valid option."""
    name = key.replace("-", "_")
    if name in names:
        return name
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
    raise ConfigError(f"unknown option '{prefix}{key}'.{hint} Valid options: {', '.join(prefix + n for n in names)}")


def _nested(value: Any, cls: Any, where: str) -> Any:
    """A nested typed config (FuserConfig, C2CConfig) from an instance or a mapping (YAML, ``--set``).

    Each field is coerced to its annotation first (YAML 1.1 reads ``1e-6`` as a string), so an error names
    the dotted option (``fuser.hidden_size``); the config's own ``from_dict`` then checks the values."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{where} expects a mapping of {cls.__name__} fields, got {value!r:.80}")
    option = where.removeprefix("option ").strip("'")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    data = {}
    for key, raw in value.items():
        name = _known(str(key), names, f"{option}.")
        data[name] = _coerce(raw, hints[name], f"option '{option}.{name}'")
    try:
        return cls.from_dict(data, source=where)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert ``value`` to the annotated type (YAML reads ``1e-4`` as a string, CLI lists as strings)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _nested(value, hint, where)
    if origin is Literal:
        if value in args and any(type(value) is type(a) for a in args):
            return value
        raise ConfigError(f"{where} must be one of {', '.join(map(repr, args))}; got {value!r:.80}")
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
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: cannot use {value!r:.80} ({'; '.join(errors)})")
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
            raise ConfigError(f"{where}: expected a mapping, got {value!r:.80}")
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
        raise ConfigError(f"{where}: expected true/false, got {value!r:.80}")
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
        raise ConfigError(f"{where}: expected an integer, got {value!r:.80}")
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r:.80}") from None
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, Path):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r:.80}")
    return value
