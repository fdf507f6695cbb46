"""Byte-level receiver pieces that decode to partial UTF-8 (``U+FFFD``), for every alignment strategy.

A byte-level tokenizer may split one character's bytes over several tokens; none of them decodes to text on
its own. Consecutive receiver tokens are grouped until their joint decoding is complete (at most
:data:`MAX_GROUP` tokens) and the group is aligned as one text (see :mod:`c2c.alignment.tokens`).
"""

from __future__ import annotations

from .vocab import TokInfo

__all__ = ["MAX_GROUP", "REPLACEMENT", "group_end", "group_text"]

MAX_GROUP = 8
REPLACEMENT = "\ufffd"


def group_text(r: TokInfo, r_ids: list[int], k: int, end: int) -> str:
    """Text of the receiver tokens ``r_ids[k:end]`` read mid-text."""
    parts = [r.token_bytes(i) for i in r_ids[k:end]]
    if all(p is not None for p in parts):
        return b"".join(parts).decode("utf-8", errors="replace")  # type: ignore[arg-type]
    return r.decode_in_context([r_ids[k:end]])[0]


def group_end(r: TokInfo, r_ids: list[int], k: int) -> int:
    """End (exclusive) of the shortest run ``r_ids[k:end]`` of plain tokens whose joint decoding has no
    U+FFFD; ``k + 1`` when there is none within :data:`MAX_GROUP` tokens."""
    stop = min(len(r_ids), k + MAX_GROUP)
    first = r.token_bytes(r_ids[k])
    if first is not None:  # byte-level: complete UTF-8 is a property of the bytes, no decoding needed
        buf = first
        for end in range(k + 1, stop + 1):
            if end > k + 1:
                more = r.token_bytes(r_ids[end - 1])
                if more is None:
                    break
                buf += more
            try:
                buf.decode("utf-8")
                return end
            except UnicodeDecodeError:
                continue
        return k + 1
    for end in range(k + 2, stop + 1):
        if r_ids[end - 1] in r.special_ids:
            break
        if REPLACEMENT not in r.decode_in_context([r_ids[k:end]])[0]:
            return end
    return k + 1
