"""Fusers of the demo: one job per fuser, trained by ``c2c.train`` side by side in worker processes, then
loaded back with ``C2CModel.from_pretrained`` and evaluated.

Every fuser of a run shares the data and the recipe; a job says only what differs (variant, family and
size, alignment, or the sharer itself for the "identical" control). Gate logits are recorded during
training (``gate_trajectory``), so a reader can see whether the gates moved.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from c2c.config import C2CConfig
from c2c.demo.pipeline import Task
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
        data: its own training file ("": the run's), e.g. the study's data sweep trains on fewer entities.
        seed_offset: added to the run's seed for this fuser's initialisation and data order (0: the run's
            seed), e.g. the study's replicates of the headline fuser.
    """

    name: str
    c2c: dict[str, Any]
    fuser: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    identical: bool = False
    data: str = ""
    seed_offset: int = 0


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
        seed=recipe.seed + job.seed_offset,
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
        seed=recipe.seed + job.seed_offset,
        logging_steps=10,
        progress=False,
        **{**recipe.train, **job.train},
    )
    trajectory: list[dict[str, Any]] = [{"step": 0, "logits": _gate_logits(model)}]

    def record(info: StepInfo) -> None:
        every = max(1, info.total_steps // GATE_SNAPSHOTS)
        if info.step % every == 0 or info.step == info.total_steps:
            trajectory.append({"step": info.step, "logits": _gate_logits(model)})

    result = train(model, job.data or recipe.data, tcfg, callbacks=[record])
    return {
        "steps": result.global_step,
        "train_loss": result.train_loss,
        "seconds": result.wall_time,
        "open_gates": result.open_gates,
        "total_gates": result.total_gates,
        "fuser_dir": str(result.final_dir),
        "gate_trajectory": trajectory if trajectory[0]["logits"] is not None else None,
    }


DONE = "demo_fuser.json"


def job_key(job: FuserJob, recipe: Recipe) -> str:
    """Cache key of a trained fuser: the job, the recipe, the two models (their cache folders are named by
    their own keys) and the training data's bytes (not their paths: another output folder reuses the fuser)."""

    def digest(path: str) -> str:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    fields = asdict(job)
    # A job on the run's data and seed keeps the key it had before jobs could bring their own file or seed.
    if fields.pop("data"):
        fields["data"] = digest(job.data)
    if fields.pop("seed_offset"):
        fields["seed_offset"] = job.seed_offset
    blob = json.dumps(
        {"job": fields, "recipe": {**asdict(recipe), "data": digest(recipe.data)}}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _train_and_record(job: FuserJob, recipe: Recipe, folder: str) -> dict[str, Any]:
    """Train into ``folder`` and write the training log last (a folder without it is incomplete)."""
    log = train_job(job, recipe, folder)
    Path(folder, DONE).write_text(json.dumps(log, indent=1))
    return log


def fuser_tasks(
    jobs: list[FuserJob], recipe: Recipe, cache_dir: Path, *, retrain: bool = False
) -> tuple[list[Task], dict[str, Path]]:
    """Tasks that train the jobs missing from ``cache_dir`` (every job with ``retrain``), named
    ``fuser:<job>``, each after the pretraining of the models it reads; and each job's folder.

    Training is deterministic, so a fuser whose key (:func:`job_key`) is cached is reused, not retrained."""
    folders = {job.name: cache_dir / f"{job.name}-{job_key(job, recipe)}" for job in jobs}
    tasks = []
    for job in jobs:
        if retrain or not (folders[job.name] / DONE).exists():
            shutil.rmtree(folders[job.name], ignore_errors=True)  # never reuse a half-written folder
            after = ("pretrain:receiver",) if job.identical else ("pretrain:receiver", "pretrain:sharer")
            tasks.append(Task(f"fuser:{job.name}", _train_and_record, (job, recipe, str(folders[job.name])), after))
    return tasks, folders


def fuser_logs(jobs: list[FuserJob], folders: dict[str, Path], *, fresh: set[str]) -> dict[str, dict[str, Any]]:
    """Each job's training log by name (job order), with ``cached`` False for the jobs in ``fresh``."""
    return {
        job.name: {**json.loads((folders[job.name] / DONE).read_text()), "cached": job.name not in fresh}
        for job in jobs
    }
