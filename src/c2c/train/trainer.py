"""The one training function: ``train(model_or_pair, data, config) -> TrainResult``.

Runs unchanged under ``python``, ``torchrun`` and ``accelerate launch``. Only the fusers are handed to
accelerate (DDP across processes); the LLMs stay frozen, in eval mode, outside the prepared module.
Exactness rules this file keeps:

- the loss of an optimizer step is the mean over *all* response tokens of the step (every micro-batch,
  every process), so N processes x batch b equals one process x batch N*b up to float rounding;
- the data order is a pure function of (seed, epoch, global batch), and a checkpoint stores the data
  position, optimizer, scheduler and every process's RNG, so a killed and resumed run ends with the same
  weights as an uninterrupted one.

``train`` runs its phases in order, each a function with typed inputs and outputs:
:func:`plan_output` (may this folder be used?) -> :func:`prepare_data` (pair, renderer, data: bad rows fail
here, before any LLM loads) -> :func:`plan_schedule` -> :func:`build_model` (LLMs loaded and probed) ->
:func:`build_optimisation` -> :func:`start_or_resume` -> :class:`~c2c.train.loop.TrainLoop` ->
:func:`finish` (final fuser and result file).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from accelerate.utils import set_seed
from datasets import Dataset
from torch import nn
from transformers import PreTrainedTokenizerBase

from c2c.model import C2CModel
from c2c.train.batching import TrainCollator, epoch_batches
from c2c.train.checkpoint import RESULT_NAME, ReuseDecision, RunFolder, TrainerState
from c2c.train.config import TrainConfig
from c2c.train.data import DataStats, prepare_dataset, split_eval
from c2c.train.errors import CheckpointError, ConfigError, DataError
from c2c.train.identity import RunDescription, describe_run, refuse_other_run
from c2c.train.loop import LoopOutcome, StepInfo, TrainLoop, gate_counts
from c2c.train.materialise import materialise
from c2c.train.pair import ModelArg, PairSource, build_renderer
from c2c.train.probe import check_continued_prefill
from c2c.train.render import ExampleRenderer
from c2c.train.resume import restore_newest
from c2c.train.sources import DataSource
from c2c.train.step import FuserModule, make_accelerator, make_optimizer, make_scheduler

__all__ = ["StepInfo", "TrainResult", "train"]

logger = logging.getLogger("c2c.train")


@dataclass
class TrainResult:
    """What ``train`` returns (on every process)."""

    model: C2CModel  # fusers trained in place
    output_dir: Path
    final_dir: Path | None
    global_step: int
    total_steps: int
    train_loss: float | None  # token-weighted mean over the last logging window
    eval_loss: float | None
    open_gates: int
    total_gates: int
    train_stats: DataStats  # rows read, dropped and kept (before an eval split is held out)
    eval_stats: DataStats | None
    resumed_from: Path | None
    num_train: int = 0  # conversations trained on
    num_eval: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_time: float = 0.0
    tokens_per_second: float = 0.0  # receiver tokens (prompt + response) per second, all processes

    def to_dict(self) -> dict[str, Any]:
        skip = ("model", "train_stats", "eval_stats")
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        d["output_dir"] = str(self.output_dir)
        d["final_dir"] = str(self.final_dir) if self.final_dir else None
        d["resumed_from"] = str(self.resumed_from) if self.resumed_from else None
        d["train_stats"] = self.train_stats.to_dict()
        d["eval_stats"] = self.eval_stats.to_dict() if self.eval_stats else None
        return d


# ---------------------------------------------------------------------- the phases' results


@dataclass
class OutputPlan:
    """How the output folder is used: "fresh", "resume" or "overwrite", and the run recorded there."""

    run: RunFolder
    decision: ReuseDecision
    recorded: RunDescription | None


@dataclass
class PreparedData:
    train: Dataset
    eval: Dataset | None
    train_stats: DataStats
    eval_stats: DataStats | None


@dataclass
class Schedule:
    """Optimizer steps; everything here depends on the global batch only, never on the process count."""

    micro_batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


@dataclass
class Optimisation:
    module: nn.Module  # the FuserModule as prepared by accelerate
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


@dataclass
class Start:
    state: TrainerState
    resumed_from: Path | None


# ---------------------------------------------------------------------- public entry point


def train(
    model: ModelArg = None,
    data: DataSource | None = None,
    config: TrainConfig | dict[str, Any] | str | Path | None = None,
    *,
    eval_data: DataSource | None = None,
    receiver_tokenizer: PreTrainedTokenizerBase | str | None = None,
    sharer_tokenizer: PreTrainedTokenizerBase | str | None = None,
    callbacks: Sequence[Callable[[StepInfo], None]] = (),
    trackers: Sequence[GeneralTracker] = (),
) -> TrainResult:
    """Train the fuser(s) of a receiver/sharer pair on chat data.

    Args:
        model: a :class:`c2c.C2CModel` (its fusers are trained in place), a ``(receiver, sharer)`` pair of
            loaded models or ids/paths, or None to load ``config.receiver`` / ``config.sharer``.
        data: file path(s) (JSONL / JSON / parquet), a ``datasets.Dataset`` or a list of dicts; None uses
            ``config.data``.
        config: a :class:`TrainConfig`, a dict of its fields, or a YAML/JSON file.
        eval_data: like ``data``; default ``config.eval_data``, else a held-out split (``eval_size`` /
            ``eval_fraction``), else no evaluation.
        receiver_tokenizer / sharer_tokenizer: needed when ``model`` is a pair of in-memory models.
        callbacks: called with a :class:`StepInfo` after every optimizer step, on every process.
        trackers: ``accelerate.tracking.GeneralTracker`` instances, in addition to ``config.log_with`` names.
    """
    cfg = as_config(config)
    start_time = time.perf_counter()
    train_source = data if data is not None else (cfg.data or None)
    if train_source is None:
        raise DataError("no training data: pass data= or set data (--data) to one or more .jsonl/.json/.parquet files")
    eval_source = eval_data if eval_data is not None else (cfg.eval_data or None)
    accelerator = make_accelerator(cfg, trackers)
    check_distributed_type(accelerator)
    tracking = bool(cfg.log_with or trackers)
    world = accelerator.num_processes

    output = plan_output(cfg, world)
    pair = PairSource.build(model, cfg, receiver_tokenizer, sharer_tokenizer)
    renderer = build_renderer(pair, cfg)
    prepared = prepare_data(train_source, eval_source, renderer, cfg, accelerator)
    schedule = plan_schedule(cfg, len(prepared.train), world)
    c2c = build_model(pair, renderer, cfg, accelerator)
    description = describe_run(cfg, c2c, prepared.train, prepared.eval, world)
    if output.recorded is not None:
        refuse_other_run(output.run.path, output.recorded, description)
    parts = build_optimisation(c2c, cfg, schedule, accelerator)
    start = start_or_resume(output, description, c2c, parts, cfg, schedule, accelerator)

    if tracking:
        accelerator.init_trackers(cfg.project_name, config=_tracker_config(cfg))
    n_params = sum(p.numel() for p in c2c.fusers.parameters())
    logger.info(
        "training %s fuser parameters for %d steps (%d warmup), global batch %d conversations "
        "(%d x %d processes x %d accumulation)",
        f"{n_params:,}",
        schedule.total_steps,
        schedule.warmup_steps,
        cfg.batch_size * world * cfg.gradient_accumulation_steps,
        cfg.batch_size,
        world,
        cfg.gradient_accumulation_steps,
    )
    loop = TrainLoop(
        cfg=cfg,
        accelerator=accelerator,
        c2c=c2c,
        module=parts.module,
        optimizer=parts.optimizer,
        scheduler=parts.scheduler,
        collator=TrainCollator.for_model(c2c),
        train_ds=prepared.train,
        eval_ds=prepared.eval,
        run_folder=output.run,
        state=start.state,
        callbacks=callbacks,
        tracking=tracking,
    )
    outcome = loop.run()
    result = finish(c2c, output.run, prepared, schedule, start, outcome, accelerator, time.perf_counter() - start_time)
    if tracking:
        accelerator.end_training()
    return result


# ---------------------------------------------------------------------- phases


def plan_output(cfg: TrainConfig, world: int) -> OutputPlan:
    """Phase 1: may the output folder be used (never overwrite anything silently), and which run does it
    record? A recorded run's settings are compared now (cheap); pair and data once they are loaded."""
    run = RunFolder(Path(cfg.output_dir))
    decision = run.check_reuse(resume=cfg.resume, overwrite=cfg.overwrite_output_dir)  # same answer on every process
    recorded = run.read_run() if decision == "resume" else None
    if recorded is not None:
        refuse_other_run(
            run.path, recorded, describe_run(cfg, None, None, None, world), only=("config", "global_micro_batch")
        )
    return OutputPlan(run, decision, recorded)


