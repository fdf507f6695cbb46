"""Padded tensors for one C2C forward or generate call.

Layout: every row's *prefix* (the prompt minus its last token at generation, the instruction minus its last
token in training) is left-padded so that all prefixes end at column ``prefix_len``; the rest (the last
prompt token, then the response in training) follows, right-padded. The receiver prefills
``[0, prefix_len)``, the fuser rewrites those rows, the receiver runs the rest on the edited cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from c2c.alignment.records import AlignedPrompt

__all__ = ["C2CBatch", "collate"]


@dataclass
class C2CBatch:
    """Inputs of :meth:`c2c.model.C2CModel.forward` and of generation.

    Attributes:
        input_ids: ``[B, T]`` receiver ids.
        attention_mask: ``[B, T]`` 1 for real tokens.
        prefix_len: ``P``; columns ``[0, P)`` are prefilled and fused, column ``P`` is the last prompt token.
        fuse_mask: ``[B, P]`` bool, rows the fuser rewrites (never padding, template rows or the last
            prompt token).
        sharer_input_ids: per sharer ``[B, Ts]``, left-padded.
        sharer_attention_mask: per sharer ``[B, Ts]``.
        sharer_index: per sharer ``[B, P + 1]``: the sharer column whose rows receiver column ``c`` reads
            (``alignment_shift`` applied), -1 = none. Columns ``[0, P)`` drive prompt fusion; column ``P``
            (the last prompt token, shift 0) is fused only by ``include_response``.
        labels: ``[B, T]`` target ids on response columns, -100 elsewhere (training only).
    """

    input_ids: Tensor
    attention_mask: Tensor
    prefix_len: int
    fuse_mask: Tensor
    sharer_input_ids: list[Tensor]
    sharer_attention_mask: list[Tensor]
    sharer_index: list[Tensor]
    labels: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> C2CBatch:
        return replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            fuse_mask=self.fuse_mask.to(device),
            sharer_input_ids=[t.to(device) for t in self.sharer_input_ids],
            sharer_attention_mask=[t.to(device) for t in self.sharer_attention_mask],
            sharer_index=[t.to(device) for t in self.sharer_index],
            labels=None if self.labels is None else self.labels.to(device),
        )


def collate(
    alignments: Sequence[Sequence[AlignedPrompt]],
    *,
    pad_id: int,
    sharer_pad_ids: Sequence[int],
    responses: Sequence[Sequence[int]] | None = None,
    alignment_shift: int = 0,
) -> C2CBatch:
    """Build a :class:`C2CBatch`.

    Args:
        alignments: ``alignments[i][k]`` aligns prompt ``i`` (or training instruction ``i``) to sharer ``k``;
            all ``k`` share the same ``receiver_ids``.
        pad_id / sharer_pad_ids: padding ids of the receiver and of each sharer.
        responses: training only, the response ids of each example (labels cover exactly these).
        alignment_shift: receiver slot ``j`` reads the sharer rows aligned to receiver token ``j + shift``
            (0 = the paper; 1 = the last fused slot carries the sharer's final-prompt-token rows).
    """
    if not alignments:
        raise ValueError("empty batch: give at least one prompt")
    n_sharers = len(alignments[0])
    if len(sharer_pad_ids) != n_sharers:
        raise ValueError(f"{n_sharers} sharer alignments per prompt but {len(sharer_pad_ids)} sharer pad ids")
    prompts = [list(a[0].receiver_ids) for a in alignments]
    for i, ids in enumerate(prompts):
        if len(ids) == 0:
            raise ValueError(f"prompt {i} is empty after tokenization; give at least one token")
    resp = [list(r) for r in responses] if responses is not None else [[] for _ in prompts]
    if len(resp) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(resp)} responses")

    b = len(prompts)
    prefix_len = max(len(p) for p in prompts) - 1
    tail_len = max(1 + len(r) for r in resp)
    total = prefix_len + tail_len
    input_ids = torch.full((b, total), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((b, total), dtype=torch.long)
    labels = torch.full((b, total), -100, dtype=torch.long) if responses is not None else None
    offsets = []
    for i, (p, r) in enumerate(zip(prompts, resp)):
        off = prefix_len - (len(p) - 1)  # left padding of row i
        offsets.append(off)
        seq = p + r
        input_ids[i, off : off + len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[i, off : off + len(seq)] = 1
        if labels is not None and r:
            labels[i, off + len(p) : off + len(seq)] = torch.tensor(r, dtype=torch.long)

    s_ids, s_mask, s_index = [], [], []
    for k in range(n_sharers):
        seqs = [alignments[i][k].sharer_ids for i in range(b)]
        width = max(len(s) for s in seqs)
        ids_k = torch.full((b, width), int(sharer_pad_ids[k]), dtype=torch.long)
        mask_k = torch.zeros((b, width), dtype=torch.long)
        index_k = torch.full((b, prefix_len + 1), -1, dtype=torch.long)
        for i in range(b):
            a = alignments[i][k]
            if list(a.receiver_ids) != prompts[i]:
                raise ValueError(f"prompt {i}: sharer {k} alignment was built for different receiver ids")
            n = len(prompts[i])
            if len(a.sharer_index) != n:
                raise ValueError(f"prompt {i}: sharer_index has {len(a.sharer_index)} entries for {n} tokens")
            bad = [j for j in a.sharer_index if j >= len(a.sharer_ids)]
            if bad:
                raise ValueError(f"prompt {i}: sharer_index {bad[0]} is beyond the {len(a.sharer_ids)} sharer ids")
            s_off = width - len(a.sharer_ids)
            if a.sharer_ids:
                ids_k[i, s_off:] = torch.tensor(a.sharer_ids, dtype=torch.long)
                mask_k[i, s_off:] = 1
            for j in range(n):
                src = j + alignment_shift
                if src < n and a.sharer_index[src] >= 0:
                    index_k[i, offsets[i] + j] = s_off + a.sharer_index[src]
        s_ids.append(ids_k)
        s_mask.append(mask_k)
        s_index.append(index_k)
    # The last prompt token (column P) is never fused by prompt fusion.
    fuse_mask = torch.stack([ix[:, :prefix_len] >= 0 for ix in s_index]).any(0)
    return C2CBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        prefix_len=prefix_len,
        fuse_mask=fuse_mask,
        sharer_input_ids=s_ids,
        sharer_attention_mask=s_mask,
        sharer_index=s_index,
        labels=labels,
    )
