"""Chat styles of the local test tokenizers: chat templates modelled on real families and the special
tokens that go with each (see :mod:`c2c.testing.tokenizers`).

- ``"chatml"`` (Qwen-like): ``<|im_start|>role\\ncontent<|im_end|>\\n``; no BOS is added on encode;
  ``enable_thinking=False`` appends an empty ``<think>\\n\\n</think>\\n\\n`` block after the generation prompt.
- ``"llama3"`` (Llama-3-like): ``<|begin_of_text|><|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|>``;
  BOS is added on encode; ``enable_thinking`` is accepted and ignored.
- ``"qwen3"`` / ``"qwen25"``: ChatML as Qwen3 writes it (the last assistant turn and, with thinking off, the
  generation prompt carry an empty think block) and as Qwen2.5 writes it (a default system prompt when the
  conversation has none).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "BERT_SPECIAL_TOKENS",
    "CHAT_TEMPLATES",
    "SpecialTokens",
    "default_special_tokens",
    "resolve_special_tokens",
    "template_key",
]

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif -%}"
    "{%- endif -%}"
)
"""Qwen-like ChatML template (Qwen3's ``enable_thinking=False`` convention)."""

LLAMA3_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- (message['content'] or '') | trim -}}"
    "{{ '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif -%}"
)
"""Llama-3-like template: BOS in the template, header tokens, content trimmed (as Llama 3 does)."""

QWEN3_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' and loop.last -%}"
    "{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif -%}"
    "{%- endif -%}"
)
"""Qwen3-like: the final assistant turn carries an empty think block, so an instruction rendered with
``enable_thinking=False`` is a prefix of the rendered conversation."""

QWEN25_TEMPLATE = (
    "{%- if not messages or messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
"""Qwen2.5-like: ChatML with a default system prompt when the conversation has none, no thinking."""

CHAT_TEMPLATES: dict[str, str] = {
    "chatml": CHATML_TEMPLATE,
    "llama3": LLAMA3_TEMPLATE,
    "qwen3": QWEN3_TEMPLATE,
    "qwen25": QWEN25_TEMPLATE,
}
"""Named chat templates; ``"default"`` means ``"chatml"``."""


@dataclass(frozen=True)
class SpecialTokens:
    """Special-token strings by role. ``extra`` are further special tokens (template markers);
    ``added`` are non-special added tokens (kept when decoding with ``skip_special_tokens``)."""

    bos: str
    eos: str
    pad: str
    unk: str
    extra: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    add_bos: bool = False
    """Whether encoding with ``add_special_tokens=True`` prepends BOS."""

    def all_special(self) -> list[str]:
        out: list[str] = []
        for tok in (self.bos, self.eos, self.pad, self.unk, *self.extra):
            if tok not in out:
                out.append(tok)
        return out


_SPECIALS: dict[str | None, SpecialTokens] = {
    "chatml": SpecialTokens(
        bos="<|startoftext|>",
        eos="<|im_end|>",
        pad="<|endoftext|>",
        unk="<|unk|>",
        extra=("<|im_start|>",),
        added=("<think>", "</think>"),
        add_bos=False,
    ),
    "llama3": SpecialTokens(
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad="<|finetune_right_pad_id|>",
        unk="<|unk|>",
        extra=("<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"),
        add_bos=True,
    ),
    None: SpecialTokens(bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", add_bos=True),
}
_SPECIALS["qwen3"] = _SPECIALS["qwen25"] = _SPECIALS["chatml"]

BERT_SPECIAL_TOKENS = SpecialTokens(bos="[CLS]", eos="[SEP]", pad="[PAD]", unk="[UNK]", extra=("[MASK]",), add_bos=True)
"""BERT's special tokens (``[CLS]`` stands in the BOS role, ``[SEP]`` in the EOS role)."""


def default_special_tokens(chat_template: str | None = "default") -> SpecialTokens:
    """The special tokens that go with a named chat template (``None``: ``<s>``, ``</s>``, ``<pad>``, ``<unk>``).

    A custom Jinja template string gets the ``None`` set."""
    key = template_key(chat_template)
    return _SPECIALS[key if key in _SPECIALS else None]


def template_key(chat_template: str | None) -> str | None:
    """``chat_template`` with ``"default"`` resolved to ``"chatml"``."""
    if chat_template == "default":
        return "chatml"
    return chat_template


def resolve_special_tokens(
    chat_template: str | None, special_tokens: SpecialTokens | Mapping[str, str] | None
) -> SpecialTokens:
    """The special tokens to build with: ``special_tokens`` as given, or the template's default set with the
    roles a mapping names overridden."""
    base = default_special_tokens(chat_template)
    if special_tokens is None:
        return base
    if isinstance(special_tokens, SpecialTokens):
        return special_tokens
    unknown = set(special_tokens) - {"bos", "eos", "pad", "unk"}
    if unknown:
        raise ValueError(f"special_tokens keys must be bos/eos/pad/unk, got {sorted(unknown)}")
    return SpecialTokens(
        bos=special_tokens.get("bos", base.bos),
        eos=special_tokens.get("eos", base.eos),
        pad=special_tokens.get("pad", base.pad),
        unk=special_tokens.get("unk", base.unk),
        extra=base.extra,
        added=base.added,
        add_bos=base.add_bos,
    )
