"""Crash-safe checkpoints and the run folder's bookkeeping.

A checkpoint is written into ``checkpoints/.tmp-checkpoint-<step>``, flushed to disk, and only then
renamed to ``checkpoints/checkpoint-<step>``: a crash (even SIGKILL) leaves either a complete checkpoint
or a temporary folder that resume ignores and removes. Layout::

    <output_dir>/
      train_run.json            what this run computes (config, pair, data); checked on --resume
      train_log.jsonl           one line per logging / eval event
      checkpoints/checkpoint-00000040/
        fuser/                  C2CModel.save_pretrained layout (fp32 master weights)
        optimizer.pt  scheduler.pt  rng_state_<rank>.pt
        trainer_state.json      step, data position (epoch, micro-batch), tokens seen; written last
      final/                    the trained fuser (save_pretrained layout)
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from c2c.fields import check_field_types
from c2c.train.errors import CheckpointError

__all__ = [
    "CHECKPOINTS_DIR",
    "FINAL_DIR",
    "FUSER_DIR",
    "LOG_NAME",
    "OPTIMIZER_NAME",
    "RESULT_NAME",
    "RUN_NAME",
    "SCHEDULER_NAME",
    "STATE_NAME",
    "CheckpointManager",
    "ReuseDecision",
    "RunFolder",
    "TrainerState",
    "load_rng_state",
    "rng_file",
    "rng_state",
]

STATE_NAME = "trainer_state.json"
RUN_NAME = "train_run.json"
LOG_NAME = "train_log.jsonl"
RESULT_NAME = "train_result.json"
FUSER_DIR = "fuser"
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"
FINAL_DIR = "final"
CHECKPOINTS_DIR = "checkpoints"
_CKPT = re.compile(r"^checkpoint-(\d+)$")
_TMP_PREFIX = ".tmp-checkpoint-"


@dataclass
class TrainerState:
    """Where training stands after ``global_step`` optimizer steps."""

    global_step: int = 0
    epoch: int = 0
    micro_batch: int = 0  # micro-batches of ``epoch`` already consumed (global micro-batch count)
    total_steps: int = 0
    tokens_seen: int = 0  # response tokens trained on (all processes)
    best_eval_loss: float | None = None
    log_history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_file(cls, path: Path) -> TrainerState:
        """Read a state file; a damaged one (truncated, not JSON, wrong field types) is a CheckpointError."""
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise TypeError(f"expected a JSON object, got {type(data).__name__}")
            state = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
            check_field_types(state, path.name)
        except (OSError, ValueError, TypeError) as exc:  # ValueError covers JSON and UTF-8 decoding errors
            raise CheckpointError(f"{path} is unreadable ({exc})") from exc
        return state


# ---------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain numbers (loadable with ``weights_only=True``)."""
    version, mt, gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python_version": int(version),
        "python_state": torch.tensor(mt, dtype=torch.int64),
        "python_gauss": gauss,
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def rng_file(folder: Path, rank: int) -> Path:
    """Where process ``rank`` keeps its RNG state in a checkpoint folder."""
    return folder / f"rng_state_{rank}.pt"