def prepare_data(
    train_source: DataSource,
    eval_source: DataSource | None,
    renderer: ExampleRenderer,
    cfg: TrainConfig,
    accelerator: Accelerator,
) -> PreparedData:
    """Phase 2: render and filter the data (the main process first, so the others reuse its cache) and hold
    out the eval split."""
    progress = cfg.progress and accelerator.is_main_process
    with accelerator.main_process_first():
        train_ds, train_stats = prepare_dataset(
            train_source,
            renderer,
            max_length=cfg.max_length,
            max_examples=cfg.max_examples,
            num_proc=cfg.preprocess_workers,
            name="train",
            progress=progress,
        )
        eval_ds, eval_stats = None, None
        if eval_source is not None:
            eval_ds, eval_stats = prepare_dataset(
                eval_source,
                renderer,
                max_length=cfg.max_length,
                num_proc=cfg.preprocess_workers,
                name="eval",
                progress=progress,
            )
        elif cfg.eval_size or cfg.eval_fraction:
            train_ds, eval_ds = split_eval(train_ds, size=cfg.eval_size, fraction=cfg.eval_fraction, seed=cfg.seed)
    logger.info(train_stats.summary())
    if eval_stats is not None:
        logger.info(eval_stats.summary())
    return PreparedData(train_ds, eval_ds, train_stats, eval_stats)


