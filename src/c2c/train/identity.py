"""The identity of a run: what a resumed run must share with the recorded one (``train_run.json``).

A run is its computing options (not bookkeeping such as ``save_steps``), the global micro-batch, the pair
(cache shapes, weight and tokenizer digests, fuser and fusion settings) and the data (row count, tokens and
a digest of the rendered lengths). ``--resume`` refuses a folder whose record differs and names every
difference.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from c2c.alignment.tokens import fingerprint as tokenizer_fingerprint
from c2c.cache import ModelSpec
from c2c.config import C2CConfig
from c2c.fuser import FuserConfig
from c2c.model import C2CModel
from c2c.train.checkpoint import RUN_NAME
from c2c.train.config import TrainConfig
from c2c.train.errors import CheckpointError

__all__ = [
    "RunDescription",
    "data_digest",
    "describe_differences",
    "describe_run",
    "refuse_other_run",
    "upgrade_recorded",
]

RunDescription = dict[str, Any]
"""JSON of ``train_run.json``: ``config``, ``global_micro_batch``, ``pair`` and ``data``."""

# Options a run record leaves out: the data content, pair identity and global batch are compared separately.
_NOT_COMPARED_ON_RESUME = {"data", "eval_data", "receiver", "sharer", "batch_size", "init_fuser"}
_MODEL_KEYS = ("model_type", "num_layers", "kv_layers", "num_kv_heads", "head_dim", "vocab_size")


def weights_digest(model: PreTrainedModel) -> str:
    """Short hash of a strided sample of the embedding and last weight (bf16-rounded, dtype-independent):
    tells apart checkpoints of the same architecture."""
    h = hashlib.sha256()
    # never a sharded (DTensor) decoder-layer weight: the digest must not depend on shard_llms
    plain = [p for p in model.parameters() if type(p).__name__ != "DTensor"]
    embeddings = model.get_input_embeddings()
    assert isinstance(embeddings, torch.nn.Module)
    for t in (embeddings.weight, plain[-1]):
        assert isinstance(t, torch.Tensor)
        flat = t.detach().reshape(-1)
        if flat.device.type == "meta":
            continue
        stride = max(1, flat.numel() // 65536)
        sample = flat[::stride][:65536].to("cpu", torch.bfloat16).view(torch.int16)
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def data_digest(ds: Dataset) -> dict[str, Any]:
    lengths = ds["length"]
    h = hashlib.sha256(json.dumps([len(lengths), lengths[:100000]]).encode())
    return {"rows": len(lengths), "tokens": int(sum(lengths)), "digest": h.hexdigest()[:16]}


def _model_id(model: PreTrainedModel, spec: ModelSpec, tok: PreTrainedTokenizerBase | None) -> dict[str, Any]:
    d = spec.to_dict()
    return {
        **{k: d.get(k) for k in _MODEL_KEYS},
        "weights": weights_digest(model),
        "tokenizer": tokenizer_fingerprint(tok)[:16] if tok is not None else None,
    }


def describe_run(
    cfg: TrainConfig, c2c: C2CModel | None, train_ds: Dataset | None, eval_ds: Dataset | None, world: int
) -> RunDescription:
    """What a resumed run must share with the recorded one (JSON round-tripped for comparison); the pair
    and data parts are left out while ``c2c`` / ``train_ds`` are None."""
    desc: RunDescription = {
        "config": {k: v for k, v in cfg.fingerprint().items() if k not in _NOT_COMPARED_ON_RESUME},
        "global_micro_batch": cfg.batch_size * world,
    }
    if c2c is not None:
        sharers = [m for m in c2c.sharers if isinstance(m, PreTrainedModel)]
        desc["pair"] = {
            "receiver": _model_id(c2c.receiver, c2c.receiver_spec, c2c.receiver_tokenizer),
            "sharers": [_model_id(m, s, t) for m, s, t in zip(sharers, c2c.sharer_specs, c2c.sharer_tokenizers)],
            "fusers": [f.config.to_dict() for f in c2c.fuser_list],
            "c2c_config": c2c.config.to_dict(),
        }
    if train_ds is not None:
        desc["data"] = {"train": data_digest(train_ds), "eval": data_digest(eval_ds) if eval_ds is not None else None}
    out: RunDescription = json.loads(json.dumps(desc, default=str))
    return out


def upgrade_recorded(recorded: RunDescription, path: Path) -> RunDescription:
    """A record written by an older c2c in today's form, so it compares field by field.

    Older records kept ``config.fuser`` / ``config.c2c`` as the overrides given (``{}`` for defaults); options
    and fuser / fusion fields added since then are missing. Both are filled with their defaults, which is what
    the older run computed with. A record that cannot be read that way is refused.
    """
    out = copy.deepcopy(recorded)
    config = out.get("config")
    if isinstance(config, dict):
        defaults = {k: v for k, v in TrainConfig().fingerprint().items() if k not in _NOT_COMPARED_ON_RESUME}
        for key, value in defaults.items():
            config.setdefault(key, value)
        config["fuser"] = _expanded(FuserConfig, config["fuser"], path, "config.fuser")
        config["c2c"] = _expanded(C2CConfig, config["c2c"], path, "config.c2c")
    pair = out.get("pair")
    if isinstance(pair, dict):
        if "c2c_config" in pair:
            pair["c2c_config"] = _expanded(C2CConfig, pair["c2c_config"], path, "pair.c2c_config")
        if isinstance(pair.get("fusers"), list):
            pair["fusers"] = [
                _expanded(FuserConfig, f, path, f"pair.fusers[{k}]") for k, f in enumerate(pair["fusers"])
            ]
    upgraded: RunDescription = json.loads(json.dumps(out, default=str))
    return upgraded


def _expanded(cls: type[FuserConfig | C2CConfig], value: Any, path: Path, where: str) -> Any:
    try:
        return cls.from_dict(value, source=f"{path}: {where}").to_dict()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{exc}. This c2c cannot read the recorded run, so it cannot check that --resume continues the same "
            "run: resume with the c2c version that wrote it, or start a new run in another output_dir"
        ) from None


def refuse_other_run(
    folder: Path, recorded: RunDescription, current: RunDescription, only: Sequence[str] | None = None
) -> None:
    """Raise a CheckpointError naming every difference between the recorded run and this one (in the
    sections ``only``, default all)."""
    recorded = upgrade_recorded(recorded, folder / RUN_NAME)
    keys = list(only) if only is not None else sorted(set(recorded) | set(current))
    diffs = describe_differences({k: recorded.get(k) for k in keys}, {k: current.get(k) for k in keys})
    if diffs:
        raise CheckpointError(
            f"output_dir {folder} holds a different run; --resume would mix them:\n  "
            + "\n  ".join(diffs)
            + "\nResume with the recorded settings, or choose another output_dir"
        )


def describe_differences(recorded: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable list of the keys whose values differ between two nested mappings."""
    out: list[str] = []
    for key in sorted(set(recorded) | set(current)):
        a, b = recorded.get(key, "<missing>"), current.get(key, "<missing>")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(describe_differences(a, b, prefix=f"{name}."))
        elif a != b:
            out.append(f"{name}: recorded {a!r:.120}, now {b!r:.120}")
    return out