def load_rng_state(state: dict[str, Any]) -> None:
    random.setstate(
        (state["python_version"], tuple(int(x) for x in state["python_state"].tolist()), state["python_gauss"])
    )
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------- checkpoints


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` so the rename publishes complete data."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


ReuseDecision = Literal["fresh", "resume", "overwrite"]


class CheckpointManager:
    """Atomic checkpoints under ``root`` keeping the newest ``keep`` (0 = all)."""

    def __init__(self, root: str | Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = keep

    def path_for(self, step: int) -> Path:
        return self.root / f"checkpoint-{step:08d}"

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (a folder without its state file is not complete)."""
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            m = _CKPT.match(p.name)
            if m and p.is_dir() and (p / STATE_NAME).is_file():
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        ckpts = self.checkpoints()
        return ckpts[-1] if ckpts else None

    def partial(self) -> list[Path]:
        """Temporary folders left by a crash during a save."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.name.startswith(_TMP_PREFIX))

    def remove_partial(self) -> list[Path]:
        removed = self.partial()
        for p in removed:
            shutil.rmtree(p, ignore_errors=True)
        return removed

    def save(
        self,
        step: int,
        *,
        write_shared: Callable[[Path], None],
        write_local: Callable[[Path], None],
        is_main: bool,
        barrier: Callable[[], None],
    ) -> Path:
        """Write checkpoint ``step``: every process runs ``write_local`` (its RNG state), the main process
        ``write_shared`` (fuser, optimizer, scheduler, state file last), then the folder is renamed into
        place. Collective: every process must call it."""
        tmp = self.root / f"{_TMP_PREFIX}{step:08d}"
        final = self.path_for(step)
        if is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        barrier()
        write_local(tmp)
        barrier()
        if is_main:
            write_shared(tmp)
            if not (tmp / STATE_NAME).is_file():
                raise CheckpointError(f"checkpoint writer did not produce {STATE_NAME}")
            _fsync_tree(tmp)
            if final.exists():  # re-saving a step (a resumed run that re-reached it): swap atomically
                old = self.root / f"{_TMP_PREFIX}old-{step:08d}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            _fsync_dir(self.root)
            self.prune()
        barrier()
        return final

    def prune(self) -> list[Path]:
        """Delete all but the newest ``keep`` complete checkpoints."""
        if self.keep <= 0:
            return []
        ckpts = self.checkpoints()
        doomed = ckpts[: max(0, len(ckpts) - self.keep)]
        for p in doomed:
            shutil.rmtree(p, ignore_errors=True)
        return doomed


# ---------------------------------------------------------------------- run folder


@dataclass
class RunFolder:
    """The output folder of one training run, and the rules for reusing it."""

    path: Path

    @property
    def checkpoints(self) -> CheckpointManager:
        return CheckpointManager(self.path / CHECKPOINTS_DIR)

    @property
    def run_file(self) -> Path:
        return self.path / RUN_NAME

    @property
    def log_file(self) -> Path:
        return self.path / LOG_NAME

    @property
    def final_dir(self) -> Path:
        return self.path / FINAL_DIR

    def read_run(self) -> dict[str, Any] | None:
        if not self.run_file.is_file():
            return None
        try:
            return json.loads(self.run_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{self.run_file} is unreadable ({exc}); the output folder is damaged") from exc

    def check_reuse(self, *, resume: bool, overwrite: bool) -> ReuseDecision:
        """Decide, before any compute and without side effects, how this folder may be used.

        Returns "fresh" (missing or empty), "resume" (holds a c2c run and ``resume`` is set) or "overwrite"
        (holds a c2c run and ``overwrite`` is set: the caller deletes it with :meth:`clear`). Raises
        :class:`CheckpointError` when anything saved would be overwritten silently, and when ``resume`` finds
        nothing to resume (a fresh start would hide a wrong path).
        """
        p = self.path
        if p.exists() and not p.is_dir():
            raise CheckpointError(f"output_dir {p} is a file; choose a folder")
        empty = not p.exists() or not any(p.iterdir())
        if empty and resume:
            state = "does not exist" if not p.exists() else "is empty"
            raise CheckpointError(
                f"--resume: nothing to resume, output_dir {p} {state}. Check the path, or drop --resume to start "
                "a new run there"
            )
        if empty:
            return "fresh"
        if self.read_run() is None:
            listing = ", ".join(sorted(x.name for x in p.iterdir())[:5])
            if resume:
                raise CheckpointError(
                    f"--resume: nothing to resume, output_dir {p} holds no c2c training run (no {RUN_NAME}; it holds "
                    f"{listing}). Check the path, or drop --resume and choose an empty or new folder"
                )
            raise CheckpointError(
                f"output_dir {p} already holds files that are not a c2c training run ({listing}); choose an empty "
                "or new folder"
            )
        if resume:
            return "resume"
        if overwrite:
            return "overwrite"
        n = len(self.checkpoints.checkpoints())
        done = " and a final fuser" if self.final_dir.is_dir() else ""
        raise CheckpointError(
            f"output_dir {p} already holds a training run ({n} checkpoints{done}). Pass --resume to continue it, "
            "--overwrite-output-dir to delete it and start over, or choose another output_dir"
        )

    def finished(self) -> bool:
        """Whether the run wrote its final fuser and result file."""
        return (self.final_dir / "fuser_model.safetensors").is_file() and (self.path / RESULT_NAME).is_file()

    def clear(self) -> None:
        """Delete a previous c2c run in this folder (only after :meth:`check_reuse` said "overwrite")."""
        if self.read_run() is None:
            raise CheckpointError(f"refusing to delete {self.path}: it does not hold a c2c training run")
        shutil.rmtree(self.path)

    def write_run(self, description: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.run_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(description, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp, self.run_file)
