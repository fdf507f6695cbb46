"""The "offsets" token-alignment strategy (docs/method.md, "Tokens").

The sharer reads its *own natural* tokenization of the same text; a receiver token reads the sharer token
covering the receiver token's last character (fast tokenizers' character offsets). When several sharer tokens
cover that character (a byte-level split of one character), the last of them is used: it is the one that has
seen the whole character. In a chat, each model renders its own template and only message content is mapped,
character by character where the two templates render a content differently.

:class:`c2c.alignment.tokens.TokenAligner` calls these functions; the rules every strategy shares (specials
by role/string, the sharer's frame of a whole prompt, reads in order) are described in its module.
"""

from __future__ import annotations

import difflib
from bisect import bisect_left
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from .specials import Body
from .utf8 import REPLACEMENT, group_end, group_text
from .vocab import TokInfo

__all__ = ["Rendered", "Target", "align_chat_offsets", "align_ids_offsets", "last_char", "map_offsets", "ordinal"]

Span = tuple[int, int]
Target = Callable[[int], int | None]
"""The sharer id a receiver special token stands for (by role, then by string), or None."""


@dataclass(frozen=True)
class Rendered:
    """One model's chat rendering, encoded without special tokens."""

    text: str
    spans: list[Span]  # character span of each message's content in ``text``
    ids: list[int]
    offsets: list[Span]  # per token, its character span in ``text``


def align_ids_offsets(
    r_ids: list[int], *, receiver: TokInfo, sharer: TokInfo, texts: Mapping[int, str], target: Target
) -> Body:
    """Sharer reads its natural tokenization of the receiver ids' decoded text (``texts``: each plain receiver
    id read mid-text); receiver specials are mapped by role/string (``target``) and inserted in the sharer
    sequence at their place (or dropped when unmapped). No frame is added."""
    r_off: list[Span] = []
    s_ids: list[int] = []
    s_off: list[Span] = []
    fixed_pos: dict[int, int] = {}
    pos = 0
    run: list[str] = []
    run_start = 0

    def flush() -> None:
        nonlocal run, run_start
        text = "".join(run)
        if text:
            enc = sharer.backend.encode(text, add_special_tokens=False)
            s_ids.extend(enc.ids)
            s_off.extend((a + run_start, b + run_start) for a, b in enc.offsets)
        run = []
        run_start = pos

    k = 0
    n = len(r_ids)
    while k < n:
        rid = r_ids[k]
        if rid in receiver.special_ids:
            flush()
            t = target(rid)
            fixed_pos[len(r_off)] = -1 if t is None else len(s_ids)
            if t is not None:
                s_ids.append(t)
                s_off.append((pos, pos))
            r_off.append((pos, pos))
            k += 1
            continue
        end = group_end(receiver, r_ids, k) if REPLACEMENT in texts[rid] else k + 1
        text = texts[rid] if end == k + 1 else group_text(receiver, r_ids, k, end)
        if not text:  # an id that decodes to nothing (beyond the tokenizer's vocabulary): unfused
            fixed_pos[len(r_off)] = -1
        run.append(text)
        r_off.extend([(pos, pos + len(text))] * (end - k))
        pos += len(text)
        k = end
    flush()
    index, one = map_offsets(
        r_ids, r_off, s_ids, s_off, specials=receiver.special_ids, target=target, fixed_pos=fixed_pos
    )
    return s_ids, index, one


def align_chat_offsets(
    r: Rendered, s: Rendered, r_ord: list[int], *, specials: Collection[int], target: Target
) -> tuple[list[int], list[bool]]:
    """``(sharer_index, one_to_one)`` of a chat: each receiver content row reads the sharer's natural
    tokenization of its own rendering (``s``); template rows (``r_ord`` even, see :func:`ordinal`) are not
    fused. A content row never reads a sharer token that reaches into a later message's content than the
    receiver token itself."""
    index = [-1] * len(r.ids)
    one = [False] * len(r.ids)
    cover = _cover(s.offsets, len(s.text))
    for m, ((ra, rb), (sa, sb)) in enumerate(zip(r.spans, s.spans)):
        rows = [k for k, o in enumerate(r_ord) if o == 2 * m + 1]
        if not rows:
            continue
        # Templates may render a content differently (trimmed, transformed): map characters.
        cmap = _char_map(r.text[ra:rb], s.text[sa:sb])
        sub_off: list[Span] = []
        fixed: dict[int, int] = {}
        for j, k in enumerate(rows):
            a, b = r.offsets[k]
            end = _mapped_before(cmap, min(last_char(a, b), rb - 1) - ra)
            if end < 0:
                fixed[j] = -1
                sub_off.append((sa, sa))
                continue
            start = cmap[a - ra] if b > a and 0 <= a - ra < len(cmap) else -1
            start = start if 0 <= start <= end else end
            sub_off.append((sa + start, sa + end + 1))
        sub_idx, sub_one = map_offsets(
            [r.ids[k] for k in rows],
            sub_off,
            s.ids,
            s.offsets,
            specials=specials,
            target=target,
            cover=cover,
            window=(sa, sb),
            fixed_pos=fixed,
        )
        for k, si, o in zip(rows, sub_idx, sub_one):
            # A sharer token reaching into a later message's content than the receiver token reaches
            # (templates that put nothing between two contents) would read ahead: not fused.
            if si >= 0 and max(_touched(s.offsets[si], s.spans), default=m) > max(
                _touched(r.offsets[k], r.spans), default=m
            ):
                si, o = -1, False
            index[k], one[k] = si, o
    return index, one


