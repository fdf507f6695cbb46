"""Generation as its own unit: free functions that run under ``torch.inference_mode()``.

``C2CModel.generate`` is a thin wrapper over :func:`generate`. The receiver prefills the prompt minus its last
token, the fusers rewrite those rows, and one decode loop (:func:`_decode_loop`) reads the last prompt token
on the edited cache and decodes alone, so decoding costs exactly what the receiver alone costs (the loop
matches HF ``generate`` token for token: greedy or sampled, end-of-sequence ids, ``min_new_tokens``, stopping
criteria, streamers). A row that finishes, or that a stopping criterion stops (a cancelled request), leaves
the batch: its rows are dropped from every cache. Include-response decoding steps through
:func:`c2c.fusion.response_step` (the step the training forward uses too). :func:`generate_plain` is the same
prefill/decode split for one model alone (the sharer-only mode and the evaluation's single-model baselines).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

import torch
from torch import Tensor
from transformers import LogitsProcessorList, PreTrainedModel
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from c2c.batch import C2CBatch
from c2c.cache import ModelSpec, backbone, new_cache, select_rows
from c2c.fusion import FusedPrefix, FusionModel, prefill_and_fuse, response_step
from c2c.hf import (
    StageTimer,
    encode_text,
    eos_token_ids,
    left_pad,
    model_device,
    pad_token_id,
    position_ids_from_mask,
    render_chat,
)
from c2c.inputs import NormalisedInputs, normalise

__all__ = ["GenerationOptions", "GenerationResult", "Mode", "generate", "generate_batch", "generate_plain"]

Mode = Literal["c2c", "receiver", "sharer"]


@dataclass
class GenerationOptions:
    """Decoding settings (as in HF ``generate``), checked once.

    ``min_new_tokens`` suppresses end-of-sequence until that many tokens exist (benchmarks time every mode
    at equal output length). ``streamer`` is an HF streamer (batch size 1); ``stopping_criteria`` an HF
    ``StoppingCriteriaList`` (e.g. to cancel on client disconnect).
    """

    max_new_tokens: int = 64
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    streamer: Any | None = None
    stopping_criteria: Any | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}")
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    def warpers(self) -> LogitsProcessorList:
        procs = LogitsProcessorList()
        if self.do_sample:
            if self.temperature != 1.0:
                procs.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k:
                procs.append(TopKLogitsWarper(self.top_k))
            if self.top_p < 1.0:
                procs.append(TopPLogitsWarper(self.top_p))
        return procs


@dataclass
class GenerationResult:
    """Output of ``generate(..., return_dict=True)``.

    Attributes:
        sequences: new token ids per prompt (prompt excluded, cut before the first end-of-sequence).
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


class GenerativeModel(FusionModel, Protocol):
    """What generation needs from a model beyond fusion (``c2c.model.C2CModel`` is one)."""

    @property
    def receiver_tokenizer(self) -> Any | None: ...

    @property
    def sharer_specs(self) -> Sequence[ModelSpec]: ...

    def encode_normalised(self, norm: NormalisedInputs, *, enable_thinking: bool = False) -> C2CBatch: ...

    def check_batch(self, batch: C2CBatch, extra_tokens: int = 0) -> None: ...


# ---------------------------------------------------------------------- entry points


@torch.inference_mode()
def generate(
    model: GenerativeModel,
    inputs: Any,
    *,
    mode: Mode = "c2c",
    options: GenerationOptions | None = None,
    enable_thinking: bool = False,
    return_dict: bool = False,
    skip_special_tokens: bool = True,
) -> Any:
    """Generate answers to text, chat messages or token ids, single or batched; see ``C2CModel.generate``."""
    if mode not in get_args(Mode):
        raise ValueError(f"unknown mode {mode!r}; use 'c2c', 'receiver' or 'sharer'")
    opts = options or GenerationOptions()
    norm = normalise(inputs)
    if opts.streamer is not None and len(norm.prompts) != 1:
        raise ValueError("a streamer needs a single prompt; generate batches without one")
    if mode == "sharer":
        result = _generate_sharer(model, norm, opts, enable_thinking=enable_thinking)
        tokenizer = model.sharer_tokenizers[0]
    else:
        batch = model.encode_normalised(norm, enable_thinking=enable_thinking)
        result = generate_batch(model, batch, fuse=(mode == "c2c"), options=opts)
        tokenizer = model.receiver_tokenizer
    if tokenizer is not None:
        result.texts = tokenizer.batch_decode(result.sequences, skip_special_tokens=skip_special_tokens)
    if return_dict:
        return result
    out = result.texts if result.texts is not None else result.sequences
    return out[0] if norm.single else out


