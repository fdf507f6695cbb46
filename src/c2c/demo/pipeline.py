"""A tiny dependency scheduler over worker processes: the demo's pretraining and fuser training as one
graph, so that no core waits while work is ready.

The identical control's fuser needs only the receiver, which pretrains in a third of the sharer's time:
it trains on the receiver's core while the sharer is still pretraining, instead of after it.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm


@dataclass(frozen=True)
class Task:
    """One unit of work: ``fn(*args)`` in a worker process once every task named in ``after`` is done."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    after: tuple[str, ...] = field(default_factory=tuple)

    @property
    def subject(self) -> str:
        """What the task makes: the part of ``name`` after ``kind:`` ("pretrain:sharer" -> "sharer")."""
        return self.name.split(":", 1)[-1]


def _ready(pending: Sequence[Task], done: set[str] | dict[str, Any], names: set[str]) -> list[Task]:
    """Tasks of ``pending`` whose dependencies are done (or not in this run at all: cached)."""
    return [t for t in pending if all(d in done or d not in names for d in t.after)]


def run_tasks(tasks: Sequence[Task], *, workers: int, desc: str = "pretrain and train") -> dict[str, Any]:
    """Run ``tasks`` respecting ``after``, up to ``workers`` at a time (in this process, in list order, when
    ``workers <= 1``). Returns each task's result by name; the first failure is raised.

    A dependency on a task that is not in ``tasks`` counts as already done (its output is cached)."""
    names = {t.name for t in tasks}
    if len(names) != len(tasks):
        raise ValueError("task names must be unique")
    results: dict[str, Any] = {}
    with tqdm(total=len(tasks), desc=desc, unit="job", dynamic_ncols=True) as bar:
        if workers <= 1:
            threads = torch.get_num_threads()
            try:
                for task in _in_dependency_order(tasks, names):
                    results[task.name] = task.fn(*task.args)
                    bar.update(1)
            finally:
                torch.set_num_threads(threads)
            return results
        pending = list(tasks)
        running: dict[Future[Any], str] = {}
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            while pending or running:
                ready = _ready(pending, results, names)
                for task in ready[: max(0, workers - len(running))]:
                    pending.remove(task)
                    running[pool.submit(task.fn, *task.args)] = task.name
                if not running:
                    raise ValueError(f"tasks wait on each other: {sorted(t.name for t in pending)}")
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    results[running.pop(fut)] = fut.result()
                    bar.update(1)
    return results


def _in_dependency_order(tasks: Sequence[Task], names: set[str]) -> list[Task]:
    done: set[str] = set()
    order: list[Task] = []
    pending = list(tasks)
    while pending:
        ready = _ready(pending, done, names)
        if not ready:
            raise ValueError(f"tasks wait on each other: {sorted(t.name for t in pending)}")
        for t in ready:
            pending.remove(t)
            order.append(t)
            done.add(t.name)
    return order
