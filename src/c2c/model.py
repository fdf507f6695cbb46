"""C2CModel: a frozen receiver, one or more frozen sharers, and the trainable fusers between them.

The model holds the parts and the contracts between them (pair compatibility, inputs, the training forward);
the fusion itself is :mod:`c2c.fusion`, generation is :mod:`c2c.generation`, files are :mod:`c2c.persistence`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from c2c.alignment.layers import build_layer_map
from c2c.alignment.records import AlignedPrompt
from c2c.alignment.tokens import TokenAligner, fingerprint
from c2c.batch import C2CBatch, collate
from c2c.cache import ModelSpec
from c2c.config import C2CConfig, check_pair
from c2c.fuser import C2CFuser, FuserConfig, FuserGeometry
from c2c.fusion import FusedPrefix, GateStates, prefill_and_fuse, response_step
from c2c.generation import GenerationOptions, Mode, generate
from c2c.hf import load_causal_lm, load_tokenizer, model_device, pad_token_id, position_ids_from_mask
from c2c.inputs import NormalisedInputs, align_inputs, normalise
from c2c.persistence import (
    FuserRecord,
    build_fusers,
    fuser_state,
    read_record,
    read_weights,
    resolve_folder,
    save_folder,
    versions,
)

__all__ = ["C2CModel", "C2COutput"]


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


class C2CModel(nn.Module):
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
        receiver_tokenizer: PreTrainedTokenizerBase | None = None,
        sharer_tokenizers: PreTrainedTokenizerBase | Sequence[PreTrainedTokenizerBase | None] | None = None,
        config: C2CConfig | None = None,
    ) -> None:
        super().__init__()
        sharer_list = [sharers] if isinstance(sharers, PreTrainedModel) else list(sharers)
        fuser_list = [fusers] if isinstance(fusers, C2CFuser) else list(fusers)
        if not sharer_list:
            raise ValueError("give at least one sharer model")
        if len(fuser_list) != len(sharer_list):
            raise ValueError(f"{len(sharer_list)} sharers but {len(fuser_list)} fusers; one fuser per sharer")
        toks: list[PreTrainedTokenizerBase | None]
        if sharer_tokenizers is None or not isinstance(sharer_tokenizers, (list, tuple)):
            toks = [sharer_tokenizers] * len(sharer_list)  # type: ignore[list-item]
        else:
            toks = list(sharer_tokenizers)
        if len(toks) != len(sharer_list):
            raise ValueError(f"{len(sharer_list)} sharers but {len(toks)} sharer tokenizers")
        self.config = config or C2CConfig()
        self.receiver = receiver
        self.sharers = nn.ModuleList(sharer_list)
        self.fusers = nn.ModuleList(fuser_list)
        self.receiver_tokenizer = receiver_tokenizer
        self.sharer_tokenizers: list[PreTrainedTokenizerBase | None] = toks
        self.receiver_spec = ModelSpec.from_model(receiver)
        self.sharer_specs = [ModelSpec.from_model(s) for s in sharer_list]
        check_pair(
            fuser_list[0].geometry.receiver,
            [f.geometry.sharer for f in fuser_list],
            self.receiver_spec,
            self.sharer_specs,
            where="this fuser",
        )
        for k, (tok, spec) in enumerate(zip(toks, self.sharer_specs)):
            if tok is None and spec.vocab_size != self.receiver_spec.vocab_size:
                # Without its tokenizer a sharer reads the receiver's ids as they are: right only for a shared
                # vocabulary, a silent wrong answer otherwise.
                raise ValueError(
                    f"sharer {k} has another vocabulary ({spec.vocab_size} ids, the receiver {self.receiver_spec.vocab_size}) "
                    "and no tokenizer was given, so its input cannot be aligned; pass sharer_tokenizer= (and "
                    "receiver_tokenizer=)"
                )
        for m in (receiver, *sharer_list):
            m.eval()
            m.requires_grad_(False)
        # Kept even for identical vocabularies: chat messages still render each model's own template and
        # only message content is fused (ids are copied one to one on that fast path).
        self.aligners: list[TokenAligner | None] = [
            None
            if t is None or receiver_tokenizer is None
            else TokenAligner(receiver_tokenizer, t, strategy=self.config.token_alignment)
            for t in toks
        ]
        self.train(False)  # like HF from_pretrained: inference mode until the trainer says otherwise

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_models(
        cls,
        receiver: PreTrainedModel,
        sharer: PreTrainedModel | Sequence[PreTrainedModel],
        *,
        fuser_config: FuserConfig | None = None,
        receiver_tokenizer: PreTrainedTokenizerBase | None = None,
        sharer_tokenizer: PreTrainedTokenizerBase | Sequence[PreTrainedTokenizerBase | None] | None = None,
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
        device = model_device(receiver)
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
    def from_pretrained(
        cls,
        fuser_dir_or_id: str | os.PathLike[str],
        *,
        receiver: PreTrainedModel | str | os.PathLike[str] | None = None,
        sharer: PreTrainedModel | str | os.PathLike[str] | Sequence[PreTrainedModel | str | None] | None = None,
        receiver_tokenizer: PreTrainedTokenizerBase | str | None = None,
        sharer_tokenizer: PreTrainedTokenizerBase | str | Sequence[PreTrainedTokenizerBase | str | None] | None = None,
        dtype: torch.dtype | str | None = None,
        device_map: Any = None,
        revision: str | None = None,
        fuser_dtype: torch.dtype = torch.float32,
    ) -> C2CModel:
        """Load a saved fuser folder (or hub id) with its receiver and sharer(s).

        ``receiver`` / ``sharer`` are loaded models, ids or paths; when omitted, the recorded ones are
        loaded. Weights load strictly; a pair whose cache shapes or vocabularies differ from the recorded
        ones is refused.
        """
        folder = resolve_folder(fuser_dir_or_id, revision)
        record = read_record(folder)
        n = len(record.sharers)
        sharers_in = list(sharer) if isinstance(sharer, (list, tuple)) else [sharer] * n
        if len(sharers_in) != n:
            raise ValueError(f"this fuser has {n} sharers; got {len(sharers_in)}")
        s_toks_in = list(sharer_tokenizer) if isinstance(sharer_tokenizer, (list, tuple)) else [sharer_tokenizer] * n
        r_model = _model(receiver, record.receiver, "receiver", dtype, device_map)
        s_models = [
            _model(s, rec, f"sharer {k}", dtype, device_map)
            for k, (s, rec) in enumerate(zip(sharers_in, record.sharers))
        ]
        check_pair(
            record.receiver,
            record.sharers,
            ModelSpec.from_model(r_model),
            [ModelSpec.from_model(m) for m in s_models],
            where=f"the fuser in {folder}",
        )
        fusers = build_fusers(
            record, read_weights(folder), source=str(folder), device=model_device(r_model), dtype=fuser_dtype
        )
        for f in fusers:  # keep the loaded models' names (paths may have moved) but the recorded shapes
            f.geometry.receiver.name_or_path = r_model.name_or_path or f.geometry.receiver.name_or_path
        r_tok = _tokenizer(receiver_tokenizer, r_model, record.receiver, "receiver")
        s_toks = [_tokenizer(t, m, rec, "sharer") for t, m, rec in zip(s_toks_in, s_models, record.sharers)]
        wanted = [("receiver", r_tok, record.receiver_tokenizer)] + [
            (f"sharer {k}", t, fp) for k, (t, fp) in enumerate(zip(s_toks, record.sharer_tokenizers or [None] * n))
        ]
        for role, tok, want in wanted:
            if want and tok is not None and fingerprint(tok) != want:
                warnings.warn(
                    f"the {role} tokenizer differs from the one this fuser was trained with (vocabulary, merges, "
                    "special tokens or chat template); answers may be off. Pass the training tokenizer if you have it",
                    stacklevel=2,
                )
        return cls(
            r_model, s_models, fusers, receiver_tokenizer=r_tok, sharer_tokenizers=s_toks, config=record.c2c_config
        )

    def record(self) -> FuserRecord:
        """What ``fuser_config.json`` says about this model."""
        fusers = self.fuser_list
        return FuserRecord(
            c2c_config=self.config,
            fuser_configs=[f.config for f in fusers],
            receiver=self.receiver_spec,
            sharers=list(self.sharer_specs),
            layer_maps=[dict(f.layer_map) for f in fusers],
            receiver_tokenizer=fingerprint(self.receiver_tokenizer) if self.receiver_tokenizer is not None else None,
            sharer_tokenizers=[fingerprint(t) if t is not None else None for t in self.sharer_tokenizers],
            versions=versions(),
        )

    def save_pretrained(self, save_directory: str | os.PathLike[str], *, overwrite: bool = True) -> None:
        """Write ``fuser_config.json``, ``fuser_model.safetensors`` and a model card to ``save_directory``."""
        save_folder(save_directory, self.record(), fuser_state(self.fuser_list), overwrite=overwrite)

    # ------------------------------------------------------------------ module state
    @property
    def fuser_list(self) -> list[C2CFuser]:
        """The fusers, one per sharer, typed (``fusers`` is the ``nn.ModuleList`` that holds them)."""
        return [f for f in self.fusers if isinstance(f, C2CFuser)]

    @property
    def sharer_models(self) -> list[PreTrainedModel]:
        """The sharers, typed (``sharers`` is the ``nn.ModuleList`` that holds them)."""
        return [s for s in self.sharers if isinstance(s, PreTrainedModel)]

    def train(self, mode: bool = True) -> C2CModel:
        """Set the fusers' mode; the LLMs stay in eval mode."""
        self.training = mode
        self.fusers.train(mode)
        return self

    def set_gate_temperature(self, temperature: float) -> None:
        for f in self.fuser_list:
            f.set_gate_temperature(temperature)

    @property
    def device(self) -> torch.device:
        return model_device(self.receiver)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.fusers.parameters() if p.requires_grad]

    def gate_states(self) -> GateStates:
        """Per sharer: ``{receiver layer: (key gate open, value gate open)}`` (hard, inference gates)."""
        return [f.hard_gates() for f in self.fuser_list]

    # ------------------------------------------------------------------ inputs
    def encode(
        self, inputs: Any, *, responses: Sequence[Sequence[int]] | None = None, enable_thinking: bool = False
    ) -> C2CBatch:
        """Tokenize and align text, chat messages or ids (single or batched) into a :class:`C2CBatch`."""
        return self.encode_normalised(normalise(inputs), responses=responses, enable_thinking=enable_thinking)

    def encode_normalised(
        self, norm: NormalisedInputs, *, responses: Sequence[Sequence[int]] | None = None, enable_thinking: bool = False
    ) -> C2CBatch:
        if norm.kind == "messages" and self.config.prompt_format == "text":
            raise ValueError(
                "this fuser was trained on plain-text prompts (prompt_format='text'), not on chat messages; pass "
                "the prompt as a string (it is fed without a chat template, as in training)"
            )
        alignments = align_inputs(
            norm,
            self.receiver_tokenizer,
            self.aligners,
            enable_thinking=enable_thinking,
            chat_rows=self.config.chat_rows,
        )
        return self.collate(alignments, responses=responses)

    def collate(
        self, alignments: Sequence[Sequence[AlignedPrompt]], responses: Sequence[Sequence[int]] | None = None
    ) -> C2CBatch:
        return collate(
            alignments,
            pad_id=pad_token_id(self.receiver, self.receiver_tokenizer),
            sharer_pad_ids=[pad_token_id(s, t) for s, t in zip(self.sharers, self.sharer_tokenizers)],
            responses=responses,
            alignment_shift=self.config.alignment_shift,
        )

    def check_batch(self, batch: C2CBatch, extra_tokens: int = 0) -> None:
        """Refuse a batch this model cannot read correctly (wrong ids, too long, wrong device)."""
        if batch.input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input_ids must be integer token ids, got dtype {batch.input_ids.dtype}")
        if len(batch.sharer_input_ids) != len(self.sharers):
            raise ValueError(
                f"batch was built for {len(batch.sharer_input_ids)} sharers, model has {len(self.sharers)}"
            )
        _check_ids("receiver", batch.input_ids, self.receiver_spec.vocab_size)
        for k, (ids, spec) in enumerate(zip(batch.sharer_input_ids, self.sharer_specs)):
            _check_ids(f"sharer {k}", ids, spec.vocab_size)
        total = batch.input_ids.shape[1] + extra_tokens
        limit = self.receiver_spec.max_positions
        if limit is not None and total > limit:
            raise ValueError(
                f"prompt of {batch.input_ids.shape[1]} tokens + {extra_tokens} new tokens exceeds the receiver's "
                f"context of {limit} positions; shorten the prompt or lower max_new_tokens"
            )
        extra_sharer = extra_tokens if self.config.include_response else 0
        for k, (ids, spec) in enumerate(zip(batch.sharer_input_ids, self.sharer_specs)):
            if spec.max_positions is not None and ids.shape[1] + extra_sharer > spec.max_positions:
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

    # ------------------------------------------------------------------ fusion and training
    def prefill_and_fuse(self, batch: C2CBatch, *, fuse: bool = True, gates: GateStates | None = None) -> FusedPrefix:
        """The receiver cache of the prefix with fused rows (see :func:`c2c.fusion.prefill_and_fuse`)."""
        return prefill_and_fuse(self, batch, fuse=fuse, gates=gates)

    def forward(self, batch: C2CBatch, *, mode: Literal["c2c", "receiver"] = "c2c") -> C2COutput:
        """Differentiable pass: fused prefix, then the receiver reads the rest; loss on ``batch.labels``.

        Gradients reach only the fusers, through the fused cache rows. With ``include_response`` the rest is
        read one token at a time, each token's rows fused before the next reads them: exactly what decoding
        does (the same :func:`c2c.fusion.response_step`).
        """
        self.check_batch(batch)
        dev = self.device
        fuse = mode == "c2c"
        prefix = prefill_and_fuse(self, batch, fuse=fuse)
        p = batch.prefix_len
        mask = batch.attention_mask.to(dev)
        ids = batch.input_ids.to(dev)
        if fuse and self.config.include_response:
            first: list[Tensor] | None = [ix[:, p : p + 1] for ix in batch.sharer_index]
            steps = []
            for c in range(p, ids.shape[1]):
                steps.append(response_step(self, prefix, ids[:, c : c + 1], mask[:, : c + 1], first_index=first))
                first = None
            logits = torch.stack(steps, dim=1)
        else:
            logits = self.receiver(
                input_ids=ids[:, p:],
                attention_mask=mask,
                position_ids=position_ids_from_mask(mask)[:, p:],
                cache=prefix.cache,
                use_cache=True,
            ).logits
        loss, n = None, 0
        if batch.labels is not None:
            labels = batch.labels[:, p + 1 :].to(dev)
            n = int((labels != -100).sum().item())
            if n == 0:
                raise ValueError("labels hold no response token; check that every example has a response")
            loss = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100
            )
        return C2COutput(loss=loss, logits=logits, num_tokens=n, timings=prefix.timings)

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        inputs: Any,
        *,
        mode: Mode = "c2c",
        max_new_tokens: int = 64,
        min_new_tokens: int = 0,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        streamer: Any | None = None,
        stopping_criteria: Any | None = None,
        enable_thinking: bool = False,
        return_dict: bool = False,
        skip_special_tokens: bool = True,
    ) -> Any:
        """Generate answers to text, chat messages or token ids, single or batched.

        Args:
            inputs: a string (plain text), a conversation (list of ``{"role", "content"}``, rendered with
                each model's chat template), a list of receiver token ids or a 1-D tensor, or a list / 2-D
                tensor of those for a batch (left-padded inside).
            mode: "c2c" (fused), "receiver" (receiver alone, same code path without fusion) or "sharer"
                (the sharer alone on its own tokenization).
            max_new_tokens, min_new_tokens, do_sample, temperature, top_p, top_k: as in HF ``generate``.
            streamer: an HF streamer (``TextStreamer``, ``TextIteratorStreamer``); batch size 1 only.
            stopping_criteria: an HF ``StoppingCriteriaList`` (e.g. to cancel on client disconnect).

        Returns:
            the new text (str) for a single prompt, a list of texts for a batch, token-id lists when no
            tokenizer is known, or a :class:`~c2c.generation.GenerationResult` with ``return_dict=True``.
        """
        options = GenerationOptions(
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            streamer=streamer,
            stopping_criteria=stopping_criteria,
        )
        return generate(
            self,
            inputs,
            mode=mode,
            options=options,
            enable_thinking=enable_thinking,
            return_dict=return_dict,
            skip_special_tokens=skip_special_tokens,
        )


def _check_ids(role: str, ids: Tensor, vocab_size: int | None) -> None:
    if ids.numel() == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or (vocab_size is not None and hi >= vocab_size):
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"token id {bad} is outside the {role}'s vocabulary [0, {vocab_size}); pass ids of this model's "
            "tokenizer (strip -100 label markers and ids of other tokenizers)"
        )


def _model(given: Any, record: ModelSpec, role: str, dtype: Any, device_map: Any) -> PreTrainedModel:
    if isinstance(given, PreTrainedModel):
        return given
    name = given if given is not None else record.name_or_path
    if not name:
        raise ValueError(
            f"the fuser records no {role} path (it was trained on an in-memory model); pass the {role} model or its path"
        )
    revision = record.revision if given is None else None
    return load_causal_lm(name, role=role, dtype=dtype, device_map=device_map, revision=revision)


def _tokenizer(given: Any, model: PreTrainedModel, record: ModelSpec, role: str) -> PreTrainedTokenizerBase | None:
    if given is not None and not isinstance(given, (str, os.PathLike)):
        return given
    if given is not None:
        return load_tokenizer(given, role=role, required=True)
    name = getattr(model, "name_or_path", None) or record.name_or_path
    return load_tokenizer(name, role=role, required=False)
