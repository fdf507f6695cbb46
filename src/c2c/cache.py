"""KV geometry of a causal LM and row access through the transformers 5.x Cache API.

Everything that touches a cache goes through this module: it knows which layers hold per-token keys
and values (full attention, sliding window, none for linear-attention layers of hybrid models), how many
rows a layer holds after a prefill, and how to gather rows by position. No model code is patched.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, get_type_hints

import torch
from torch import Tensor
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer

from c2c.fields import matches

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
        head_dim: per-head size of keys.
        value_head_dim: per-head size of values where it differs from the keys' (DeepSeek-style MLA
            caches); None means equal to ``head_dim``.
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
    value_head_dim: int | None = None

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
        # Attention-free configs (state-space models) lack these fields; the cache probe of from_model then
        # finds no per-token rows and refuses the model with that reason.
        heads = int(getattr(cfg, "num_attention_heads", None) or 0)
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
        head_dim = getattr(cfg, "head_dim", None) or (cfg.hidden_size // heads if heads else 0)
        v_head_dim = getattr(cfg, "v_head_dim", None)
        if v_head_dim is not None and getattr(cfg, "qk_rope_head_dim", None) is not None:
            # MLA-style configs (DeepSeek V2/V3): keys are nope + rope dims, values have their own width
            head_dim = int(cfg.qk_rope_head_dim) + int(getattr(cfg, "qk_nope_head_dim", 0) or 0)
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
            value_head_dim=int(v_head_dim) if v_head_dim is not None and int(v_head_dim) != int(head_dim) else None,
        )

    @classmethod
    def from_model(cls, model: PreTrainedModel, name_or_path: str = "", revision: str | None = None) -> ModelSpec:
        """The spec of a loaded model, its KV geometry read from a real cache (:func:`probe_cache`): configs
        do not always say what the cache holds (Falcon's multi-query layers keep one KV head whatever
        ``num_key_value_heads`` says; MLA models keep keys and values of different widths)."""
        spec = cls.from_config(model.config, name_or_path or str(model.name_or_path or ""), revision)
        return probe_cache(model, spec)

    @property
    def key_width(self) -> int:
        """Flattened size of one token's keys in one layer: ``H_kv * D_k``."""
        return self.num_kv_heads * self.head_dim

    @property
    def value_dim(self) -> int:
        """Per-head size of values (``head_dim`` unless the model's values are narrower or wider)."""
        return self.value_head_dim or self.head_dim

    @property
    def value_width(self) -> int:
        """Flattened size of one token's values in one layer: ``H_kv * D_v``."""
        return self.num_kv_heads * self.value_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "model record") -> ModelSpec:
        """Rebuild a recorded spec; fields of the wrong type are a clear error, extra keys are ignored (a
        record also carries e.g. a tokenizer fingerprint)."""
        if not isinstance(data, dict):
            raise TypeError(f"{source} must be a mapping, got {type(data).__name__}")
        hints = get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if not matches(value, hints[f.name]):
                raise TypeError(f"{source}: field {f.name!r} has the wrong type ({value!r}); expected {hints[f.name]}")
            kwargs[f.name] = value
        missing = [
            n
            for n in ("name_or_path", "model_type", "num_layers", "kv_layers", "num_kv_heads", "head_dim")
            if n not in kwargs
        ]
        if missing:
            raise ValueError(f"{source} lacks {missing}; the file is damaged or not written by c2c")
        return cls(**kwargs)


class UnsupportedModelError(ValueError):
    """A model whose cache c2c cannot read or edit; the message says why."""


def backbone(model: PreTrainedModel) -> torch.nn.Module:
    """The decoder stack without the LM head (``model.model`` for most HF causal LMs)."""
    get_decoder = getattr(model, "get_decoder", None)
    candidates: list[Any] = []
    if callable(get_decoder):
        with contextlib.suppress(AttributeError, NotImplementedError):
            candidates.append(get_decoder())
    candidates += [getattr(model, name, None) for name in (model.base_model_prefix, "model", "transformer", "backbone")]
    for base in candidates:
        if isinstance(base, torch.nn.Module) and base is not model:
            return base
    raise UnsupportedModelError(
        f"{type(model).__name__} exposes no decoder stack apart from its LM head (get_decoder(), .model or "
        f".{model.base_model_prefix}); pass the *ForCausalLM model of a decoder-only LLM"
    )


