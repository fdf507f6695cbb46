"""What is trained: the receiver/sharer pair as given (C2CModel, loaded models or ids), the renderer built
from its tokenizers, and the identity of a run (pair, data, config) that a resume must match."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from c2c.config import C2CConfig, check_pair
from c2c.fuser import FuserConfig
from c2c.hf import ModelLoadError, load_causal_lm, load_tokenizer
from c2c.model import C2CModel
from c2c.persistence import FuserRecord, load_fuser_state, read_record, read_weights, resolve_folder
from c2c.train.checkpoint import CheckpointError
from c2c.train.config import ConfigError, TrainConfig
from c2c.train.data import ExampleRenderer, Fields

__all__ = [
    "PairSource",
    "build_renderer",
    "check_saved_pair",
    "describe_run",
    "load_fuser_weights",
    "shard_frozen_llms",
]

logger = logging.getLogger("c2c.train")

# Options whose change does not change what a resumed run computes beyond what the run record checks
# separately (data content, pair identity, global batch).
_NOT_COMPARED_ON_RESUME = {"data", "eval_data", "receiver", "sharer", "batch_size", "init_fuser"}


def shard_frozen_llms(c2c: Any, device: torch.device, world: int) -> None:
    """FSDP2 (``fully_shard``) over every decoder layer of the frozen receiver and sharers.

    Each process keeps 1/world of every layer's weights; a layer's weights are gathered for its forward and
    again for the backward that carries gradients to the fused cache rows (the weights themselves get no
    gradient). Embeddings, final norms and LM heads stay whole on every process (tied embeddings cannot be
    split from their head). Every process must run the same forward calls, which the trainer guarantees
    (same number of micro-batches everywhere, no micro-batch without fused rows).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from c2c.cache import backbone

    mesh = init_device_mesh(device.type, (world,))
    for llm in (c2c.receiver, *c2c.sharers):
        layers = getattr(backbone(llm), "layers", None)
        if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
            raise ConfigError(f"shard_llms: {type(llm).__name__} has no decoder layer list at .{llm.base_model_prefix}.layers")
        for layer in layers:
            fully_shard(layer, mesh=mesh)  # moves this layer's shard to the mesh device
        for module in llm.modules():  # the rest (embeddings, norms, head, rotary buffers) stays whole
            for name, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
                if type(t).__name__ != "DTensor" and t.device != device:
                    t.data = t.data.to(device)


def load_fuser_weights(c2c: C2CModel, folder: Path) -> None:
    """Load a saved fuser folder (``save_pretrained`` layout) into ``c2c.fusers`` in place, strictly."""
    try:
        record = read_record(folder)
        weights = read_weights(folder)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder} is damaged ({exc})") from exc
    check_saved_pair(record, c2c, str(folder))
    try:
        load_fuser_state(c2c.fuser_list, weights, str(folder))
    except ValueError as exc:
        raise CheckpointError(f"{folder} holds fuser weights of another shape: {exc}") from exc


def check_saved_pair(saved: FuserRecord, c2c: C2CModel, where: str) -> None:
    """Refuse fuser weights saved for another receiver/sharer pair (shapes, vocabularies or layer maps)."""
    try:
        check_pair(saved.receiver, saved.sharers, c2c.receiver_spec, c2c.sharer_specs, where=where)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    now = [dict(f.layer_map) for f in c2c.fuser_list]
    if saved.layer_maps != now:
        raise CheckpointError(f"{where} was saved with other layer maps ({saved.layer_maps}, model has {now})")


