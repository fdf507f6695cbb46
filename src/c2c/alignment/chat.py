"""Chat rendering with a tokenizer's own template, and where each message's content lands in it.

Token alignment fuses message content only; template text (role headers, markers, generation prompt) is
never fused. :func:`render_chat` returns the rendered prompt and the character span of every message's
content, which tokenizers' offsets then turn into content / template rows.
"""

from __future__ import annotations

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
    # Private-use code points: no template trims, escapes or otherwise touches them.
    return f"\ue000C2C{i}\ue001"


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
    or transformed. ``name`` ("receiver", "sharer") only labels errors. Raises ``ValueError`` when the
    template does not render some content where the sentinel rendering put it."""
    messages = normalise_messages(messages)
    template = tok.chat_template if isinstance(tok.chat_template, str) and tok.chat_template else FALLBACK_CHAT_TEMPLATE
    kwargs = dict(
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        enable_thinking=enable_thinking,
        chat_template=template,
    )
    real = tok.apply_chat_template(messages, **kwargs)
    skel = tok.apply_chat_template([{**m, "content": _sentinel(i)} for i, m in enumerate(messages)], **kwargs)
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

    if not real.startswith(pieces[0]):
        raise _render_error(name)
    spans: list[tuple[int, int]] = []
    cursor = len(pieces[0])
    for i, m in enumerate(messages):
        nxt, last = pieces[i + 1], i + 1 == len(messages)
        content = m["content"]
        end = None
        for cand in dict.fromkeys((content, content.strip(), content.lstrip(), content.rstrip())):
            stop = cursor + len(cand)
            if real.startswith(cand, cursor) and (
                real[stop:] == nxt if last else real.startswith(nxt, stop)
            ):
                end = stop
                break
        if end is None:  # the template transformed the content: it spans up to the next template piece
            end = len(real) - len(nxt) if last else real.find(nxt, cursor)
            if end < cursor or (last and not real.endswith(nxt)):
                raise _render_error(name)
        spans.append((cursor, end))
        cursor = end + len(nxt)
    if cursor != len(real):
        raise _render_error(name)
    return RenderedChat(real, spans)


def _render_error(name: str) -> ValueError:
    return ValueError(
        f"could not locate message contents in the {name}'s rendered chat template (the template changes "
        "its text depending on the content); use align_text() on a rendered prompt instead"
    )