def probe_cache(model: PreTrainedModel, spec: ModelSpec) -> ModelSpec:
    """``spec`` with its KV geometry taken from a real cache: one 3-token prefill into :func:`new_cache`.

    Raises:
        UnsupportedModelError: the model cannot prefill into a transformers ``DynamicCache`` (a model with a
            cache class of its own), its cache holds no per-token keys and values (a state-space model), or
            its KV layers hold different shapes.
    """
    name = type(model).__name__
    try:
        cache = new_cache(model)
    except Exception as exc:
        raise UnsupportedModelError(
            f"{name}: transformers cannot build a DynamicCache for this config ({type(exc).__name__}: {exc}); c2c "
            "reads and edits caches through DynamicCache, so this model family is not supported"
        ) from exc
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    if device.type == "meta":
        return spec  # no weights to run (size estimates): the config's geometry is all there is
    vocab = int(getattr(model.config.get_text_config(decoder=True), "vocab_size", 0) or 3)
    ids = (torch.arange(3, device=device) % max(vocab, 1))[None]
    try:
        with torch.no_grad():
            backbone(model)(input_ids=ids, cache=cache, use_cache=True)
    except UnsupportedModelError:
        raise
    except Exception as exc:
        raise UnsupportedModelError(
            f"{name} could not run a prefill into a transformers DynamicCache ({type(exc).__name__}: {exc}); c2c "
            "reads and edits caches through DynamicCache, so this model family is not supported"
        ) from exc
    shapes: dict[int, tuple[int, int, int]] = {}
    sliding: list[int] = []
    for i, lay in enumerate(cache.layers):
        keys, values = getattr(lay, "keys", None), getattr(lay, "values", None)
        if isinstance(keys, Tensor) and isinstance(values, Tensor) and keys.dim() == 4 and keys.shape[2] > 0:
            shapes[i] = (int(keys.shape[1]), int(keys.shape[3]), int(values.shape[3]))
            if "Sliding" in type(lay).__name__:
                sliding.append(i)
    if not shapes:
        raise UnsupportedModelError(
            f"{name} keeps no per-token keys and values in any layer (a state-space or recurrent model); C2C "
            "fuses attention caches, so choose a model with attention layers"
        )
    distinct = sorted(set(shapes.values()))
    if len(distinct) > 1:
        raise UnsupportedModelError(
            f"{name}'s KV layers hold different shapes (heads, key dim, value dim) = {distinct}; c2c's fusers "
            "assume one KV geometry per model"
        )
    heads, k_dim, v_dim = distinct[0]
    kv_layers = sorted(shapes)
    return replace(
        spec,
        kv_layers=kv_layers,
        num_kv_heads=heads,
        head_dim=k_dim,
        value_head_dim=v_dim if v_dim != k_dim else None,
        sliding_layers=[i for i in kv_layers if i in sliding or i in spec.sliding_layers],
        sliding_window=spec.sliding_window if (sliding or spec.sliding_layers) else None,
    )


def new_cache(model: PreTrainedModel, *, keep_all_rows: bool = False) -> DynamicCache:
    """A fresh cache for ``model``.

    ``keep_all_rows`` gives sliding-window layers full rows (the sharer's cache: fusion may read any
    prompt position). Attention is unchanged since the model builds its sliding mask from the config,
    not from the cache.
    """
    if keep_all_rows:
        spec = ModelSpec.from_config(model.config)
        if spec.sliding_layers and len(spec.kv_layers) == spec.num_layers:
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
    lay: Any = cache.layers[layer]
    old_keys, old_values = layer_rows(cache, layer)
    if old_keys.shape != keys.shape or old_values.shape != values.shape:
        raise ValueError(f"layer {layer}: new rows {tuple(keys.shape)} do not match cached {tuple(old_keys.shape)}")
    lay.keys = keys
    lay.values = values


def select_rows(caches: list[Cache], keep: Tensor) -> bool:
    """Keep only the batch rows ``keep [A]`` in every cache, in place; False (and nothing changed) when a
    layer cannot drop rows (linear-attention states, models that keep their own state)."""
    layers: list[Any] = [lay for cache in caches for lay in cache.layers]
    if not all(callable(getattr(lay, "batch_select_indices", None)) for lay in layers):
        return False
    for lay in layers:
        keys = getattr(lay, "keys", None)
        lay.batch_select_indices(keep.to(keys.device) if isinstance(keys, Tensor) else keep)
    return True


def keep_columns(cache: Cache, index: Tensor) -> None:
    """Keep, in every layer, only the cache columns ``index [B, K]`` (in that order), in place.

    Every layer must be a full-attention layer holding all columns (a sliding or linear-attention layer
    has no column to keep).
    """
    length = None
    for i, lay in enumerate(cache.layers):
        keys, values = getattr(lay, "keys", None), getattr(lay, "values", None)
        if type(lay) is not DynamicLayer or keys is None or values is None:
            raise ValueError(
                f"cache layer {i} is a {type(lay).__name__}; dropping cache columns needs full-attention layers "
                "(sliding-window and linear-attention models are not supported)"
            )
        length = keys.shape[2] if length is None else length
        if keys.shape[2] != length:
            raise ValueError(f"cache layer {i} holds {keys.shape[2]} columns, layer 0 holds {length}")
        lay.keys = keys.gather(2, index[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[3]))
        lay.values = values.gather(2, index[:, None, :, None].expand(-1, values.shape[1], -1, values.shape[3]))
