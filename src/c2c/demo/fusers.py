"""Fusers of the demo: one job per fuser, trained by ``c2c.train`` side by side in worker processes, then
loaded back with ``C2CModel.from_pretrained`` and evaluated.

Every fuser of a run shares the data and the recipe; a job says only what differs (variant, family and
size, alignment, or the sharer itself for the "identical" control). Gate logits are recorded during
training (``gate_trajectory``), so a reader can see whether the gates moved.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from c2c.config import C2CConfig
from c2c.fuser import FuserConfig
from c2c.model import C2CModel
from c2c.train import StepInfo, TrainConfig, train

GATE_SNAPSHOTS = 12
"""Gate-logit snapshots per training run (evenly spaced, plus the initial and the final state)."""


@dataclass(frozen=True)
class FuserJob:
    """One fuser to train.

    Attributes:
        name: its name in the results ("c2c", "c2c_identical", "grid_shift1_offsets", ...).
        c2c: ``C2CConfig`` fields (alignment shift, token alignment).
        fuser: ``FuserConfig`` overrides on top of the run's fuser recipe (variant, family, size).
        train: ``TrainConfig`` overrides on top of the run's training recipe.
        identical: the receiver is its own sharer (the control that measures the fuser's own capacity).
    """

    name: str
    c2c: dict[str, Any]
    fuser: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    identical: bool = False


@dataclass(frozen=True)
class Recipe:
    """What every job of a run shares: the fuser and training recipes, the seed and the data file."""

    fuser: dict[str, Any]
    train: dict[str, Any]
    seed: int
    receiver_dir: str
    sharer_dir: str
    data: str


def fuser_config(recipe: Recipe, job: FuserJob) -> FuserConfig:
    """The job's ``FuserConfig``: the recipe, then the job's overrides. Size fields that the job's family
    does not use are dropped from the recipe (the full family's ``hidden_size`` means nothing to "lowrank")."""
    merged = {**recipe.fuser, **job.fuser}
    family = merged.get("family", "full")
    if family != "full":
        for name in ("hidden_size", "intermediate_size", "weight_intermediate_size", "num_projection_blocks"):
            if name not in job.fuser:
                merged.pop(name, None)
    return FuserConfig(**merged)


def build_model(recipe: Recipe, job: FuserJob) -> C2CModel:
    """The job's untrained C2C model, built from the saved tiny LMs (the path real checkpoints take)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sharer_dir = recipe.receiver_dir if job.identical else recipe.sharer_dir
    return C2CModel.from_models(
        AutoModelForCausalLM.from_pretrained(recipe.receiver_dir).eval(),
        AutoModelForCausalLM.from_pretrained(sharer_dir).eval(),
        fuser_config=fuser_config(recipe, job),
        receiver_tokenizer=AutoTokenizer.from_pretrained(recipe.receiver_dir),
        sharer_tokenizer=AutoTokenizer.from_pretrained(sharer_dir),
        config=C2CConfig(**job.c2c),
        seed=recipe.seed,
    )


def _gate_logits(model: C2CModel) -> list[list[float]] | None:
    """``[L][2]`` (key, value) gate logits of the first fuser, or None for a variant without gates."""
    logit = model.fuser_list[0].gate_logit
    return None if logit is None else [[round(float(x), 4) for x in row] for row in logit.detach().tolist()]


def train_job(job: FuserJob, recipe: Recipe, out_dir: str) -> dict[str, Any]:
    """Train one fuser with ``c2c.train`` on one CPU thread and save it (runs in a worker process)."""
    torch.set_num_threads(1)
    model = build_model(recipe, job)
    tcfg = TrainConfig(
        output_dir=out_dir,
        layout="prompt_response",
        use_chat_template=False,
        save_steps=0,
        overwrite_output_dir=True,
        seed=recipe.seed,
        logging_steps=10,
        progress=False,
        **{**recipe.train, **job.train},
    )
    trajectory: list[dict[str, Any]] = [{"step": 0, "logits": _gate_logits(model)}]

    def record(info: StepInfo) -> None:
        every = max(1, info.total_steps // GATE_SNAPSHOTS)
        if info.step % every == 0 or info.step == info.total_steps:
            trajectory.append({"step": info.step, "logits": _gate_logits(model)})

    result = train(model, recipe.data, tcfg, callbacks=[record])
    return {
        "steps": result.global_step,
        "train_loss": result.train_loss,
        "seconds": result.wall_time,
        "open_gates": result.open_gates,
        "total_gates": result.total_gates,
        "fuser_dir": str(result.final_dir),
        "gate_trajectory": trajectory if trajectory[0]["logits"] is not None else None,
    }


def train_jobs(jobs: list[FuserJob], recipe: Recipe, out_dir: Path, *, workers: int) -> dict[str, dict[str, Any]]:
    """Train every job, ``workers`` at a time in spawned processes (one thread each: tiny models use two
    cores better side by side than together); returns each job's training log, by name."""
    args = [(job, recipe, str(out_dir / job.name)) for job in jobs]
    logs: dict[str, dict[str, Any]] = {}
    with tqdm(total=len(jobs), desc="train fusers (c2c.train)", unit="fuser", dynamic_ncols=True) as bar:
        if workers <= 1 or len(jobs) == 1:
            threads = torch.get_num_threads()
            try:
                for a in args:
                    logs[a[0].name] = train_job(*a)
                    bar.update(1)
            finally:
                torch.set_num_threads(threads)
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
                futures = {pool.submit(train_job, *a): a[0].name for a in args}
                for fut in as_completed(futures):
                    logs[futures[fut]] = fut.result()
                    bar.update(1)
    return {job.name: logs[job.name] for job in jobs}  # job order, not completion order