def plan_schedule(cfg: TrainConfig, n_train: int, world: int) -> Schedule:
    """Phase 3: steps per epoch, total and warmup steps."""
    micro = len(epoch_batches(n_train, batch_size=cfg.batch_size, world_size=world, rank=0, seed=cfg.seed, epoch=0))
    if micro == 0:
        raise DataError(
            f"{n_train} training conversations cannot fill one batch across {world} processes; "
            "add data or use fewer processes"
        )
    steps_per_epoch = math.ceil(micro / cfg.gradient_accumulation_steps)
    total = cfg.max_steps or steps_per_epoch * cfg.num_epochs
    return Schedule(micro, steps_per_epoch, total, math.ceil(cfg.warmup_ratio * total))


def build_model(pair: PairSource, renderer: ExampleRenderer, cfg: TrainConfig, accelerator: Accelerator) -> C2CModel:
    """Phase 4: the models (loaded here when given by id) with fp32 fuser master weights, recording how the
    fuser is prompted, and refused when their training forward would differ from inference."""
    c2c = materialise(pair, cfg, accelerator.device, accelerator.num_processes)
    # The saved fuser records how it was prompted, so every entry point prompts it the same way.
    c2c.config = dataclasses.replace(c2c.config, prompt_format="chat" if renderer.chat else "text")
    check_continued_prefill(c2c)
    return c2c


def build_optimisation(c2c: C2CModel, cfg: TrainConfig, schedule: Schedule, accelerator: Accelerator) -> Optimisation:
    """Phase 5: AdamW over the fusers and its schedule; the fusers alone are prepared (DDP)."""
    optimizer = make_optimizer(c2c, cfg)
    scheduler = make_scheduler(optimizer, schedule.warmup_steps, schedule.total_steps)
    module, optimizer = accelerator.prepare(FuserModule(c2c), optimizer)
    return Optimisation(module, optimizer, scheduler)