def map_offsets(
    r_ids: list[int],
    r_off: list[Span],
    s_ids: list[int],
    s_off: list[Span],
    *,
    specials: Collection[int],
    target: Target,
    cover: list[int] | None = None,
    window: Span | None = None,
    fixed_pos: dict[int, int] | None = None,
) -> tuple[list[int], list[bool]]:
    """Map receiver tokens to sharer positions through character spans in one coordinate system.

    A plain receiver token reads the sharer token covering its last character (for an empty span, the
    character before it); when no sharer token covers that character (a normaliser dropped it), the
    nearest covered character before it is used. ``window`` (a character range) restricts the targets.
    A special token (in ``specials``) reads its role/string counterpart (``target``) only where the sharer
    has it *inside the receiver token's own span* (the same ``<unk>`` character, the same ``<|im_end|>``
    text, a BOS both add at the start), else it is not fused: a counterpart found elsewhere would be an
    unrelated sharer row. ``fixed_pos`` (receiver row -> sharer position or -1) overrides rows decided
    beforehand (specials inserted by :func:`align_ids_offsets`). Reads are in order: a row whose target lies
    before one already read (only possible with overlapping sharer offsets) is not fused."""
    n_chars = max([b for _, b in s_off] + [b for _, b in r_off] + [0])
    if cover is None or len(cover) < n_chars:
        cover = _cover(s_off, n_chars)
    lo, hi = window if window is not None else (0, len(cover))
    index: list[int] = []
    one: list[bool] = []
    last = 0
    positions_of: dict[int, list[int]] | None = None
    for k, (rid, (a, b)) in enumerate(zip(r_ids, r_off)):
        if fixed_pos is not None and k in fixed_pos:
            pos = fixed_pos[k]
        elif rid in specials:
            t = target(rid)
            if positions_of is None:
                positions_of = {}
                for p, sid in enumerate(s_ids):
                    positions_of.setdefault(sid, []).append(p)
            pos = -1
            cands = positions_of.get(t, []) if t is not None else []
            for p in cands[bisect_left(cands, last) :]:
                sa, sb = s_off[p]
                if sa > b:
                    break  # offsets only grow from here
                if a <= sa and sb <= b and lo <= sa and sb <= hi:
                    pos = p
                    break
        else:
            c = min(last_char(a, b), hi - 1)
            while c >= lo and c < len(cover) and cover[c] < 0:
                c -= 1
            pos = cover[c] if lo <= c < len(cover) else -1
        if 0 <= pos < last:
            pos = -1
        index.append(pos)
        if pos < 0:
            one.append(False)
        elif (fixed_pos is not None and k in fixed_pos) or rid in specials:
            one.append(True)
        else:
            one.append(tuple(s_off[pos]) == (a, b))
        last = max(last, pos)
    return index, one


def last_char(a: int, b: int) -> int:
    """The character a token stands for: its last one, or the one before an empty span."""
    return b - 1 if b > a else a - 1


def ordinal(c: int, spans: list[Span]) -> int:
    """Segment of character ``c``: 2m+1 inside content m, 2m for template text before content m."""
    done = 0
    for a, b in spans:
        if c >= b:
            done += 1
        elif c >= a:
            return 2 * done + 1
        else:
            break
    return 2 * done


def _cover(s_off: list[Span], n_chars: int) -> list[int]:
    """Per character, the last sharer position whose span contains it (-1: none)."""
    cover = [-1] * n_chars
    for pos, (a, b) in enumerate(s_off):
        for c in range(a, min(b, n_chars)):
            cover[c] = pos
    return cover


def _touched(span: Span, contents: list[Span]) -> set[int]:
    """Indices of the message contents that the character span ``[a, b)`` overlaps."""
    a, b = span
    return {m for m, (ca, cb) in enumerate(contents) if max(a, ca) < min(b, cb)}


def _char_map(content_r: str, content_s: str) -> list[int]:
    """For each character of the receiver's rendered content, the index of the same character in the
    sharer's rendered content (-1: none). Equal or nested contents (templates that trim) map by offset;
    others (templates that transform) by a character diff."""
    if content_r == content_s:
        return list(range(len(content_r)))
    out = [-1] * len(content_r)
    if content_s and content_s in content_r:
        off = content_r.find(content_s)
        out[off : off + len(content_s)] = range(len(content_s))
    elif content_r and content_r in content_s:
        off = content_s.find(content_r)
        out = list(range(off, off + len(content_r)))
    else:
        matcher = difflib.SequenceMatcher(None, content_r, content_s, autojunk=False)
        for i, j, n in matcher.get_matching_blocks():
            out[i : i + n] = range(j, j + n)
    return out


def _mapped_before(cmap: list[int], i: int) -> int:
    """The mapped index of character ``i``, or of the nearest mapped character before it (-1: none)."""
    i = min(i, len(cmap) - 1)
    while i >= 0 and cmap[i] < 0:
        i -= 1
    return cmap[i] if i >= 0 else -1
