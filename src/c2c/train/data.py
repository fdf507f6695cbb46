"""The prepared training set: rows read (:mod:`~c2c.train.sources`), rendered and aligned
(:class:`~c2c.train.render.ExampleRenderer`), then length-filtered, with the counts of what was dropped;
and the held-out evaluation split."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import datasets
import numpy as np
from datasets import Dataset

from c2c.train.errors import DataError
from c2c.train.render import ExampleRenderer
from c2c.train.sources import DataSource, load_rows

__all__ = ["DataStats", "prepare_dataset", "split_eval"]


@dataclass
class DataStats:
    """What happened to the rows of one data source."""

    name: str
    n_rows: int
    n_kept: int
    max_length: int
    n_too_long: int = 0
    n_nothing_to_fuse: int = 0
    n_template_fallback: int = 0
    first_fallback_row: int | None = None
    longest: int = 0
    shortest: int = 0
    response_tokens: int = 0

    def summary(self) -> str:
        text = (
            f"{self.name}: {self.n_kept} of {self.n_rows} conversations kept; dropped {self.n_too_long} longer than "
            f"{self.max_length} receiver tokens and {self.n_nothing_to_fuse} with no instruction row to fuse"
        )
        if self.n_template_fallback:
            text += (
                f"; {self.n_template_fallback} rows (first: row {self.first_fallback_row}) trained on response content + "
                "eos because the chat template's instruction is not a prefix of its rendered conversation"
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare_dataset(
    source: DataSource,
    renderer: ExampleRenderer,
    *,
    max_length: int,
    max_examples: int | None = None,
    num_proc: int = 1,
    name: str = "train",
    progress: bool = True,
) -> tuple[Dataset, DataStats]:
    """Load, render and length-filter ``source``; raises :class:`DataError` when nothing is left.

    Rows longer than ``max_length`` receiver tokens are dropped, and so are rows with no instruction row to
    fuse (they would train nothing); both are counted in the returned :class:`DataStats`.
    """
    rows = load_rows(source, max_examples=max_examples)
    fp = hashlib.sha256(f"{getattr(rows, '_fingerprint', '')}:{renderer.fingerprint()}".encode()).hexdigest()[:32]
    bars_were_on = datasets.is_progress_bar_enabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        rendered = rows.map(
            renderer,
            with_indices=True,
            remove_columns=rows.column_names,
            num_proc=num_proc if num_proc > 1 else None,
            new_fingerprint=fp,
            desc=f"rendering {name} conversations",
        )
    except DataError:
        raise
    except Exception as exc:
        # num_proc > 1 re-raises worker errors wrapped; surface a DataError when there is one
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, DataError):
                raise DataError(str(cause)) from exc
            cause = cause.__cause__ or cause.__context__
        raise
    finally:
        if not progress and bars_were_on:
            datasets.enable_progress_bars()
    lengths = np.asarray(rendered["length"], dtype=np.int64)
    n_fused = np.asarray(rendered["n_fused"], dtype=np.int64)
    fallback = np.asarray(rendered["template_fallback"], dtype=bool)
    too_long = lengths > max_length
    unfused = (~too_long) & (n_fused == 0)
    keep = np.flatnonzero(~too_long & ~unfused)
    stats = DataStats(
        name=name,
        n_rows=len(rendered),
        n_kept=int(keep.size),
        max_length=max_length,
        n_too_long=int(too_long.sum()),
        n_nothing_to_fuse=int(unfused.sum()),
        n_template_fallback=int(fallback.sum()),
        first_fallback_row=int(np.flatnonzero(fallback)[0]) if fallback.any() else None,
        longest=int(lengths.max()),
        shortest=int(lengths.min()),
    )
    if keep.size == 0:
        raise DataError(
            f"{stats.summary()}. Nothing is left to train on: the shortest conversation has {stats.shortest} "
            f"receiver tokens; raise max_length or check the data"
        )
    if stats.n_template_fallback:
        warnings.warn(stats.summary(), stacklevel=2)
    kept = rendered.select(keep.tolist()) if keep.size < len(rendered) else rendered
    stats.response_tokens = int(sum(len(r) for r in kept["response_ids"]))
    return kept, stats


def split_eval(dataset: Dataset, *, size: int | None, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Hold out ``size`` (or ``fraction``) rows for evaluation, chosen with ``seed``."""
    n = len(dataset)
    n_eval = size if size is not None else round(fraction * n)
    if n_eval <= 0:
        return dataset, None
    if n_eval >= n:
        raise DataError(
            f"the eval split ({n_eval} rows) would take all {n} training rows; lower eval_size/eval_fraction"
        )
    order = np.random.default_rng(seed).permutation(n)
    return dataset.select(sorted(order[n_eval:].tolist())), dataset.select(sorted(order[:n_eval].tolist()))
