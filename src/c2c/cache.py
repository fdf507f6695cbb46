"""KV geometry of a causal LM and row access through the transformers 5.x Cache API.

Everything that touches a cache goes through this module: it knows which layers hold per-token keys
and values (full attention, sliding window, none for linear-attention layers of hybrid models), how many
rows a layer holds after a prefill, and how to gather rows by position. No model code is patched.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache

# Layer types (config.layer_types) whose cache holds per-token keys and values.
_KV_LAYER_TYPES = {"full_attention", "sliding_attention", "chunked_attention", "attention"}
_SLIDING_LAYER_TYPES = {"sliding_attention", "chunked_attention"}


@dataclass
class ModelSpec:
    """What c2c needs to know about one LLM's cache, recorded with every saved fuser.

    Attributes:
        name_or_path: hub id or local path the model was loaded from ("" for in-memory models).
        revision: hub revision, if any.
        model_type: ``config.model_type`` of the decoder.
        num_layers: decoder layers in total.
        kv_layers: indices of layers with per-token keys/values (all layers for plain transformers).
        sliding_layers: subset of ``kv_layers`` that keep only a sliding window of rows.
        sliding_window: window size of those layers (None if there are none).
        num_kv_heads: KV heads per KV layer (``num_key_value_heads``, not attention heads).
        head_dim: per-head size of keys and values.
        max_positions: ``max_position_embeddings`` (context limit).
        vocab_size: size of the embedding table.
    """

    name_or_path: str
    model_type: str
    num_layers: int
    kv_layers: list[int]
    num_kv_heads: int
    head_dim: int
    max_positions: int | None = None
    vocab_size: int | None = None
    sliding_layers: list[int] = field(default_factory=list)
    sliding_window: int | None = None
    revision: str | None = None

    @classmethod
    def from_config(cls, config: PretrainedConfig, name_or_path: str = "", revision: str | None = None) -> ModelSpec:
        cfg = config.get_text_config(decoder=True)
        n = int(cfg.num_hidden_layers)
        sliding_window = getattr(cfg, "sliding_window", None)
        layer_types = getattr(cfg, "layer_types", None)
        if not layer_types:
            # Mistral-style global sliding window without per-layer types: every layer slides.
            layer_types = ["sliding_attention" if sliding_window else "full_attention"] * n
        layer_types = list(layer_types)
        if len(layer_types) != n:
            raise ValueError(f"config.layer_types has {len(layer_types)} entries for {n} layers")
        kv_layers = [i for i, t in enumerate(layer_types) if t in _KV_LAYER_TYPES]
        sliding = [i for i in kv_layers if layer_types[i] in _SLIDING_LAYER_TYPES]
        heads = int(getattr(cfg, "num_attention_heads"))
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        return cls(
            name_or_path=name_or_path or str(getattr(config, "_name_or_path", "") or ""),
            revision=revision,
            model_type=str(cfg.model_type),
            num_layers=n,
            kv_layers=kv_layers,
            num_kv_heads=kv_heads,
            head_dim=int(head_dim),
            max_positions=getattr(cfg, "max_position_embeddings", None),
            vocab_size=getattr(cfg, "vocab_size", None),
            sliding_layers=sliding,
            sliding_window=int(sliding_window) if (sliding and sliding_window) else None,
        )

    @classmethod
    def from_model(cls, model: PreTrainedModel, name_or_path: str = "", revision: str | None = None) -> ModelSpec:
        return cls.from_config(model.config, name_or_path or model.name_or_path, revision)

    @property
    def kv_width(self) -> int:
        """Flattened size of one token's keys (or values) in one layer: ``H_kv * D``."""
        return self.num_kv_heads * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def shape_differences(self, other: ModelSpec) -> list[str]:
        """Human-readable list of cache-shape fields that differ (empty if compatible)."""
        out = []
        for name in ("model_type", "num_layers", "kv_layers", "num_kv_heads", "head_dim"):
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                out.append(f"{name}: recorded {a!r}, got {b!r}")
        return out


def backbone(model: PreTrainedModel) -> torch.nn.Module:
    """The decoder stack without the LM head (``model.model`` for HF causal LMs)."""
    base = getattr(model, model.base_model_prefix, None)
    if base is None or base is model:
        raise TypeError(f"{type(model).__name__} has no separate backbone; pass a *ForCausalLM model")
    return base


def new_cache(model: PreTrainedModel, *, keep_all_rows: bool = False) -> DynamicCache:
    """A fresh cache for ``model``.

    ``keep_all_rows`` gives sliding-window layers full rows (the sharer's cache: fusion may read any
    prompt position). Attention is unchanged since the model builds its sliding mask from the config,
    not from the cache.
    """
    spec = ModelSpec.from_config(model.config)
    if keep_all_rows and spec.sliding_layers and len(spec.kv_layers) == spec.num_layers:
        return DynamicCache()
    return DynamicCache(config=model.config)


def layer_rows(cache: Cache, layer: int) -> tuple[Tensor, Tensor]:
    """Keys and values ``[B, H_kv, T_held, D]`` of one layer; raises if it holds no per-token rows."""
    lay = cache.layers[layer]
    keys, values = getattr(lay, "keys", None), getattr(lay, "values", None)
    if keys is None or values is None or keys.dim() != 4:
        raise ValueError(f"cache layer {layer} ({type(lay).__name__}) holds no per-token keys/values")
    return keys, values


def set_layer_rows(cache: Cache, layer: int, keys: Tensor, values: Tensor) -> None:
    """Replace one layer's rows (same shape). Assignment, not an in-place write, so autograd sees it."""
    lay = cache.layers[layer]
    if lay.keys.shape != keys.shape or lay.values.shape != values.shape:
        raise ValueError(
            f"layer {layer}: new rows {tuple(keys.shape)} do not match cached {tuple(lay.keys.shape)}"
        )
    lay.keys = keys
    lay.values = values


def gather_positions(rows: Tensor, index: Tensor) -> Tensor:
    """Pick rows by position: ``rows [B, H, T, D]``, ``index [B, N]`` (-1 allowed) -> ``[B, H, N, D]``.

    Positions of -1 gather row 0; callers mask them out.
    """
    b, h, _, d = rows.shape
    idx = index.clamp(min=0).to(rows.device)
    idx = idx[:, None, :, None].expand(b, h, idx.shape[1], d)
    return torch.gather(rows, 2, idx)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids for left-padded rows: ``[B, T]`` mask -> ``[B, T]`` ids (padding gets 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def copy_config_without_sliding(config: PretrainedConfig) -> PretrainedConfig:
    """Deep copy of ``config`` whose cache layers would all be full (used by tests)."""
    cfg = copy.deepcopy(config)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = ["full_attention" if t in _SLIDING_LAYER_TYPES else t for t in cfg.layer_types]
    return cfg
