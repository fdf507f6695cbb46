"""The evaluation's single-model answers: chat prompts through :func:`c2c.generation.generate_plain`.

The prompt is split exactly as ``C2CModel.generate`` splits it (prefill the prompt minus its last token, then
the same decode loop), so "receiver_prefill" and "decode" mean the same work in every mode and C2C differs
from receiver-only only by its sharer prefill and fusion.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from c2c.config import PromptFormat
from c2c.eval.parsing import strip_thinking
from c2c.generation import GenerationOptions, generate_plain
from c2c.hf import Message, StageTimer, encode_text, render_chat

__all__ = ["Messages", "encode_chat", "encode_prompts", "generate_timed", "plain_text"]

Messages = list[Message]


def encode_chat(
    tokenizer: PreTrainedTokenizerBase, batch: Sequence[Messages], *, enable_thinking: bool = False
) -> list[list[int]]:
    """Token ids of each conversation in the tokenizer's chat template (the template already holds any BOS)."""
    return [render_chat(tokenizer, m, enable_thinking=enable_thinking) for m in batch]


def plain_text(messages: Messages) -> str:
    """A one-question conversation as plain text: the system prompt (if any), a blank line, the user message.
    (Plain-text prompting is for fusers trained without a chat template, whose prompts have no turns.)"""
    return "\n\n".join(str(m["content"]) for m in messages if m["role"] in ("system", "user"))


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    batch: Sequence[Messages],
    *,
    prompt_format: PromptFormat,
    enable_thinking: bool = False,
) -> list[list[int]]:
    """Token ids of each conversation, rendered the way ``prompt_format`` says (chat template or plain text)."""
    if prompt_format == "text":
        return [encode_text(tokenizer, plain_text(m)) for m in batch]
    return encode_chat(tokenizer, batch, enable_thinking=enable_thinking)


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
    """Greedy answers of one model to token-id prompts, timed into ``timer``.

    Returns:
        the texts (thinking blocks stripped) and the number of new tokens of each (EOS excluded).
    """
    new = generate_plain(
        model,
        tokenizer,
        seqs,
        GenerationOptions(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens),
        timer=timer,
        prefill_stage=prefill_stage,
        decode_stage=decode_stage,
    )
    texts = [strip_thinking(t) for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return texts, [len(n) for n in new]
