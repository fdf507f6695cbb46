"""Generation for :class:`c2c.model.C2CModel` (mixed in).

The fused prefix cache is handed to HF ``generate`` together with the *whole* prompt: ``generate`` then
runs only the uncached last token and decodes alone, so decoding costs exactly what the receiver alone
costs (method.md section 4). The include-response mode needs the sharer in the loop and has its own
decode loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from transformers import GenerationConfig, LogitsProcessorList
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from c2c.batch import C2CBatch, pad_token_id
from c2c.cache import backbone, gather_positions, layer_rows, new_cache, position_ids_from_mask, set_layer_rows
from c2c.inputs import normalise, render_chat

Mode = Literal["c2c", "receiver", "sharer"]


@dataclass
class GenerationResult:
    """Output of ``generate(..., return_dict=True)``.

    Attributes:
        sequences: new token ids per prompt (prompt excluded, cut after the first end-of-sequence).
        texts: decoded new text per prompt (None without a tokenizer).
        timings: seconds spent in ``sharer_prefill``, ``fusion``, ``receiver_prefill`` and ``decode``
            (``total`` too), for the whole batch.
        prompt_tokens: receiver prompt length per prompt (the sharer's for ``mode="sharer"``).
    """

    sequences: list[list[int]]
    texts: list[str] | None
    timings: dict[str, float] = field(default_factory=dict)
    prompt_tokens: list[int] = field(default_factory=list)

    @property
    def new_tokens(self) -> list[int]:
        return [len(s) for s in self.sequences]


class GenerationMixin:
    """``generate`` for C2CModel; relies on its attributes (receiver, sharers, fusers, tokenizers, config)."""

    @torch.no_grad()
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
            inputs: a string, a conversation (list of ``{"role", "content"}``), a list of receiver token
                ids or a 1-D tensor, or a list / 2-D tensor of those for a batch (left-padded inside).
            mode: "c2c" (fused), "receiver" (receiver alone, same code path without fusion) or "sharer"
                (the sharer alone on its own tokenization).
            max_new_tokens, min_new_tokens, do_sample, temperature, top_p, top_k: as in HF ``generate``
                (``min_new_tokens`` suppresses end-of-sequence until that many tokens exist, which lets
                benchmarks time every mode at equal output length).
            streamer: an HF streamer (``TextStreamer``, ``TextIteratorStreamer``); batch size 1 only.
            stopping_criteria: an HF ``StoppingCriteriaList`` (e.g. to cancel on client disconnect).

        Returns:
            the new text (str) for a single prompt, a list of texts for a batch, token-id lists when no
            tokenizer is known, or a :class:`GenerationResult` with ``return_dict=True``.
        """
        if mode not in ("c2c", "receiver", "sharer"):
            raise ValueError(f"unknown mode {mode!r}; use 'c2c', 'receiver' or 'sharer'")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not 0 <= min_new_tokens <= max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {min_new_tokens}")
        norm = normalise(inputs)
        if streamer is not None and len(norm.prompts) != 1:
            raise ValueError("a streamer needs a single prompt; generate batches without one")
        gen = dict(
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            streamer=streamer,
            stopping_criteria=stopping_criteria,
        )
        if mode == "sharer":
            result = self._generate_sharer(norm, enable_thinking=enable_thinking, **gen)
            tokenizer = self.sharer_tokenizers[0]
        else:
            batch = self.encode(norm.prompts if not norm.single else norm.prompts[0], enable_thinking=enable_thinking)
            result = self.generate_from_batch(batch, fuse=(mode == "c2c"), **gen)
            tokenizer = self.receiver_tokenizer
        if tokenizer is not None:
            result.texts = tokenizer.batch_decode(result.sequences, skip_special_tokens=skip_special_tokens)
        if return_dict:
            return result
        out = result.texts if result.texts is not None else result.sequences
        return out[0] if norm.single else out

    def generate_from_batch(self, batch: C2CBatch, *, fuse: bool = True, **gen: Any) -> GenerationResult:
        """Generate from an encoded batch (prefix fused when ``fuse``); see :meth:`generate`."""
        self._check_batch(batch, extra_tokens=gen["max_new_tokens"])
        dev = self.device
        t_start = time.perf_counter()
        cache, sharer_caches, timings = self.prefill_and_fuse(batch, fuse=fuse)
        ids, mask = batch.input_ids.to(dev), batch.attention_mask.to(dev)
        t0 = _sync_time(dev)
        if fuse and self.config.include_response:
            new = self._decode_with_sharer(batch, cache, **gen)
        else:
            out = self.receiver.generate(
                input_ids=ids,
                attention_mask=mask,
                cache=cache,
                generation_config=self._generation_config(self.receiver, self.receiver_tokenizer, **gen),
                streamer=gen.get("streamer"),
                stopping_criteria=gen.get("stopping_criteria"),
            )
            new = out[:, ids.shape[1] :]
        timings["decode"] = _sync_time(dev) - t0
        timings["total"] = time.perf_counter() - t_start
        eos = _eos_ids(self.receiver, self.receiver_tokenizer)
        return GenerationResult(
            sequences=[_cut(row.tolist(), eos) for row in new],
            texts=None,
            timings=timings,
            prompt_tokens=batch.attention_mask.sum(-1).tolist(),
        )

    # ------------------------------------------------------------------ helpers
    def _generation_config(self, model: Any, tokenizer: Any, **gen: Any) -> GenerationConfig:
        eos = _eos_ids(model, tokenizer)
        pad = pad_token_id(model, tokenizer)
        kw: dict[str, Any] = dict(max_new_tokens=gen["max_new_tokens"], do_sample=gen["do_sample"], pad_token_id=pad)
        if gen.get("min_new_tokens"):
            kw["min_new_tokens"] = gen["min_new_tokens"]
        if eos:
            kw["eos_token_id"] = eos
        if gen["do_sample"]:
            kw.update(temperature=gen["temperature"], top_p=gen["top_p"], top_k=gen["top_k"])
        return GenerationConfig(**kw)

    def _generate_sharer(self, norm: Any, *, enable_thinking: bool, **gen: Any) -> GenerationResult:
        sharer, tokenizer = self.sharers[0], self.sharer_tokenizers[0]
        if norm.kind != "ids" and tokenizer is None:
            raise ValueError("mode='sharer' on text needs the sharer tokenizer; pass sharer_tokenizer=")
        if norm.kind == "ids" and self.aligners[0] is not None and not self.aligners[0].identical:
            raise ValueError("mode='sharer' cannot read receiver token ids of a different vocabulary; pass text")
        rows = []
        for p in norm.prompts:
            if norm.kind == "messages":
                rows.append(render_chat(tokenizer, p, enable_thinking=enable_thinking))
            elif norm.kind == "text":
                rows.append(list(tokenizer(p, add_special_tokens=True)["input_ids"]))
            else:
                rows.append(list(p))
        if any(len(r) == 0 for r in rows):
            raise ValueError("empty prompt: give at least one token")
        width = max(len(r) for r in rows)
        pad = pad_token_id(sharer, tokenizer)
        dev = sharer.get_input_embeddings().weight.device
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        limit = self.sharer_specs[0].max_positions
        if limit is not None and width + gen["max_new_tokens"] > limit:
            raise ValueError(f"prompt of {width} tokens + {gen['max_new_tokens']} new tokens exceeds the sharer's context of {limit}")
        t0 = _sync_time(dev)
        out = sharer.generate(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            generation_config=self._generation_config(sharer, tokenizer, **gen),
            streamer=gen.get("streamer"),
            stopping_criteria=gen.get("stopping_criteria"),
        )
        dt = _sync_time(dev) - t0
        eos = _eos_ids(sharer, tokenizer)
        return GenerationResult(
            sequences=[_cut(r.tolist(), eos) for r in out[:, width:]],
            texts=None,
            timings={"sharer_prefill": 0.0, "fusion": 0.0, "receiver_prefill": 0.0, "decode": dt, "total": dt},
            prompt_tokens=mask.sum(-1).tolist(),
        )

    def _decode_with_sharer(self, batch: C2CBatch, cache: Any, **gen: Any) -> Tensor:
        """Decode loop for ``include_response``: each generated token is read by the sharers too, and
        its receiver rows are fused once both caches hold it (it influences the tokens after it)."""
        dev = self.device
        b = batch.batch_size
        mask = batch.attention_mask.to(dev)
        cur = batch.input_ids[:, batch.prefix_len :].to(dev)
        # Sharers read their whole prompt, then one aligned token per generated receiver token.
        s_caches, s_masks = [], []
        for k, sharer in enumerate(self.sharers):
            sdev = sharer.get_input_embeddings().weight.device
            sc = new_cache(sharer, keep_all_rows=True)
            s_mask = batch.sharer_attention_mask[k].to(sdev)
            backbone(sharer)(
                input_ids=batch.sharer_input_ids[k].to(sdev),
                attention_mask=s_mask,
                position_ids=position_ids_from_mask(s_mask),
                cache=sc,
                use_cache=True,
            )
            s_caches.append(sc)
            s_masks.append(s_mask)
        processors = _warpers(**gen)
        eos = torch.tensor(_eos_ids(self.receiver, self.receiver_tokenizer) or [-1], device=dev)
        pad = pad_token_id(self.receiver, self.receiver_tokenizer)
        finished = torch.zeros(b, dtype=torch.bool, device=dev)
        out_tokens: list[Tensor] = []
        streamer = gen.get("streamer")
        for step in range(gen["max_new_tokens"]):
            pos = position_ids_from_mask(mask)[:, -cur.shape[1] :]
            logits = self.receiver(input_ids=cur, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True).logits[:, -1]
            if step > 0:  # ``cur`` is a generated token: the sharers read it and its rows are fused
                self._fuse_generated(cur, cache, s_caches, s_masks)
            scores = processors(torch.cat([batch.input_ids.to(dev)] + out_tokens, dim=1), logits.float())
            if step < gen.get("min_new_tokens", 0):
                scores[:, eos[eos >= 0]] = -float("inf")
            if gen["do_sample"]:
                nxt = torch.multinomial(torch.softmax(scores, -1), 1).squeeze(1)
            else:
                nxt = scores.argmax(-1)
            nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
            out_tokens.append(nxt[:, None])
            if streamer is not None:
                streamer.put(nxt.cpu())
            finished |= torch.isin(nxt, eos)
            stop = gen.get("stopping_criteria")
            if bool(finished.all()) or (stop is not None and bool(stop(torch.cat(out_tokens, 1), scores).all())):
                break
            cur = nxt[:, None]
            mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=dev)], dim=1)
        if streamer is not None:
            streamer.end()
        return torch.cat(out_tokens, dim=1)

    def _fuse_generated(self, tokens: Tensor, cache: Any, s_caches: list[Any], s_masks: list[Tensor]) -> None:
        """Sharers read ``tokens [B, 1]`` (aligned to their vocabularies); fuse the receiver's newest row."""
        for k, (sharer, fuser) in enumerate(zip(self.sharers, self.fusers)):
            sdev = sharer.get_input_embeddings().weight.device
            aligner = self.aligners[k]
            if aligner is None:
                s_tok = tokens.to(sdev)
            else:
                s_tok = torch.tensor(
                    [[_first_or_unk(aligner.align_ids([int(t)]).sharer_ids, pad_token_id(sharer, self.sharer_tokenizers[k]))] for t in tokens[:, 0].tolist()],
                    device=sdev,
                )
            s_masks[k] = torch.cat([s_masks[k], torch.ones_like(s_masks[k][:, :1])], dim=1)
            pos = position_ids_from_mask(s_masks[k])[:, -1:]
            backbone(sharer)(input_ids=s_tok, attention_mask=s_masks[k], position_ids=pos, cache=s_caches[k], use_cache=True)
            for rl_key, layer_fuser in fuser.layers.items():
                rl = int(rl_key)
                if not any(layer_fuser.open_gates()):
                    continue
                keys, values = layer_rows(cache, rl)
                s_keys, s_values = layer_rows(s_caches[k], fuser.layer_map[rl])
                last = torch.full((keys.shape[0], 1), s_keys.shape[2] - 1, dtype=torch.long, device=s_keys.device)
                d_k, d_v = layer_fuser(
                    gather_positions(s_keys, last).to(keys.device),
                    gather_positions(s_values, last).to(keys.device),
                    keys[:, :, -1:],
                    values[:, :, -1:],
                )
                new_k, new_v = keys, values
                if d_k is not None:
                    new_k = torch.cat([keys[:, :, :-1], keys[:, :, -1:] + d_k.to(keys.dtype)], dim=2)
                if d_v is not None:
                    new_v = torch.cat([values[:, :, :-1], values[:, :, -1:] + d_v.to(values.dtype)], dim=2)
                set_layer_rows(cache, rl, new_k, new_v)


def _warpers(**gen: Any) -> LogitsProcessorList:
    procs = LogitsProcessorList()
    if gen["do_sample"]:
        if gen["temperature"] != 1.0:
            procs.append(TemperatureLogitsWarper(gen["temperature"]))
        if gen["top_k"]:
            procs.append(TopKLogitsWarper(gen["top_k"]))
        if gen["top_p"] < 1.0:
            procs.append(TopPLogitsWarper(gen["top_p"]))
    return procs


def _eos_ids(model: Any, tokenizer: Any | None) -> list[int]:
    for src in (model.generation_config, tokenizer, model.config):
        v = getattr(src, "eos_token_id", None) if src is not None else None
        if v is not None:
            return [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
    return []


def _cut(tokens: list[int], eos: list[int]) -> list[int]:
    """Tokens up to and excluding the first end-of-sequence (padding after it dropped)."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[:i]
    return tokens


def _first_or_unk(ids: list[int], fallback: int) -> int:
    return ids[0] if ids else fallback


def _sync_time(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
