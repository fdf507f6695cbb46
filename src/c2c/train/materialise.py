"""The pair made real: LLMs loaded (when given by id), frozen and placed, fusers fresh or loaded from a saved
fuser, with fp32 master weights; and the one way training loads saved fuser weights into a model."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import PreTrainedModel

from c2c.config import check_pair
from c2c.hf import ModelLoadError, load_causal_lm
from c2c.model import C2CModel
from c2c.persistence import FuserRecord, load_fuser_state, read_record, read_weights, resolve_folder
from c2c.train.config import ModelDtype, TrainConfig
from c2c.train.errors import CheckpointError, ConfigError
from c2c.train.pair import ModelRef, PairSource
from c2c.train.sharding import shard_frozen_llms

__all__ = ["check_saved_pair", "load_fuser_weights", "materialise"]

logger = logging.getLogger("c2c.train")

_DTYPES: dict[ModelDtype, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def materialise(pair: PairSource, cfg: TrainConfig, device: torch.device, world: int = 1) -> C2CModel:
    """The C2CModel on ``device`` with fp32 fusers (loading models given by id; with ``shard_llms`` and
    several processes, the LLMs' decoder layers sharded across them)."""
    if pair.model is not None:
        c2c = pair.model
        if cfg.init_fuser:
            load_fuser_weights(c2c, resolve_folder(cfg.init_fuser))
    else:
        assert pair.receiver is not None and pair.sharer is not None
        dtype = model_dtype(cfg.model_dtype, device)
        receiver = _load_model(pair.receiver, dtype, "receiver")
        sharer = _load_model(pair.sharer, dtype, "sharer")
        if cfg.init_fuser:
            try:
                c2c = C2CModel.from_pretrained(
                    cfg.init_fuser,
                    receiver=receiver,
                    sharer=sharer,
                    receiver_tokenizer=pair.receiver_tokenizer,
                    sharer_tokenizer=pair.sharer_tokenizers[0],
                )
            except (OSError, ValueError) as exc:  # damaged folder, another pair: persistence names the problem
                raise CheckpointError(f"init_fuser {cfg.init_fuser}: {exc}") from exc
        else:
            c2c = C2CModel.from_models(
                receiver,
                sharer,
                fuser_config=cfg.fuser,
                receiver_tokenizer=pair.receiver_tokenizer,
                sharer_tokenizer=pair.sharer_tokenizers[0],
                config=pair.c2c_config,
                seed=cfg.seed,
            )
    llms = (c2c.receiver, *c2c.sharers)
    for m in llms:
        m.eval()
        m.requires_grad_(False)
    if cfg.shard_llms and world > 1:
        shard_frozen_llms(c2c, device, world)
    else:
        for m in llms:
            if getattr(m, "hf_device_map", None) is None and m.device != device:
                m.to(device)
    if any(p.dtype != torch.float32 for p in c2c.fusers.parameters()):
        logger.info("casting the fusers to fp32 master weights")
    c2c.fusers.to(device=device, dtype=torch.float32)
    return c2c


def model_dtype(choice: ModelDtype, device: torch.device) -> torch.dtype:
    """The frozen LLMs' dtype: ``auto`` is bf16 on a GPU, fp32 elsewhere."""
    if choice == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[choice]


def load_fuser_weights(c2c: C2CModel, folder: Path) -> None:
    """Load a saved fuser folder (``save_pretrained`` layout) into ``c2c.fusers`` in place, strictly, after
    checking that it was saved for this pair (persistence's one check and one loading path).

    Raises:
        CheckpointError: the folder is damaged, or holds a fuser of another pair or shape.
    """
    try:
        record = read_record(folder)
        weights = read_weights(folder)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder} is damaged ({exc})") from exc
    check_saved_pair(record, c2c, str(folder))
    try:
        load_fuser_state(c2c.fuser_list, weights, str(folder))
    except ValueError as exc:
        raise CheckpointError(f"{folder} holds unusable fuser weights: {exc}") from exc


def check_saved_pair(saved: FuserRecord, c2c: C2CModel, where: str) -> None:
    """Refuse fuser weights saved for another receiver/sharer pair (shapes, vocabularies or layer maps)."""
    try:
        check_pair(saved.receiver, saved.sharers, c2c.receiver_spec, c2c.sharer_specs, where=where)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    now = [dict(f.layer_map) for f in c2c.fuser_list]
    if saved.layer_maps != now:
        raise CheckpointError(f"{where} was saved with other layer maps ({saved.layer_maps}, model has {now})")


def _load_model(ref: ModelRef, dtype: torch.dtype, role: str) -> PreTrainedModel:
    if not isinstance(ref, (str, os.PathLike)):
        return ref
    try:
        return load_causal_lm(ref, role=role, dtype=dtype)
    except ModelLoadError as exc:
        raise ConfigError(str(exc)) from exc
