"""Chat rendering with a tokenizer's own template, and where each message's content lands in it.

Token alignment fuses message content only; template text (role headers, markers, generation prompt) is
never fused. :func:`render_chat` returns the rendered prompt and the character span of every message's
content, which tokenizers' offsets then turn into content / template rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from transformers import PreTrainedTokenizerBase

__all__ = ["FALLBACK_CHAT_TEMPLATE", "RenderedChat", "normalise_messages", "render_chat"]

FALLBACK_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ message['role'] + ': ' + (message['content'] or '') + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'assistant: ' }}{%- endif -%}"
)
"""Plain ``role: content`` rendering used for a tokenizer that has no chat template."""


class RenderedChat(NamedTuple):
    text: str
    """The prompt as the template renders it."""
    content_spans: list[tuple[int, int]]
    """Per message, the ``[start, end)`` character span of its content in ``text``."""


def normalise_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``messages`` with ``None`` content as ``""``; rejects non-text content clearly."""
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise TypeError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
        content = m.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise TypeError(
                f"message {i} has non-string content ({type(content).__name__}); token alignment supports "
                "text content only: join the text parts into one string"
            )
        out.append({**m, "content": content})
    return out


def _sentinel(i: int) -> str:
    # Private-use code points only: no template trims, escapes or otherwise touches them, and no real
    # content contains them.
    return "\ue000" + chr(0xF0000 + i) + "\ue001"


def render_chat(
    tok: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    enable_thinking: bool = False,
    name: str = "tokenizer",
) -> RenderedChat:
    """Render ``messages`` with the tokenizer's own chat template (:data:`FALLBACK_CHAT_TEMPLATE` when it
    has none) and locate each message's content in the text.

    Spans come from a second rendering with sentinel contents, which fixes the template pieces around each
    content; the real rendering is then matched piece by piece, accepting contents the template stripped
    or transformed. When a template transforms content or its own text depends on the content, one more
    rendering per message (only that content replaced) locates the contents instead. ``name`` ("receiver", "sharer") only labels errors. Raises
    ``ValueError`` when the template does not render a message's content at all."""
    if len(messages) >= 0xFFFE:
        raise ValueError(f"{len(messages)} messages: at most 65533 can be aligned in one chat")
    messages = normalise_messages(messages)
    template = tok.chat_template if isinstance(tok.chat_template, str) and tok.chat_template else FALLBACK_CHAT_TEMPLATE
    kwargs = dict(
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        enable_thinking=enable_thinking,
        chat_template=template,
    )

    def render(msgs: list[dict[str, Any]]) -> str:
        return tok.apply_chat_template(msgs, **kwargs)

    real = render(messages)
    skel = render([{**m, "content": _sentinel(i)} for i, m in enumerate(messages)])
    pieces: list[str] = []
    rest = skel
    for i in range(len(messages)):
        head, sep, rest = rest.partition(_sentinel(i))
        if not sep:
            raise ValueError(
                f"the {name} chat template does not render message {i}'s content verbatim, so its content "
                "cannot be located for fusion; use align_text() on a rendered prompt instead"
            )
        pieces.append(head)
    pieces.append(rest)

    spans = _match_pieces(real, pieces, [m["content"] for m in messages])
    if spans is None:
        spans = _substitution_spans(real, render, messages)
    return RenderedChat(real, spans)


def _match_pieces(real: str, pieces: list[str], contents: list[str]) -> list[tuple[int, int]] | None:
    """Exact path: ``real`` is the template pieces with each content (possibly stripped) between them.
    None otherwise (content transformed, or template text that depends on the content)."""
    if not real.startswith(pieces[0]):
        return None
    spans: list[tuple[int, int]] = []
    cursor = len(pieces[0])
    for i, content in enumerate(contents):
        nxt, last = pieces[i + 1], i + 1 == len(contents)
        end = None
        for cand in dict.fromkeys((content, content.strip(), content.lstrip(), content.rstrip())):
            stop = cursor + len(cand)
            if real.startswith(cand, cursor) and (real[stop:] == nxt if last else real.startswith(nxt, stop)):
                end = stop
                break
        if end is None:
            return None
        spans.append((cursor, end))
        cursor = end + len(nxt)
    return spans if cursor == len(real) else None


def _substitution_spans(real: str, render: Callable[[list[dict[str, Any]]], str], messages: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Fallback when a template transforms content (``| upper``) or its text depends on the content (Qwen3
    turns an assistant turn's ``<think>...</think>`` into its own markup): render once more per message
    with only that message's content replaced by a sentinel. What lies between the common prefix and the
    common suffix of that rendering and the real one is the message's content as rendered (with any
    template text that changed along with it)."""
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, m in enumerate(messages):
        other = render([*messages[:i], {**m, "content": _sentinel(i)}, *messages[i + 1 :]])
        pre = _common_prefix(real, other)
        suf = _common_prefix(real[::-1], other[::-1])
        a = max(pre, cursor)
        b = max(len(real) - suf, a)
        spans.append((a, b))
        cursor = b
    return spans


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo
