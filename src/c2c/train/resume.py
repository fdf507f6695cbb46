"""Resuming from the newest checkpoint that loads.

A checkpoint's files are read and checked first (trainer state, fuser record and weights, optimizer,
scheduler, this process's RNG state), then applied. A checkpoint that fails either way (truncated or
garbage files, NaN weights, a state of another shape) is skipped with a warning naming the file and the
reason, and the next older one is tried, so a crash or a disk fault that damaged the newest checkpoint
costs the steps since the previous one, not the run. Every process must agree on the checkpoint (each
holds its own RNG file), so each decision is taken collectively. When no checkpoint loads, the error
lists each one with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from c2c.model import C2CModel
from c2c.persistence import FuserRecord, load_fuser_state, read_record, read_weights
from c2c.train.checkpoint import (
    FUSER_DIR,
    OPTIMIZER_NAME,
    SCHEDULER_NAME,
    STATE_NAME,
    TrainerState,
    load_rng_state,
    rng_file,
)
from c2c.train.errors import CheckpointError
from c2c.train.materialise import check_saved_pair

__all__ = ["ResumePoint", "restore_newest"]

logger = logging.getLogger("c2c.train")

_RNG_KEYS = (
    "python_version",
    "python_state",
    "python_gauss",
    "numpy_keys",
    "numpy_pos",
    "numpy_has_gauss",
    "numpy_gauss",
    "torch",
)

AllProcesses = Callable[[bool], bool]
"""``ok -> whether ok holds on every process`` (a collective call; ``lambda ok: ok`` for one process)."""


@dataclass
class ResumePoint:
    """The checkpoint training continues from, and the newer ones that were skipped (path, reason)."""

    folder: Path
    state: TrainerState
    skipped: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class _Files:
    """A checkpoint's content, read and checked, not yet applied."""

    state: TrainerState
    record: FuserRecord
    weights: dict[str, Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any] | None


def restore_newest(
    checkpoints: Sequence[Path],
    c2c: C2CModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    rank: int,
    all_processes: AllProcesses,
) -> ResumePoint:
    """Load the newest of ``checkpoints`` (oldest first, as :meth:`CheckpointManager.checkpoints` lists
    them) that reads and applies on every process into the fusers, optimizer, scheduler and RNG.

    Raises:
        CheckpointError: none of them loads; the message lists each with its reason.
    """
    skipped: list[tuple[Path, str]] = []
    for folder in reversed(list(checkpoints)):
        reason = None
        try:
            files = _read(folder, rank)
        except CheckpointError as exc:
            files, reason = None, str(exc)
        if not all_processes(files is not None):
            skipped.append((folder, reason or "a file of another process is damaged (see that process's log)"))
            _warn(folder, skipped[-1][1])
            continue
        assert files is not None
        try:
            _apply(files, folder, rank, c2c, optimizer, scheduler)
        except CheckpointError as exc:
            reason = str(exc)
        if not all_processes(reason is None):
            skipped.append((folder, reason or "it did not load on another process (see that process's log)"))
            _warn(folder, skipped[-1][1])
            continue
        if files.rng is None:
            logger.warning(
                "%s has no RNG state for process %d (different process count?): random draws will differ", folder, rank
            )
        return ResumePoint(folder, files.state, skipped)
    lines = "\n  ".join(f"{p.name}: {why}" for p, why in skipped)
    raise CheckpointError(
        f"no checkpoint in {checkpoints[0].parent if checkpoints else 'the run folder'} loads:\n  {lines}\n"
        "Delete the damaged checkpoint folders to restart this run from step 0 with --resume, or pass "
        "--overwrite-output-dir to start over"
    )


def _warn(folder: Path, reason: str) -> None:
    logger.warning("skipping checkpoint %s: %s; trying the previous complete checkpoint", folder, reason)


def _read(folder: Path, rank: int) -> _Files:
    """Every file of checkpoint ``folder`` this process needs, read and checked (nothing applied yet)."""
    state = TrainerState.from_file(folder / STATE_NAME)
    fuser_dir = folder / FUSER_DIR
    try:
        record = read_record(fuser_dir)
        weights = read_weights(fuser_dir)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{fuser_dir} is damaged ({exc})") from exc
    optimizer = _torch_file(folder / OPTIMIZER_NAME)
    if not {"state", "param_groups"} <= set(optimizer):
        raise CheckpointError(f"{folder / OPTIMIZER_NAME} is not an optimizer state (keys {sorted(optimizer)[:5]})")
    scheduler = _torch_file(folder / SCHEDULER_NAME)
    rng_path = rng_file(folder, rank)
    rng = _torch_file(rng_path) if rng_path.is_file() else None
    if rng is not None and not set(_RNG_KEYS) <= set(rng):
        raise CheckpointError(f"{rng_path} is not an RNG state (missing {sorted(set(_RNG_KEYS) - set(rng))})")
    return _Files(state, record, weights, optimizer, scheduler, rng)


def _torch_file(path: Path) -> dict[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file fails in many ways (pickle, zip, EOF, OS errors); all mean the same
        raise CheckpointError(f"{path} is unreadable ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a state mapping")
    return data


def _apply(
    files: _Files,
    folder: Path,
    rank: int,
    c2c: C2CModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    """Load the checked files into the model, optimizer, scheduler and RNG; a failure names the file."""
    fuser_dir = folder / FUSER_DIR
    check_saved_pair(files.record, c2c, str(fuser_dir))
    try:
        load_fuser_state(c2c.fuser_list, files.weights, str(fuser_dir))
    except ValueError as exc:
        raise CheckpointError(f"{fuser_dir} holds unusable fuser weights: {exc}") from exc
    steps: list[tuple[str, Callable[[], None]]] = [
        (OPTIMIZER_NAME, lambda: optimizer.load_state_dict(files.optimizer)),
        (SCHEDULER_NAME, lambda: scheduler.load_state_dict(files.scheduler)),
    ]
    if files.rng is not None:
        rng = files.rng
        steps.append((rng_file(folder, rank).name, lambda: load_rng_state(rng)))
    for name, load in steps:
        try:
            load()
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as exc:
            raise CheckpointError(f"{folder / name} does not fit this run ({type(exc).__name__}: {exc})") from exc
