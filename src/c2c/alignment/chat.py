"""Chat rendering with a tokenizer's own template, and where each message's content lands in it.

Token alignment fuses message content only; template text (role headers, markers, generation prompt) is
never fused. :func:`render_chat` returns the rendered prompt and the character span of every message's
content, which tokenizers' offsets then turn into content / template rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from transformers import PreTrainedTokenizerBase

__all__ = ["RenderedChat", "chat_template_of", "check_text", "normalise_messages", "render_chat"]


class RenderedChat(NamedTuple):
    text: str
    """The prompt as the template renders it."""
    content_spans: list[tuple[int, int]]
    """Per message, the ``[start, end)`` character span of its content in ``text``."""


def check_text(text: str, where: str) -> None:
    """Refuse a string that is not valid Unicode text (a lone surrogate, e.g. from a bad JSON escape): the
    tokenizers cannot encode it and would fail with an unclear TypeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{where} contains a lone surrogate (U+{ord(text[exc.start]):04X}) at character {exc.start}, which is "
            "not valid Unicode text; fix the source, or clean it with "
            "text.encode('utf-8', 'replace').decode('utf-8')"
        ) from None


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
        check_text(content, f"message {i}'s content")
        out.append({**m, "content": content})
    return out


def chat_template_of(tok: PreTrainedTokenizerBase, name: str = "tokenizer") -> str:
    """The tokenizer's chat template; a clear ``ValueError`` when it has none.

    Chat messages need a template everywhere in c2c (no silent ``role: content`` rendering): a model
    reads a conversation the way its template lays it out, or is given plain text."""
    template = getattr(tok, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one, as transformers picks it
        template = template.get("default")
    if not isinstance(template, str) or not template:
        label = getattr(tok, "name_or_path", "") or type(tok).__name__
        raise ValueError(
            f"the {name} tokenizer ({label}) has no chat template; pass plain text (the fuser's "
            "prompt_format='text') or set tokenizer.chat_template"
        )
    return template


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
    """Render ``messages`` with the tokenizer's own chat template and locate each message's content in the
    text (a tokenizer without a chat template is refused, see :func:`chat_template_of`).

    Spans come from a second rendering with sentinel contents, which fixes the template pieces around each
    content; the real rendering is then matched piece by piece, accepting contents the template stripped
    or transformed. When a template transforms content or its own text depends on the content, one more
    rendering per message (only that content replaced) locates the contents instead. ``name`` ("receiver",
    "sharer") only labels errors. Raises
    ``ValueError`` when the template does not render a message's content at all."""
    if len(messages) >= 0xFFFE:
        raise ValueError(f"{len(messages)} messages: at most 65533 can be aligned in one chat")
    messages = normalise_messages(messages)
    template = chat_template_of(tok, name)

    def render(msgs: list[dict[str, Any]]) -> str:
        text = tok.apply_chat_template(
            msgs,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            enable_thinking=enable_thinking,
            chat_template=template,
        )
        return str(text)

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


def _substitution_spans(
    real: str, render: Callable[[list[dict[str, Any]]], str], messages: list[dict[str, Any]]
) -> list[tuple[int, int]]:
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