@torch.inference_mode()
def generate_batch(
    model: GenerativeModel, batch: C2CBatch, *, fuse: bool = True, options: GenerationOptions | None = None
) -> GenerationResult:
    """Generate from an encoded batch (its prefix fused when ``fuse``)."""
    opts = options or GenerationOptions()
    model.check_batch(batch, extra_tokens=opts.max_new_tokens)
    dev = model_device(model.receiver)
    timer = StageTimer(dev)
    with timer.stage("total"):
        prefix = prefill_and_fuse(model, batch, fuse=fuse)
        timer.add(prefix.timings)
        ids, mask = batch.input_ids.to(dev), batch.attention_mask.to(dev)
        with timer.stage("decode"):
            if fuse and model.config.include_response:
                new = _decode_include_response(model, batch, prefix, opts)
            else:
                new = _decode(model.receiver, model.receiver_tokenizer, ids, mask, prefix.cache, opts)
    return GenerationResult(
        sequences=new,
        texts=None,
        timings=timer.seconds,
        prompt_tokens=[int(n) for n in batch.attention_mask.sum(-1).tolist()],
    )


@torch.inference_mode()
def generate_plain(
    llm: PreTrainedModel,
    tokenizer: Any | None,
    seqs: Sequence[Sequence[int]],
    options: GenerationOptions | None = None,
    *,
    timer: StageTimer | None = None,
    prefill_stage: str = "receiver_prefill",
    decode_stage: str = "decode",
) -> list[list[int]]:
    """One model alone on token-id prompts (one left-padded batch), split like the fused path: the prompt
    minus its last token is prefilled into a cache (``prefill_stage``), HF ``generate`` runs the rest
    (``decode_stage``). Returns the new ids of each prompt, cut before its first end-of-sequence."""
    opts = options or GenerationOptions()
    dev = model_device(llm)
    timer = timer if timer is not None else StageTimer(dev)
    ids, mask = left_pad(seqs, pad_token_id(llm, tokenizer), dev)
    cache = new_cache(llm)
    with timer.stage(prefill_stage):
        if ids.shape[1] > 1:
            pre = mask[:, :-1]
            backbone(llm)(
                input_ids=ids[:, :-1],
                attention_mask=pre,
                position_ids=position_ids_from_mask(pre),
                cache=cache,
                use_cache=True,
            )
    with timer.stage(decode_stage):
        return _decode(llm, tokenizer, ids, mask, cache, opts)


# ---------------------------------------------------------------------- decoding

Step = Callable[[Tensor, Tensor, bool], Tensor]
"""``step(tokens [A, 1], attention_mask [A, T], first) -> logits [A, V]`` for the rows still decoding."""
Select = Callable[[Tensor], bool]
"""``select(keep [A'])`` keeps only those rows in every cache the step reads; False if a cache cannot."""


def _decode(
    llm: PreTrainedModel, tokenizer: Any | None, ids: Tensor, mask: Tensor, cache: Any, opts: GenerationOptions
) -> list[list[int]]:
    """Decode ``llm`` from the cache of the prompt minus its last token: ``[B, new]`` ids."""

    def step(tokens: Tensor, attention_mask: Tensor, first: bool) -> Tensor:
        pos = position_ids_from_mask(attention_mask)[:, -1:]
        out = llm(input_ids=tokens, attention_mask=attention_mask, position_ids=pos, cache=cache, use_cache=True)
        return out.logits[:, -1]

    return _decode_loop(llm, tokenizer, ids, mask, opts, step, lambda keep: select_rows([cache], keep))


def _decode_include_response(
    model: GenerativeModel, batch: C2CBatch, prefix: FusedPrefix, opts: GenerationOptions
) -> list[list[int]]:
    """Decode with the sharers in the loop: they read the last prompt token and every generated token, each of
    whose receiver rows is fused before the next token reads it (:func:`c2c.fusion.response_step`)."""
    dev = model_device(model.receiver)
    p = batch.prefix_len
    first_index = [ix[:, p : p + 1] for ix in batch.sharer_index]

    def step(tokens: Tensor, attention_mask: Tensor, first: bool) -> Tensor:
        return response_step(model, prefix, tokens, attention_mask, first_index=first_index if first else None)

    def select(keep: Tensor) -> bool:
        if not select_rows([prefix.cache, *prefix.sharer_caches], keep):
            return False
        prefix.sharer_masks = [m[keep.to(m.device)] for m in prefix.sharer_masks]
        return True

    ids, mask = batch.input_ids[:, : p + 1].to(dev), batch.attention_mask[:, : p + 1].to(dev)
    return _decode_loop(model.receiver, model.receiver_tokenizer, ids, mask, opts, step, select)


