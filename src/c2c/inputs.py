"""Normalise what users pass to ``generate``/``encode`` (text, chat messages or token ids, single or
batched) into per-prompt, per-sharer token alignments."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch
from torch import Tensor

from c2c.alignment.records import AlignedPrompt
from c2c.alignment.tokens import TokenAligner
from c2c.config import ChatRows
from c2c.hf import Message, check_messages, encode_text, render_chat

__all__ = ["NormalisedInputs", "PromptInput", "align_inputs", "normalise"]

PromptInput = Union[str, Sequence[Message], Sequence[int], Tensor]
Kind = Literal["text", "messages", "ids"]


@dataclass
class NormalisedInputs:
    """Prompts of one kind with a flag saying whether the caller passed a single prompt."""

    kind: Kind
    prompts: list[Any]
    single: bool


def normalise(inputs: Any) -> NormalisedInputs:
    """Classify ``inputs`` as one or many texts, conversations or id sequences.

    Raises:
        TypeError / ValueError naming what was received and what is accepted.
    """
    accepted = (
        "a string, a list of chat messages ({'role', 'content'} dicts), a list of token ids, "
        "a 1-D/2-D LongTensor, or a list of any one of these"
    )
    if isinstance(inputs, str):
        return NormalisedInputs("text", [inputs], True)
    if isinstance(inputs, Tensor):
        if inputs.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"token ids must be an integer tensor, got dtype {inputs.dtype}; use .long()")
        if inputs.dim() == 1:
            return NormalisedInputs("ids", [inputs.tolist()], True)
        if inputs.dim() == 2:
            return NormalisedInputs("ids", [row.tolist() for row in inputs], False)
        raise ValueError(f"token-id tensor must be 1-D or 2-D, got shape {tuple(inputs.shape)}")
    if isinstance(inputs, Sequence) and len(inputs) == 0:
        raise ValueError("empty prompt: give a non-empty text, conversation or list of token ids")
    if not isinstance(inputs, Sequence):
        raise TypeError(f"expected {accepted}; got {type(inputs).__name__} {inputs!r:.80}")
    first = inputs[0]
    if isinstance(first, dict):
        check_messages(inputs)
        return NormalisedInputs("messages", [list(inputs)], True)
    if isinstance(first, (int,)) and not isinstance(first, bool):
        _check_ids(inputs)
        return NormalisedInputs("ids", [list(inputs)], True)
    if isinstance(first, str):
        if not all(isinstance(x, str) for x in inputs):
            raise TypeError("a batch of texts must contain only strings")
        return NormalisedInputs("text", list(inputs), False)
    if isinstance(first, Tensor):
        return NormalisedInputs("ids", [normalise(x).prompts[0] for x in inputs], False)
    if isinstance(first, Sequence):
        if len(first) and isinstance(first[0], dict):
            for conv in inputs:
                check_messages(conv)
            return NormalisedInputs("messages", [list(c) for c in inputs], False)
        for ids in inputs:
            _check_ids(ids)
        return NormalisedInputs("ids", [list(x) for x in inputs], False)
    raise TypeError(f"expected {accepted}; got a list of {type(first).__name__}")


def _check_ids(ids: Sequence[Any]) -> None:
    for x in ids:
        if not isinstance(x, int) or isinstance(x, bool):
            raise TypeError(f"token ids must be ints, got {type(x).__name__} {x!r:.40}")


def align_inputs(
    norm: NormalisedInputs,
    receiver_tokenizer: Any | None,
    aligners: Sequence[TokenAligner | None],
    *,
    enable_thinking: bool = False,
    chat_rows: ChatRows = "content",
) -> list[list[AlignedPrompt]]:
    """Align every prompt to every sharer. ``aligners[k]`` is a ``TokenAligner``, or None for a sharer that
    reads the receiver's ids as they are (same vocabulary, no tokenizers given).

    Messages are rendered through the aligner in the ``chat_rows`` layout (each model's own template with
    content fused, or the reference's one receiver rendering); texts are tokenized with the receiver
    tokenizer's special tokens; ids are taken as receiver ids. Texts and ids are whole prompts: each sharer
    reads them framed by its own special tokens (e.g. its BOS), see ``c2c.alignment.specials``.
    """
    out: list[list[AlignedPrompt]] = []
    for prompt in norm.prompts:
        per_sharer: list[AlignedPrompt] = []
        receiver_ids: list[int] | None = None
        for aligner in aligners:
            if aligner is None:
                if receiver_ids is None:
                    receiver_ids = _receiver_ids(norm.kind, prompt, receiver_tokenizer, enable_thinking)
                per_sharer.append(AlignedPrompt.identity(receiver_ids))
            elif norm.kind == "messages":
                per_sharer.append(
                    aligner.align_messages(
                        prompt, add_generation_prompt=True, enable_thinking=enable_thinking, layout=chat_rows
                    )
                )
            elif norm.kind == "text":
                per_sharer.append(aligner.align_text(prompt))
            else:
                # A prompt given as ids is whole: the sharer reads it from its first position, so it gets
                # its own leading specials (BOS) even when the receiver's tokenizer adds none.
                per_sharer.append(aligner.align_ids(list(prompt), sharer_specials=True))
        out.append(per_sharer)
    return out


def _receiver_ids(kind: Kind, prompt: Any, tokenizer: Any | None, enable_thinking: bool) -> list[int]:
    if kind == "ids":
        return list(prompt)
    if tokenizer is None:
        raise ValueError(f"{kind} prompts need a receiver tokenizer; pass receiver_tokenizer= or give token ids")
    if kind == "messages":
        return render_chat(tokenizer, prompt, enable_thinking=enable_thinking, role="receiver")
    return encode_text(tokenizer, prompt)
