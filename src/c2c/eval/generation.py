"""Batched, timed greedy generation with a plain Hugging Face causal LM (the baselines' engine).

The prompt is split exactly as ``C2CModel.generate`` splits it: the prefill stage runs the prompt minus its
last token into a ``DynamicCache``; the decode stage is ``model.generate`` on the full prompt with that cache
(it runs only the uncached last token, then decodes). So "receiver_prefill" and "decode" mean the same work
in every mode, and C2C differs from receiver-only only by its sharer prefill and fusion.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from c2c.eval.latency import StageTimer
from c2c.eval.parsing import strip_thinking

__all__ = [
    "render_chat",
    "encode_chat",
    "left_pad",
    "position_ids",
    "eos_ids",
    "pad_id",
    "generate_ids_timed",
    "generate_timed",
    "cut_at_eos",
]

Messages = list[dict[str, str]]


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: Messages, *, enable_thinking: bool = False) -> str:
    """The chat-template text of ``messages`` with the generation prompt (thinking off where supported)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} ({getattr(tokenizer, 'name_or_path', '')!r}) has no chat "
            "template; the protocol asks every model through its chat template: set tokenizer.chat_template"
        )
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
    )


def encode_chat(
    tokenizer: PreTrainedTokenizerBase, batch: Sequence[Messages], *, enable_thinking: bool = False
) -> list[list[int]]:
    """Token ids of each rendered conversation (the template already holds any BOS)."""
    return [
        tokenizer(render_chat(tokenizer, m, enable_thinking=enable_thinking), add_special_tokens=False)["input_ids"]
        for m in batch
    ]


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """End-of-sequence ids from the model's generation config and the tokenizer."""
    ids: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for tid in ([gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])) + [tokenizer.eos_token_id]:
        if tid is not None and int(tid) not in ids:
            ids.append(int(tid))
    return ids


def left_pad(seqs: Sequence[Sequence[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask``, both ``[B, T]``."""
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("cannot generate from an empty prompt")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` positions of a left-padded mask: ``clamp(cumsum(mask) - 1, min=0)``."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def generate_ids_timed(
    model: PreTrainedModel,
    seqs: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    timer: StageTimer,
    prefill_stage: str,
    decode_stage: str = "decode",
    min_new_tokens: int = 0,
    pad: int = 0,
    eos: Sequence[int] = (),
) -> list[list[int]]:
    """Greedy continuation of each prompt in ``seqs`` (one left-padded batch), as token ids.

    ``prefill_stage`` is charged with the prompt minus its last token, ``decode_stage`` with the rest.
    ``min_new_tokens`` forces output length (latency benchmarks at equal output length); with ``eos``
    empty every row runs to ``max_new_tokens``.

    Returns:
        the new ids of each prompt, cut before its first end-of-sequence token.
    """
    device = next(model.parameters()).device
    ids, mask = left_pad(seqs, pad, device)
    cache = DynamicCache(config=model.config)
    if ids.shape[1] > 1:
        with timer.stage(prefill_stage):
            model(
                input_ids=ids[:, :-1],
                attention_mask=mask[:, :-1],
                position_ids=position_ids(mask)[:, :-1],
                cache=cache,
                use_cache=True,
                logits_to_keep=1,  # the prefill's logits are never read
            )
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens or None,
        do_sample=False,
        eos_token_id=list(eos) or None,
        pad_token_id=pad,
    )
    with timer.stage(decode_stage):
        out = model.generate(input_ids=ids, attention_mask=mask, cache=cache, generation_config=config)
    return cut_at_eos(out[:, ids.shape[1] :], eos)


def generate_timed(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    seqs: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    timer: StageTimer,
    prefill_stage: str,
    decode_stage: str = "decode",
    min_new_tokens: int = 0,
) -> tuple[list[str], list[int]]:
    """:func:`generate_ids_timed` with the tokenizer's padding / EOS, decoded.

    Returns:
        the texts (thinking blocks stripped) and the number of new tokens of each (EOS excluded).
    """
    new = generate_ids_timed(
        model,
        seqs,
        max_new_tokens=max_new_tokens,
        timer=timer,
        prefill_stage=prefill_stage,
        decode_stage=decode_stage,
        min_new_tokens=min_new_tokens,
        pad=pad_id(tokenizer),
        eos=eos_ids(model, tokenizer),
    )
    texts = [strip_thinking(t) for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return texts, [len(n) for n in new]


def cut_at_eos(new: torch.Tensor, eos: Sequence[int]) -> list[list[int]]:
    """Rows of ``new`` ``[B, N]`` up to (excluding) their first EOS; what follows it is padding."""
    eos_set = set(int(e) for e in eos)
    rows = []
    for row in new.tolist():
        cut = next((i for i, t in enumerate(row) if t in eos_set), len(row))
        rows.append(row[:cut])
    return rows
