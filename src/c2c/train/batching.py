"""Batching for training: the epoch plan (which rows each process reads per micro-batch), the collator that
turns rendered rows into a :class:`c2c.batch.C2CBatch`, and the loader that runs them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from c2c.alignment.records import AlignedPrompt
from c2c.batch import C2CBatch, collate
from c2c.hf import pad_token_id
from c2c.model import C2CModel

__all__ = ["TrainCollator", "count_response_tokens", "epoch_batches", "micro_batch_loader"]


def epoch_batches(
    n: int, *, batch_size: int, world_size: int, rank: int, seed: int, epoch: int, shuffle: bool = True
) -> list[list[int]]:
    """This rank's micro-batches (row indices) of one epoch.

    Global micro-batch ``g`` is rows ``perm[g*GB:(g+1)*GB]`` with ``GB = batch_size * world_size``; rank
    ``r`` takes the r-th of ``world_size`` near-equal contiguous parts of it. The split depends only on
    the global batch, so one process with ``batch_size * world_size`` sees exactly the same rows per step.
    A last global batch with fewer rows than processes is dropped (a process would have nothing to do).
    """
    if shuffle:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    else:
        perm = list(range(n))
    gb = batch_size * world_size
    out = []
    for start in range(0, n, gb):
        chunk = perm[start : start + gb]
        if len(chunk) < world_size:
            break
        parts = np.array_split(np.asarray(chunk), world_size)
        out.append([int(i) for i in parts[rank]])
    return out


def count_response_tokens(batch: C2CBatch) -> int:
    """Response tokens the loss of ``batch`` covers (``labels != -100`` after the prefix)."""
    if batch.labels is None:
        return 0
    return int((batch.labels[:, batch.prefix_len + 1 :] != -100).sum().item())


@dataclass
class TrainCollator:
    """Rendered rows -> :class:`C2CBatch` (picklable, so DataLoader workers can run it)."""

    pad_id: int
    sharer_pad_ids: list[int] = field(default_factory=list)
    alignment_shift: int = 0

    @classmethod
    def for_model(cls, model: C2CModel) -> TrainCollator:
        pads = [pad_token_id(s, t) for s, t in zip(model.sharers, model.sharer_tokenizers)]
        return cls(pad_token_id(model.receiver, model.receiver_tokenizer), pads, int(model.config.alignment_shift))

    def __call__(self, rows: Sequence[dict[str, Any]]) -> C2CBatch:
        alignments = [
            [
                AlignedPrompt(r["receiver_ids"], r["sharer_ids"][k], r["sharer_index"][k])
                for k in range(len(r["sharer_ids"]))
            ]
            for r in rows
        ]
        return collate(
            alignments,
            pad_id=self.pad_id,
            sharer_pad_ids=self.sharer_pad_ids,
            responses=[r["response_ids"] for r in rows],
            alignment_shift=self.alignment_shift,
        )


class _Rows(torch.utils.data.Dataset[list[dict[str, Any]]]):
    """Index lists -> rows of a ``datasets.Dataset`` (one columnar read per micro-batch)."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, idx: list[int]) -> list[dict[str, Any]]:
        cols = self.ds[idx]
        keys = list(cols)
        return [dict(zip(keys, vals)) for vals in zip(*(cols[k] for k in keys))]


def micro_batch_loader(
    ds: Dataset, batches: list[list[int]], collator: TrainCollator, num_workers: int
) -> torch.utils.data.DataLoader[list[dict[str, Any]]]:
    """A loader yielding one :class:`C2CBatch` per entry of ``batches`` (row indices), in order."""
    # batch_size=None: each sampler item is already a micro-batch; a private generator keeps the global RNG
    # (dropout, gate noise) untouched by loader creation, so resumed runs draw the same numbers.
    return torch.utils.data.DataLoader(
        _Rows(ds),
        sampler=batches,
        batch_size=None,
        collate_fn=collator,
        num_workers=num_workers,
        generator=torch.Generator(),
    )