def _decode_loop(
    llm: PreTrainedModel,
    tokenizer: Any | None,
    ids: Tensor,
    mask: Tensor,
    opts: GenerationOptions,
    step: Step,
    select: Select,
) -> list[list[int]]:
    """The one decode loop: greedy or sampled, ``min_new_tokens``, end-of-sequence ids, HF stopping criteria
    and streamers.

    ``ids``/``mask`` ``[B, T]`` are the whole prompt; the caches hold all but its last token, which the first
    step reads. A row that has finished (end of sequence, or a stopping criterion such as a cancelled request)
    leaves the batch: its rows are dropped from every cache, so it costs nothing more (where a cache cannot
    drop rows, e.g. linear-attention layers, it rides along on padding, as in HF ``generate``).

    Returns:
        the new ids of each row, without its end-of-sequence token and without the padding after it (a row
        stopped by a criterion keeps the token it stopped at, as in HF ``generate``).
    """
    dev = ids.device
    b = ids.shape[0]
    eos_list = eos_token_ids(llm, tokenizer)
    eos = torch.tensor(eos_list or [-1], device=dev)
    pad = pad_token_id(llm, tokenizer)
    processors = opts.warpers()
    out = torch.full((b, opts.max_new_tokens), pad, dtype=torch.long, device=dev)
    finished = torch.zeros(b, dtype=torch.bool, device=dev)
    length = torch.full((b,), opts.max_new_tokens, dtype=torch.long, device=dev)
    active = torch.arange(b, device=dev)  # rows still in the caches, in cache order
    cur, amask = ids[:, -1:], mask
    if opts.streamer is not None:
        opts.streamer.put(ids.cpu())  # HF streamers take the prompt first (skip_prompt drops it)
    n = 0
    for t in range(opts.max_new_tokens):
        logits = step(cur, amask, t == 0).float()
        history = torch.cat([ids[active], out[active, :t]], dim=1)
        scores = processors(history, logits)  # type: ignore[arg-type]  # a LongTensor at runtime
        if t < opts.min_new_tokens and eos_list:
            scores[:, eos] = -float("inf")
        nxt = torch.multinomial(torch.softmax(scores, -1), 1).squeeze(1) if opts.do_sample else scores.argmax(-1)
        nxt = torch.where(finished[active], torch.full_like(nxt, pad), nxt)
        out[active, t] = nxt
        n = t + 1
        if opts.streamer is not None:
            opts.streamer.put(nxt.cpu())
        at_eos = torch.zeros_like(finished)
        at_eos[active] = torch.isin(nxt, eos) & ~finished[active]
        length[at_eos] = t
        finished |= at_eos
        if opts.stopping_criteria is not None:
            full = torch.full((b, scores.shape[-1]), -float("inf"), device=dev)
            full[active] = scores
            stopped = opts.stopping_criteria(torch.cat([ids, out[:, :n]], dim=1), full).to(dev) & ~finished
            length[stopped] = n
            finished |= stopped
        if bool(finished.all()):
            break
        keep = ~finished[active]
        if not bool(keep.all()) and select(keep.nonzero().squeeze(1)):
            active, nxt, amask = active[keep], nxt[keep], amask[keep]
        cur = nxt[:, None]
        amask = torch.cat([amask, torch.ones_like(amask[:, :1])], dim=1)
    if opts.streamer is not None:
        opts.streamer.end()
    return [row[: int(k)] for row, k in zip(out[:, :n].tolist(), length.clamp(max=n).tolist())]


def _generate_sharer(
    model: GenerativeModel, norm: NormalisedInputs, opts: GenerationOptions, *, enable_thinking: bool
) -> GenerationResult:
    """The first sharer alone on its own tokenization of the prompts."""
    sharer, tokenizer = model.sharer_models[0], model.sharer_tokenizers[0]
    if norm.kind != "ids" and tokenizer is None:
        raise ValueError("mode='sharer' on text needs the sharer tokenizer; pass sharer_tokenizer=")
    aligner = model.aligners[0]
    if norm.kind == "ids" and aligner is not None and not aligner.identical:
        raise ValueError("mode='sharer' cannot read receiver token ids of a different vocabulary; pass text")
    rows: list[list[int]] = []
    for p in norm.prompts:
        if norm.kind == "messages":
            rows.append(render_chat(tokenizer, p, enable_thinking=enable_thinking, role="sharer"))
        elif norm.kind == "text":
            rows.append(encode_text(tokenizer, p))
        else:
            rows.append(list(p))
    if any(len(r) == 0 for r in rows):
        raise ValueError("empty prompt: give at least one token")
    limit = model.sharer_specs[0].max_positions
    width = max(len(r) for r in rows)
    if limit is not None and width + opts.max_new_tokens > limit:
        raise ValueError(
            f"prompt of {width} tokens + {opts.max_new_tokens} new tokens exceeds the sharer's context of {limit}; "
            "shorten the prompt or lower max_new_tokens"
        )
    timer = StageTimer(model_device(sharer))
    with timer.stage("total"):
        seqs = generate_plain(sharer, tokenizer, rows, opts, timer=timer, prefill_stage="sharer_prefill")
    timer.seconds.setdefault("fusion", 0.0)
    timer.seconds.setdefault("receiver_prefill", 0.0)
    return GenerationResult(sequences=seqs, texts=None, timings=timer.seconds, prompt_tokens=[len(r) for r in rows])
