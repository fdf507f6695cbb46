"""C2CModel: a frozen receiver, one or more frozen sharers, and the trainable fusers between them.

Fusion follows method.md section 4: both models prefill the prompt minus its last token (the sharer's
backbone only, no LM head), each fuser adds its gated correction onto the receiver's rows (out of
place, so gradients flow in training), then the receiver runs the rest on the edited cache.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from c2c.alignment.layers import build_layer_map
from c2c.batch import C2CBatch, collate, pad_token_id
from c2c.cache import (
    ModelSpec,
    backbone,
    layer_rows,
    new_cache,
    position_ids_from_mask,
    set_layer_rows,
)
from c2c.fuser import C2CFuser, FuserConfig, FuserGeometry
from c2c.generation import GenerationMixin
from c2c.inputs import align_inputs, normalise


@dataclass
class C2CConfig:
    """How fusion is applied (independent of the fuser weights).

    Attributes:
        multi_sharer: "parallel" sums corrections each computed from the clean receiver cache;
            "sequential" lets each fuser read the rows the previous one wrote.
        alignment_shift: receiver slot ``j`` reads the sharer rows aligned to receiver token ``j + shift``.
            0 is the paper. 1 lets the last fused slot carry the sharer's rows of the final prompt token,
            which tiny models need (method.md section 9).
        include_response: the sharer also reads every generated token and that token's rows are fused.
        token_alignment: "longest", "first" (re-encode each receiver token, the paper) or "offsets"
            (the sharer reads its natural tokenization; map by character offsets).
    """

    multi_sharer: Literal["parallel", "sequential"] = "parallel"
    alignment_shift: int = 0
    include_response: bool = False
    token_alignment: Literal["longest", "first", "offsets"] = "longest"

    def __post_init__(self) -> None:
        if self.multi_sharer not in ("parallel", "sequential"):
            raise ValueError(f"multi_sharer must be 'parallel' or 'sequential', got {self.multi_sharer!r}")
        if self.alignment_shift < 0:
            raise ValueError("alignment_shift must be >= 0 (a slot may only read rows at or after it)")
        if self.token_alignment not in ("longest", "first", "offsets"):
            raise ValueError(f"unknown token_alignment {self.token_alignment!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> C2CConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class C2COutput:
    """Result of :meth:`C2CModel.forward`.

    Attributes:
        loss: mean next-token cross-entropy over response tokens (None without labels).
        logits: ``[B, T - P, V]`` receiver logits of the columns after the prefix.
        num_tokens: response tokens the loss averages over.
    """

    loss: Tensor | None
    logits: Tensor
    num_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)


class C2CModel(GenerationMixin, nn.Module):
    """A receiver that reads fused KV-caches from one or more sharers.

    Only ``fusers`` hold trainable parameters; the LLMs are frozen and kept in eval mode whatever
    ``train()`` is called with (HF models in train mode drop the cache under gradient checkpointing).
    """

    def __init__(
        self,
        receiver: PreTrainedModel,
        sharers: PreTrainedModel | Sequence[PreTrainedModel],
        fusers: C2CFuser | Sequence[C2CFuser],
        *,
        receiver_tokenizer: Any | None = None,
        sharer_tokenizers: Any | Sequence[Any] | None = None,
        config: C2CConfig | None = None,
    ) -> None:
        super().__init__()
        sharers = [sharers] if isinstance(sharers, PreTrainedModel) else list(sharers)
        fusers = [fusers] if isinstance(fusers, C2CFuser) else list(fusers)
        if not sharers:
            raise ValueError("give at least one sharer model")
        if len(fusers) != len(sharers):
            raise ValueError(f"{len(sharers)} sharers but {len(fusers)} fusers; one fuser per sharer")
        if sharer_tokenizers is None or not isinstance(sharer_tokenizers, (list, tuple)):
            sharer_tokenizers = [sharer_tokenizers] * len(sharers)
        if len(sharer_tokenizers) != len(sharers):
            raise ValueError(f"{len(sharers)} sharers but {len(sharer_tokenizers)} sharer tokenizers")
        self.config = config or C2CConfig()
        self.receiver = receiver
        self.sharers = nn.ModuleList(sharers)
        self.fusers = nn.ModuleList(fusers)
        self.receiver_tokenizer = receiver_tokenizer
        self.sharer_tokenizers = list(sharer_tokenizers)
        self.receiver_spec = ModelSpec.from_model(receiver)
        self.sharer_specs = [ModelSpec.from_model(s) for s in sharers]
        for k, (fuser, spec) in enumerate(zip(fusers, self.sharer_specs)):
            check_pair(fuser.geometry, self.receiver_spec, spec, sharer_number=k)
        for m in (receiver, *sharers):
            m.eval()
            m.requires_grad_(False)
        self.aligners = [self._make_aligner(t) for t in self.sharer_tokenizers]
        self.train(False)  # like HF from_pretrained: inference mode until the trainer says otherwise

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_models(
        cls,
        receiver: PreTrainedModel,
        sharer: PreTrainedModel | Sequence[PreTrainedModel],
        *,
        fuser_config: FuserConfig | None = None,
        receiver_tokenizer: Any | None = None,
        sharer_tokenizer: Any | Sequence[Any] | None = None,
        config: C2CConfig | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
    ) -> C2CModel:
        """Fresh (untrained) fusers for a receiver and sharer(s); fp32 master weights by default."""
        sharers = [sharer] if isinstance(sharer, PreTrainedModel) else list(sharer)
        fuser_config = fuser_config or FuserConfig()
        r_spec = ModelSpec.from_model(receiver)
        if seed is not None:
            torch.manual_seed(seed)
        device = receiver.get_input_embeddings().weight.device
        fusers = []
        for s in sharers:
            s_spec = ModelSpec.from_model(s)
            geometry = FuserGeometry(
                r_spec, s_spec, build_layer_map(fuser_config.layer_map, r_spec.kv_layers, s_spec.kv_layers)
            )
            fusers.append(C2CFuser(fuser_config, geometry).to(device=device, dtype=dtype))
        return cls(
            receiver,
            sharers,
            fusers,
            receiver_tokenizer=receiver_tokenizer,
            sharer_tokenizers=sharer_tokenizer,
            config=config,
        )

    @classmethod
    def from_pretrained(cls, fuser_dir_or_id: str, **kwargs: Any) -> C2CModel:
        """Load saved fusers and attach them to a receiver and sharer(s); see :func:`c2c.persistence.load`."""
        from c2c.persistence import load  # persistence builds on this class

        return load(cls, fuser_dir_or_id, **kwargs)

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """Write ``fuser_config.json``, ``fuser_model.safetensors`` and a model card to ``save_directory``."""
        from c2c.persistence import save

        save(self, save_directory, **kwargs)

    def _make_aligner(self, sharer_tokenizer: Any | None) -> Any | None:
        if sharer_tokenizer is None or self.receiver_tokenizer is None:
            return None
        from c2c.alignment.tokens import TokenAligner

        # Kept even for identical vocabularies: chat messages still render each model's own template
        # and only message content is fused (ids are copied one to one on that fast path).
        return TokenAligner(self.receiver_tokenizer, sharer_tokenizer, strategy=self.config.token_alignment)

    # ------------------------------------------------------------------ module state
    def train(self, mode: bool = True) -> C2CModel:
        """Set the fusers' mode; the LLMs stay in eval mode."""
        self.training = mode
        self.fusers.train(mode)
        return self

    def set_gate_temperature(self, temperature: float) -> None:
        for f in self.fusers:
            f.set_gate_temperature(temperature)

    @property
    def device(self) -> torch.device:
        return self.receiver.get_input_embeddings().weight.device

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.fusers.parameters() if p.requires_grad]

    def gate_states(self) -> list[dict[int, tuple[bool, bool]]]:
        """Per sharer: ``{receiver layer: (key gate open, value gate open)}``."""
        return [f.gate_states() for f in self.fusers]

    # ------------------------------------------------------------------ encoding
    def encode(
        self,
        inputs: Any,
        *,
        responses: Sequence[Sequence[int]] | None = None,
        enable_thinking: bool = False,
    ) -> C2CBatch:
        """Tokenize and align text, chat messages or ids (single or batched) into a :class:`C2CBatch`."""
        norm = normalise(inputs)
        alignments = align_inputs(norm, self.receiver_tokenizer, self.aligners, enable_thinking=enable_thinking)
        return self.collate(alignments, responses=responses)

    def collate(self, alignments: Sequence[Sequence[Any]], responses: Sequence[Sequence[int]] | None = None) -> C2CBatch:
        return collate(
            alignments,
            pad_id=pad_token_id(self.receiver, self.receiver_tokenizer),
            sharer_pad_ids=[pad_token_id(s, t) for s, t in zip(self.sharers, self.sharer_tokenizers)],
            responses=responses,
            alignment_shift=self.config.alignment_shift,
        )

    # ------------------------------------------------------------------ fusion
    def _check_batch(self, batch: C2CBatch, extra_tokens: int = 0) -> None:
        if batch.input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input_ids must be integer token ids, got dtype {batch.input_ids.dtype}")
        if len(batch.sharer_input_ids) != len(self.sharers):
            raise ValueError(f"batch was built for {len(batch.sharer_input_ids)} sharers, model has {len(self.sharers)}")
        total = batch.input_ids.shape[1] + extra_tokens
        limit = self.receiver_spec.max_positions
        if limit is not None and total > limit:
            raise ValueError(
                f"prompt of {batch.input_ids.shape[1]} tokens + {extra_tokens} new tokens exceeds the receiver's "
                f"context of {limit} positions; shorten the prompt or lower max_new_tokens"
            )
        for k, (ids, spec) in enumerate(zip(batch.sharer_input_ids, self.sharer_specs)):
            if spec.max_positions is not None and ids.shape[1] + (extra_tokens if self.config.include_response else 0) > spec.max_positions:
                raise ValueError(
                    f"the prompt is {ids.shape[1]} tokens for sharer {k}, beyond its context of {spec.max_positions} "
                    "positions; shorten the prompt"
                )
        dev = self.device
        for k, f in enumerate(self.fusers):
            p = next(f.parameters(), None)
            if p is not None and p.device != dev:
                raise ValueError(
                    f"fuser {k} is on {p.device} but the receiver is on {dev}; move it with model.fusers.to('{dev}')"
                )

    def prefill_and_fuse(self, batch: C2CBatch, *, fuse: bool = True) -> tuple[Cache, list[Cache], dict[str, float]]:
        """Prefill the receiver (and sharers) on the prefix and write the fused rows into the receiver cache.

        Returns:
            receiver cache (prefix rows, fused), the sharer caches, and timings in seconds.
        """
        timings = {"receiver_prefill": 0.0, "sharer_prefill": 0.0, "fusion": 0.0}
        p = batch.prefix_len
        dev = self.device
        cache = new_cache(self.receiver)
        sharer_caches: list[Cache] = []
        if p == 0:
            return cache, sharer_caches, timings
        ids, mask = batch.input_ids[:, :p].to(dev), batch.attention_mask[:, :p].to(dev)
        t0 = _now(dev)
        with torch.no_grad():
            backbone(self.receiver)(
                input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), cache=cache, use_cache=True
            )
        timings["receiver_prefill"] = _now(dev) - t0
        if not fuse or not any(f.active_layers() or f.training for f in self.fusers):
            return cache, sharer_caches, timings
        t0 = _now(dev)
        lengths = []
        for k, sharer in enumerate(self.sharers):
            sdev = sharer.get_input_embeddings().weight.device
            # Only the columns some receiver slot reads are needed (the sharer never decodes).
            needed = int(batch.sharer_index[k].max().item()) + 1 if batch.sharer_index[k].numel() else 0
            scache = new_cache(sharer, keep_all_rows=True)
            if needed > 0:
                s_ids = batch.sharer_input_ids[k][:, :needed].to(sdev)
                s_mask = batch.sharer_attention_mask[k][:, :needed].to(sdev)
                with torch.no_grad():
                    backbone(sharer)(
                        input_ids=s_ids,
                        attention_mask=s_mask,
                        position_ids=position_ids_from_mask(s_mask),
                        cache=scache,
                        use_cache=True,
                    )
            sharer_caches.append(scache)
            lengths.append(needed)
        timings["sharer_prefill"] = _now(dev) - t0
        t0 = _now(dev)
        self._fuse_rows(cache, sharer_caches, [ix.to(dev) for ix in batch.sharer_index], lengths, p)
        timings["fusion"] = _now(dev) - t0
        return cache, sharer_caches, timings

    def _fuse_rows(
        self,
        cache: Cache,
        sharer_caches: Sequence[Cache],
        sharer_index: Sequence[Tensor],
        sharer_lengths: Sequence[int],
        prefix_len: int,
    ) -> None:
        """Add each fuser's correction to the receiver rows of columns ``[P - held, P)`` of every layer.

        ``sharer_index[k]`` is ``[B, P]`` (sharer column per receiver column, -1 = none).
        """
        clean: dict[int, tuple[Tensor, Tensor]] = {}
        for k, (fuser, scache) in enumerate(zip(self.fusers, sharer_caches)):
            if sharer_lengths[k] == 0:
                continue
            temperature = fuser.gate_temperature
            rows_cache: dict[tuple[int, int], tuple[Tensor, Tensor, Tensor]] = {}
            for rl_key, layer_fuser in fuser.layers.items():
                rl = int(rl_key)
                if not fuser.training and not any(layer_fuser.open_gates()):
                    continue  # both gates closed: the layer is skipped entirely
                keys, values = layer_rows(cache, rl)
                if rl not in clean:
                    clean[rl] = (keys, values)
                src_k, src_v = clean[rl] if self.config.multi_sharer == "parallel" else (keys, values)
                held = keys.shape[2]
                index = sharer_index[k][:, prefix_len - held : prefix_len]  # [B, held]
                s_keys, s_values = layer_rows(scache, fuser.layer_map[rl])
                s_held = s_keys.shape[2]
                if s_held < sharer_lengths[k]:  # a sliding sharer layer that lost early rows
                    index = torch.where(index >= 0, index - (sharer_lengths[k] - s_held), index)
                # Pack the fused rows (no padding or template rows) into one sequence: the fuser is
                # per-token, so packing only drops wasted work.
                where = rows_cache.get((held, s_held))
                if where is None:
                    b_idx, t_idx = (index >= 0).nonzero(as_tuple=True)
                    where = rows_cache[(held, s_held)] = (b_idx, t_idx, index[b_idx, t_idx])
                b_idx, t_idx, s_idx = where
                if b_idx.numel() == 0:
                    continue
                sb, ss = b_idx.to(s_keys.device), s_idx.to(s_keys.device)
                d_k, d_v = layer_fuser(
                    _pack(s_keys[sb, :, ss], keys.device),
                    _pack(s_values[sb, :, ss], keys.device),
                    _pack(src_k[b_idx, :, t_idx], keys.device),
                    _pack(src_v[b_idx, :, t_idx], keys.device),
                    temperature,
                )
                new_k = keys if d_k is None else keys + _unpack(d_k, keys, b_idx, t_idx)
                new_v = values if d_v is None else values + _unpack(d_v, values, b_idx, t_idx)
                set_layer_rows(cache, rl, new_k, new_v)

    # ------------------------------------------------------------------ training forward
    def forward(self, batch: C2CBatch, *, mode: Literal["c2c", "receiver"] = "c2c") -> C2COutput:
        """Differentiable pass: fused prefix, then the receiver reads the rest; loss on ``batch.labels``.

        Gradients reach only the fusers, through the fused cache rows.
        """
        self._check_batch(batch)
        dev = self.device
        cache, _, timings = self.prefill_and_fuse(batch, fuse=(mode == "c2c"))
        p = batch.prefix_len
        mask = batch.attention_mask.to(dev)
        out = self.receiver(
            input_ids=batch.input_ids[:, p:].to(dev),
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask)[:, p:],
            cache=cache,
            use_cache=True,
        )
        logits = out.logits
        loss, n = None, 0
        if batch.labels is not None:
            labels = batch.labels[:, p + 1 :].to(dev)
            n = int((labels != -100).sum().item())
            if n == 0:
                raise ValueError("labels hold no response token; check that every example has a response")
            loss = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100
            )
        return C2COutput(loss=loss, logits=logits, num_tokens=n, timings=timings)


