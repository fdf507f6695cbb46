"""The special tokens a tokenizer puts around every text it encodes, and the sharer's frame of a whole prompt.

A tokenizer's post-processor adds the same special tokens around any text encoded with
``add_special_tokens=True``: Llama's BOS in front, BERT's ``[CLS]`` in front and ``[SEP]`` behind, nothing
for Qwen. A model was trained on sequences that carry its own such frame, and a causal model computes every
later row from it: a Llama-style sharer that reads a prompt without its BOS reads an input it never saw.

"longest"/"first" build the sharer's sequence from per-token pieces, so for a whole prompt the frame is put
back explicitly (:func:`frame_prompt`): the sharer's sequence starts with the *sharer's* leading specials and
ends with its trailing ones, exactly as the sharer's own tokenizer would frame the text (and as "offsets"
reads it, from the sharer's natural encoding). Frame rows no receiver token reads are prefilled, never fused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Body", "frame_of", "frame_prompt", "receiver_frame"]

Body = tuple[list[int], list[int], list[bool]]
"""An alignment under construction: ``(sharer_ids, sharer_index, one_to_one)``, the last two per receiver
token."""

_PROBES = ("a", "hello world", "0")


def frame_of(backend: Any) -> tuple[list[int], list[int]]:
    """``(leading, trailing)`` ids the ``tokenizers.Tokenizer`` ``backend`` adds around any single text.

    Found by encoding a probe with and without special tokens: what the post-processor adds in front of and
    behind the plain encoding (``([bos], [])`` for Llama, ``([cls], [sep])`` for BERT, ``([], [])`` for Qwen).
    """
    for probe in _PROBES:
        framed = list(backend.encode(probe, add_special_tokens=True).ids)
        plain = list(backend.encode(probe, add_special_tokens=False).ids)
        if not plain:
            continue
        for i in range(len(framed) - len(plain) + 1):
            if framed[i : i + len(plain)] == plain:
                return framed[:i], framed[i + len(plain) :]
    return list(backend.encode("", add_special_tokens=True).ids), []  # no probe encodes: all in front


def receiver_frame(r_ids: list[int], lead: list[int], trail: list[int]) -> tuple[int, int]:
    """How many of ``r_ids``' first and last tokens are the receiver tokenizer's own frame (``lead`` in front,
    ``trail`` behind; 0 where the ids do not carry it)."""
    n = len(r_ids)
    head = len(lead) if lead and r_ids[: len(lead)] == lead else 0
    tail = len(trail) if trail and n - head >= len(trail) and r_ids[n - len(trail) :] == trail else 0
    return head, tail


def frame_prompt(
    r_ids: list[int],
    head: int,
    tail: int,
    body: Body,
    s_lead: list[int],
    s_trail: list[int],
    target: Callable[[int], int | None],
) -> Body:
    """Put the sharer's own frame around an aligned prompt.

    Args:
        r_ids: every receiver id; its first ``head`` and last ``tail`` are the receiver tokenizer's frame.
        body: the alignment of ``r_ids[head : len(r_ids) - tail]`` (the receiver's frame left out).
        s_lead / s_trail: the sharer tokenizer's own leading / trailing specials (:func:`frame_of`).
        target: the sharer id a receiver special stands for (by role, then string), or None.

    Returns:
        The alignment of all of ``r_ids``: sharer ids ``s_lead + body + s_trail``, body positions shifted
        past ``s_lead``. A receiver frame token reads its counterpart in the sharer's frame on the same side
        (in order), else it is not fused; the sharer's frame is never taken from the receiver's (a BOS the
        sharer does not add itself is not read). When the receiver ids carry no frame on a side and the
        body already starts (ends) with the sharer's frame there, e.g. a receiver BOS given explicitly that
        maps to the sharer's by role, it is not added twice.
    """
    b_ids, b_index, b_one = body
    lead = s_lead if head or b_ids[: len(s_lead)] != s_lead else []
    trail = s_trail if tail or (s_trail and b_ids[len(b_ids) - len(s_trail) :] != s_trail) else []
    shift = len(lead)
    head_index = _read_frame(r_ids[:head], lead, 0, target)
    tail_index = _read_frame(r_ids[len(r_ids) - tail :] if tail else [], trail, shift + len(b_ids), target)
    index = [*head_index, *(i + shift if i >= 0 else -1 for i in b_index), *tail_index]
    one = [*(i >= 0 for i in head_index), *b_one, *(i >= 0 for i in tail_index)]
    return [*lead, *b_ids, *trail], index, one


def _read_frame(rows: list[int], frame: list[int], offset: int, target: Callable[[int], int | None]) -> list[int]:
    """Positions (``offset`` + place in ``frame``) the receiver frame ``rows`` read, in order; -1 = none."""
    out: list[int] = []
    cursor = 0
    for rid in rows:
        t = target(rid)
        pos = next((p for p in range(cursor, len(frame)) if frame[p] == t), -1) if t is not None else -1
        out.append(offset + pos if pos >= 0 else -1)
        if pos >= 0:
            cursor = pos + 1
    return out
