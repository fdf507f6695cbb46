"""Reading training rows: file paths and globs (JSONL, JSON, parquet), a ``datasets.Dataset`` or a list of
dicts, into one ``datasets.Dataset``; every problem names the file and the fix."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

import datasets
from datasets import Dataset

from c2c.train.errors import DataError

__all__ = ["DataSource", "load_rows", "resolve_data_files"]

DataSource: TypeAlias = str | Path | Sequence[str | Path] | Dataset | Sequence[dict[str, Any]]
"""File path(s) or glob(s), a ``datasets.Dataset``, or a list of row dicts."""

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def resolve_data_files(paths: str | Path | Sequence[str | Path]) -> tuple[str, list[str]]:
    """Expand globs and check that every file exists and has a supported extension.

    Returns:
        the ``datasets`` builder ("json" or "parquet") and the file list.
    """
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise DataError("no data files given; pass --data with one or more .jsonl, .json or .parquet files")
    files: list[str] = []
    for item in items:
        text = str(item)
        if any(ch in text for ch in "*?["):
            matched = sorted(glob.glob(text))
            if not matched:
                raise DataError(f"data pattern {text!r} matches no file")
            files.extend(matched)
        else:
            files.append(text)
    builders = set()
    for f in files:
        p = Path(f)
        if p.is_dir():
            raise DataError(f"data path {f} is a folder; pass the .jsonl/.json/.parquet files in it (a glob works)")
        if not p.is_file():
            raise DataError(f"data file {f} does not exist")
        builder = _BUILDERS.get(p.suffix.lower())
        if builder is None:
            raise DataError(f"data file {f}: unsupported extension '{p.suffix}'; use .jsonl, .json or .parquet")
        if p.stat().st_size == 0:
            raise DataError(f"data file {f} is empty")
        builders.add(builder)
    if len(builders) > 1:
        raise DataError(f"data files mix JSON and parquet ({', '.join(files)}); convert them to one format")
    return builders.pop(), files


def load_rows(source: DataSource, *, max_examples: int | None = None) -> Dataset:
    """Rows of ``source`` as a ``datasets.Dataset``.

    ``source``: file path(s) or glob(s) (JSONL, JSON list, parquet), a ``datasets.Dataset``, or a list of
    dicts. ``max_examples`` keeps the first N rows (the reference trains on the first 500k).
    """
    if isinstance(source, datasets.Dataset):
        ds = source
    elif isinstance(source, (list, tuple)) and source and isinstance(source[0], dict):
        try:
            # from_list would take the columns of the first row only; rows may mix layouts
            keys = list(dict.fromkeys(k for row in source for k in row))
            ds = datasets.Dataset.from_dict({k: [row.get(k) for row in source] for k in keys})
        except Exception as exc:  # pyarrow cannot unify row schemas
            raise DataError(f"in-memory rows could not be turned into a dataset: {_root_cause(exc)}") from exc
    elif isinstance(source, (str, Path, list, tuple)):
        builder, files = resolve_data_files(source)
        try:
            ds = datasets.load_dataset(builder, data_files=files, split="train")
        except Exception as exc:
            raise DataError(
                f"could not read {', '.join(files)} as {builder}: {_root_cause(exc)}. "
                "JSON data must be one object per line (JSONL) or a single top-level list of objects"
            ) from exc
    else:
        raise DataError(
            f"unsupported data source {type(source).__name__}; give file paths, a Dataset or a list of dicts"
        )
    if len(ds) == 0:
        raise DataError(f"the data source holds no rows ({_describe(source)})")
    if max_examples is not None and len(ds) > max_examples:
        ds = ds.select(range(max_examples))
    return ds


def _root_cause(exc: BaseException) -> str:
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        nxt = seen.__cause__ or seen.__context__
        assert nxt is not None
        seen = nxt
    return f"{type(seen).__name__}: {seen}" if seen is not exc else f"{type(exc).__name__}: {exc}"


def _describe(source: DataSource) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (list, tuple)) and source and isinstance(source[0], (str, Path)):
        return ", ".join(str(s) for s in source)
    return type(source).__name__