def check_pair(geometry: FuserGeometry, receiver: ModelSpec, sharer: ModelSpec, sharer_number: int = 0) -> None:
    """Refuse a receiver/sharer pair whose cache shapes differ from what the fuser was built for."""
    r_diff = geometry.receiver.shape_differences(receiver)
    s_diff = geometry.sharer.shape_differences(sharer)
    if not r_diff and not s_diff:
        return
    if not geometry.receiver.shape_differences(sharer) and not geometry.sharer.shape_differences(receiver):
        raise ValueError(
            "receiver and sharer look swapped: the given receiver has the recorded sharer's cache shapes and "
            "vice versa; pass receiver=<the model that answers> and sharer=<the model whose cache is read>"
        )
    lines = [f"receiver {d}" for d in r_diff] + [f"sharer {sharer_number} {d}" for d in s_diff]
    raise ValueError(
        "this fuser was built for a different model pair:\n  " + "\n  ".join(lines) + "\nload the models it was "
        "trained with (see fuser_config.json) or train a new fuser for this pair"
    )


def _pack(rows: Tensor, device: torch.device) -> Tensor:
    """``[N, H, D]`` rows picked from a batch -> one packed sequence ``[1, H, N, D]``."""
    return rows.to(device).transpose(0, 1).unsqueeze(0)


def _unpack(delta: Tensor, like: Tensor, b_idx: Tensor, t_idx: Tensor) -> Tensor:
    """Scatter a packed correction ``[1, H, N, D]`` back to ``like``'s ``[B, H, T, D]`` (zeros elsewhere).

    Written into a fresh tensor, so autograd sees an out-of-place result."""
    full = torch.zeros_like(like)
    full[b_idx, :, t_idx] = delta[0].transpose(0, 1).to(like.dtype)
    return full


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