def start_or_resume(
    output: OutputPlan,
    description: RunDescription,
    c2c: C2CModel,
    parts: Optimisation,
    cfg: TrainConfig,
    schedule: Schedule,
    accelerator: Accelerator,
) -> Start:
    """Phase 6: clear an overwritten run, record this one, and with ``resume`` restore the newest checkpoint
    that loads (damaged newer ones are skipped with a warning). A recorded run without any checkpoint starts
    from step 0 (it stopped before its first save), unless it finished: then there is nothing to resume."""
    run, ckpts = output.run, output.run.checkpoints
    if accelerator.is_main_process:
        if output.decision == "overwrite":  # only now that data and models checked out
            run.clear()
        for p in ckpts.remove_partial():
            logger.warning("removed %s: a checkpoint interrupted while being written", p)
        if output.recorded is None:
            run.write_run(description)
    accelerator.wait_for_everyone()
    set_seed(cfg.seed)
    state = TrainerState(total_steps=schedule.total_steps)
    if output.decision != "resume":
        return Start(state, None)
    found = ckpts.checkpoints()
    if not found:
        if run.finished():
            raise CheckpointError(
                f"--resume: the run in {run.path} finished and kept no checkpoint (save_steps: 0), so there is "
                f"nothing to resume; its fuser is in {run.final_dir}. Drop --resume and use --overwrite-output-dir "
                "to train it again"
            )
        logger.info("no complete checkpoint in %s yet: starting the run from step 0", run.path)
        return Start(state, None)

    def all_processes(ok: bool) -> bool:
        flag = torch.tensor([0 if ok else 1], device=accelerator.device)
        return int(accelerator.reduce(flag, "sum").item()) == 0

    point = restore_newest(
        found, c2c, parts.optimizer, parts.scheduler, rank=accelerator.process_index, all_processes=all_processes
    )
    point.state.total_steps = schedule.total_steps
    logger.info("resumed from %s (step %d of %d)", point.folder, point.state.global_step, schedule.total_steps)
    return Start(point.state, point.folder)


def finish(
    c2c: C2CModel,
    run: RunFolder,
    prepared: PreparedData,
    schedule: Schedule,
    start: Start,
    outcome: LoopOutcome,
    accelerator: Accelerator,
    wall_time: float,
) -> TrainResult:
    """Phase 7: the model back in inference mode, the final fuser and ``train_result.json`` written."""
    c2c.eval()  # hand the model back ready for inference (hard gates, no dropout)
    if accelerator.is_main_process:
        c2c.save_pretrained(str(run.final_dir))
    accelerator.wait_for_everyone()
    open_gates, total_gates = gate_counts(c2c)
    result = TrainResult(
        model=c2c,
        output_dir=run.path,
        final_dir=run.final_dir,
        global_step=start.state.global_step,
        total_steps=schedule.total_steps,
        train_loss=outcome.train_loss,
        eval_loss=outcome.eval_metrics.get("eval_loss") if outcome.eval_metrics else None,
        open_gates=open_gates,
        total_gates=total_gates,
        train_stats=prepared.train_stats,
        eval_stats=prepared.eval_stats,
        resumed_from=start.resumed_from,
        num_train=len(prepared.train),
        num_eval=len(prepared.eval) if prepared.eval is not None else 0,
        history=list(start.state.log_history),
        wall_time=wall_time,
        tokens_per_second=outcome.tokens_per_second,
    )
    if accelerator.is_main_process:
        (run.path / RESULT_NAME).write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    return result


# ---------------------------------------------------------------------- helpers


def as_config(config: TrainConfig | dict[str, Any] | str | Path | None) -> TrainConfig:
    """A checked :class:`TrainConfig` from a config, a dict of its fields or a YAML/JSON path."""
    if config is None:
        return TrainConfig()
    if isinstance(config, TrainConfig):
        config.validate()
        return config
    if isinstance(config, dict):
        return TrainConfig.from_dict(config)
    if isinstance(config, (str, Path)):
        return TrainConfig.from_file(config)
    raise ConfigError(f"config must be a TrainConfig, a dict or a YAML/JSON path, got {type(config).__name__}")


def check_distributed_type(accelerator: Accelerator) -> None:
    """DDP (or one process) only: the fuser is replicated, the frozen LLMs live outside accelerate."""
    kind = str(accelerator.distributed_type).split(".")[-1]
    if kind in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        raise ConfigError(
            f"c2c train runs data-parallel (DDP) only, but accelerate is configured for {kind}. Launch with a "
            "plain multi-process configuration (torchrun, or accelerate launch without --use_fsdp/--use_deepspeed) "
            "and pass --shard-llms to shard the frozen LLMs across processes"
        )


def _tracker_config(cfg: TrainConfig) -> dict[str, Any]:
    return {
        k: (v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v))
        for k, v in cfg.to_dict().items()
    }
