"""The one record of a token alignment: what the receiver reads, what one sharer reads, and which sharer
position each receiver token's rows read (``AlignedPrompt``), with counts over it (``AlignmentStats``).

Every producer (the aligner, the reference layout, the identity of a shared vocabulary, rows read back from a
rendered training set) and every consumer (``c2c.batch.collate``) uses this type.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

__all__ = ["AlignedPrompt", "AlignmentStats"]


@dataclass(frozen=True)
class AlignmentStats:
    """Counts over the receiver tokens of one aligned prompt."""

    n_receiver_tokens: int
    n_sharer_tokens: int
    n_fused: int
    """Receiver tokens with a sharer position (``sharer_index >= 0``)."""
    n_one_to_one: int
    """Fused receiver tokens whose sharer counterpart is exactly one token: the re-encoding is a single sharer
    token ("longest"/"first"), the sharer token has exactly the same character span ("offsets"), or the id
    is copied (identical vocabularies, specials mapped by role/string)."""
    n_special: int
    """Receiver special tokens outside template rows."""
    n_template: int
    """Receiver chat-template rows (never fused); 0 outside :meth:`TokenAligner.align_messages`."""
    n_unmapped: int
    """Receiver content tokens (not template rows) left unfused."""

    @property
    def n_content(self) -> int:
        return self.n_receiver_tokens - self.n_template

    @property
    def share_one_to_one(self) -> float:
        """``n_one_to_one / n_content`` (0.0 for an empty prompt)."""
        return self.n_one_to_one / self.n_content if self.n_content else 0.0


@dataclass
class AlignedPrompt:
    """One prompt as read by the receiver and by one sharer."""

    receiver_ids: list[int]
    sharer_ids: list[int]
    sharer_index: list[int]
    """``len == len(receiver_ids)``: sharer position read for each receiver token, ``-1`` = not fused."""
    stats: AlignmentStats | None = None
    """Counts over the receiver tokens (None for an alignment read back from a rendered dataset)."""

    @classmethod
    def identity(cls, receiver_ids: list[int], *, special_ids: Collection[int] = ()) -> AlignedPrompt:
        """The alignment of a sharer that reads exactly the receiver's ids: every row reads its own position.

        ``special_ids`` (the receiver's special ids) only feeds ``stats.n_special``."""
        ids = [int(i) for i in receiver_ids]
        n = len(ids)
        specials = set(special_ids)
        stats = AlignmentStats(
            n_receiver_tokens=n,
            n_sharer_tokens=n,
            n_fused=n,
            n_one_to_one=n,
            n_special=sum(1 for i in ids if i in specials),
            n_template=0,
            n_unmapped=0,
        )
        return cls(receiver_ids=ids, sharer_ids=list(ids), sharer_index=list(range(n)), stats=stats)

    @property
    def fuse_mask(self) -> list[bool]:
        return [i >= 0 for i in self.sharer_index]

    def __len__(self) -> int:
        return len(self.receiver_ids)