def weights_digest(model: nn.Module) -> str:
    """Short hash of a strided sample of the embedding and last weight (bf16-rounded, dtype-independent):
    tells apart checkpoints of the same architecture."""
    h = hashlib.sha256()
    # never a sharded (DTensor) decoder-layer weight: the digest must not depend on shard_llms
    plain = [p for p in model.parameters() if type(p).__name__ != "DTensor"]
    params = [model.get_input_embeddings().weight, plain[-1]]
    for t in params:
        flat = t.detach().reshape(-1)
        if flat.device.type == "meta":
            continue
        stride = max(1, flat.numel() // 65536)
        sample = flat[::stride][:65536].to("cpu", torch.bfloat16).view(torch.int16)
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def data_digest(ds: Any) -> dict[str, Any]:
    lengths = ds["length"]
    h = hashlib.sha256(json.dumps([len(lengths), lengths[:100000]]).encode())
    return {"rows": len(lengths), "tokens": int(sum(lengths)), "digest": h.hexdigest()[:16]}


def describe_run(cfg: TrainConfig, c2c: Any, train_ds: Any, eval_ds: Any, world: int) -> dict[str, Any]:
    """What a resumed run must share with the recorded one (JSON round-tripped for comparison); the pair
    and data parts are left out while ``c2c`` / ``train_ds`` are None."""
    from c2c.alignment.tokens import fingerprint

    def model_id(m: Any, spec: Any, tok: Any) -> dict[str, Any]:
        d = spec.to_dict()
        return {
            **{k: d.get(k) for k in ("model_type", "num_layers", "kv_layers", "num_kv_heads", "head_dim", "vocab_size")},
            "weights": weights_digest(m),
            "tokenizer": fingerprint(tok)[:16] if tok is not None else None,
        }

    desc: dict[str, Any] = {
        "config": {k: v for k, v in cfg.fingerprint().items() if k not in _NOT_COMPARED_ON_RESUME},
        "global_micro_batch": cfg.batch_size * world,
    }
    if c2c is not None:
        desc["pair"] = {
            "receiver": model_id(c2c.receiver, c2c.receiver_spec, c2c.receiver_tokenizer),
            "sharers": [model_id(m, s, t) for m, s, t in zip(c2c.sharers, c2c.sharer_specs, c2c.sharer_tokenizers)],
            "fusers": [f.config.to_dict() for f in c2c.fusers],
            "c2c_config": c2c.config.to_dict(),
        }
    if train_ds is not None:
        desc["data"] = {"train": data_digest(train_ds), "eval": data_digest(eval_ds) if eval_ds is not None else None}
    return json.loads(json.dumps(desc, default=str))


def build_renderer(pair: PairSource, cfg: TrainConfig) -> ExampleRenderer:
    from c2c.alignment.tokens import TokenAligner

    chat = cfg.use_chat_template
    if chat is None:
        chat = bool(getattr(pair.receiver_tokenizer, "chat_template", None))
    aligners = []
    for given, tok in zip(pair.aligners, pair.sharer_tokenizers):
        # Always a real aligner: with identical tokenizers it copies ids but still leaves template rows unfused.
        aligners.append(given if given is not None else TokenAligner(pair.receiver_tokenizer, tok or pair.receiver_tokenizer, strategy=pair.strategy))
    fields = Fields(cfg.layout, cfg.messages_field, cfg.conversations_field, cfg.prompt_field, cfg.response_field)
    return ExampleRenderer(
        pair.receiver_tokenizer, aligners, chat=chat, enable_thinking=cfg.enable_thinking,
        on_template_mismatch=cfg.on_template_mismatch, alignment_shift=pair.alignment_shift, fields=fields,
    )


@dataclass
class PairSource:
    """The pair as given: a built C2CModel, or models/ids to load after the data is checked."""

    model: Any
    receiver: Any
    sharer: Any
    receiver_tokenizer: Any
    sharer_tokenizers: list[Any]
    aligners: list[Any]
    strategy: str
    alignment_shift: int

    @classmethod
    def build(cls, model: Any, cfg: TrainConfig, r_tok: Any, s_tok: Any) -> PairSource:
        try:
            c2c_cfg = C2CConfig(**cfg.c2c)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"c2c options: {exc}") from exc
        if isinstance(model, C2CModel):
            if model.receiver_tokenizer is None:
                raise ConfigError(
                    "the C2CModel has no receiver tokenizer, which training needs to render the data; build it with "
                    "receiver_tokenizer= (and sharer_tokenizer=)"
                )
            toks = [t or model.receiver_tokenizer for t in model.sharer_tokenizers]
            return cls(model, None, None, model.receiver_tokenizer, toks, list(model.aligners),
                       model.config.token_alignment, model.config.alignment_shift)
        if model is None:
            if not cfg.receiver or not cfg.sharer:
                raise ConfigError("no model: pass a C2CModel or (receiver, sharer), or set receiver and sharer (--receiver/--sharer)")
            receiver, sharer = cfg.receiver, cfg.sharer
        elif isinstance(model, (tuple, list)) and len(model) == 2:
            receiver, sharer = model
        else:
            raise ConfigError(f"model must be a C2CModel, a (receiver, sharer) pair or None; got {type(model).__name__}")
        r_tok = _tokenizer(r_tok, receiver, "receiver")
        s_tok = _tokenizer(s_tok, sharer, "sharer")
        return cls(None, receiver, sharer, r_tok, [s_tok], [None], c2c_cfg.token_alignment, c2c_cfg.alignment_shift)

    def materialise(self, cfg: TrainConfig, device: torch.device, world: int = 1) -> Any:
        """The C2CModel on ``device`` with fp32 fusers (loading models given by id; with ``shard_llms`` and
        several processes, the LLMs' decoder layers sharded across them)."""
        if self.model is not None:
            c2c = self.model
        else:
            dtype = _model_dtype(cfg, device)
            receiver = _load_model(self.receiver, dtype, "receiver")
            sharer = _load_model(self.sharer, dtype, "sharer")
            if cfg.init_fuser:
                c2c = C2CModel.from_pretrained(cfg.init_fuser, receiver=receiver, sharer=sharer,
                                               receiver_tokenizer=self.receiver_tokenizer, sharer_tokenizer=self.sharer_tokenizers[0])
            else:
                try:
                    fuser_config = FuserConfig.from_dict(dict(cfg.fuser))
                    c2c_config = C2CConfig(**cfg.c2c)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"fuser options: {exc}") from exc
                c2c = C2CModel.from_models(receiver, sharer, fuser_config=fuser_config, receiver_tokenizer=self.receiver_tokenizer,
                                           sharer_tokenizer=self.sharer_tokenizers[0], config=c2c_config, seed=cfg.seed)
        if self.model is not None and cfg.init_fuser:
            load_fuser_weights(c2c, resolve_folder(cfg.init_fuser))
        for m in (c2c.receiver, *c2c.sharers):
            m.eval()
            m.requires_grad_(False)
        if cfg.shard_llms and world > 1:
            shard_frozen_llms(c2c, device, world)
        else:
            for m in (c2c.receiver, *c2c.sharers):
                if getattr(m, "hf_device_map", None) is None and m.device != device:
                    m.to(device)
        if any(p.dtype != torch.float32 for p in c2c.fusers.parameters()):
            logger.info("casting the fusers to fp32 master weights")
        c2c.fusers.to(device=device, dtype=torch.float32)
        return c2c


def _tokenizer(given: Any, model: Any, role: str) -> Any:
    if given is not None and not isinstance(given, (str, Path)):
        return given
    name = given or (model if isinstance(model, (str, Path)) else getattr(model, "name_or_path", None))
    if not name:
        raise ConfigError(
            f"no {role} tokenizer: pass {role}_tokenizer= (training renders the chat data with it) "
            f"or give the {role} as a model id/path"
        )
    try:
        return load_tokenizer(name, role=role, required=True)
    except ModelLoadError as exc:
        raise ConfigError(str(exc)) from exc


def _model_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    if cfg.model_dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.model_dtype]


def _load_model(spec: Any, dtype: torch.dtype, role: str) -> Any:
    if not isinstance(spec, (str, Path)):
        return spec
    try:
        return load_causal_lm(spec, role=role, dtype=dtype)
    except ModelLoadError as exc:
        raise ConfigError(str(exc)) from exc
