"""The one training function: ``train(model_or_pair, data, config) -> TrainResult``.

Runs unchanged under ``python``, ``torchrun`` and ``accelerate launch``. Only the fusers are handed to
accelerate (DDP across processes); the LLMs stay frozen, in eval mode, outside the prepared module.
Exactness rules this file keeps:

- the loss of an optimizer step is the mean over *all* response tokens of the step (every micro-batch,
  every process), so N processes x batch b equals one process x batch N*b up to float rounding;
- the data order is a pure function of (seed, epoch, global batch), and a checkpoint stores the data
  position, optimizer, scheduler and every process's RNG, so a killed and resumed run ends with the same
  weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from c2c.batch import C2CBatch
from c2c.fuser import gate_temperature
from c2c.train.checkpoint import (
    FUSER_DIR,
    RESULT_NAME,
    STATE_NAME,
    CheckpointError,
    RunFolder,
    TrainerState,
    describe_differences,
    load_rng_state,
    rng_state,
)
from c2c.train.batching import TrainCollator, epoch_batches
from c2c.train.config import ConfigError, TrainConfig, check_temperatures
from c2c.train.data import DataError, DataStats, prepare_dataset, split_eval
from c2c.train.pair import PairSource, build_renderer, describe_run, load_fuser_weights
from c2c.train.step import FuserModule, StepOutput, make_accelerator, make_optimizer, make_scheduler, optimizer_step

__all__ = ["StepInfo", "TrainResult", "train"]

logger = logging.getLogger("c2c.train")



@dataclass
class StepInfo:
    """Handed to ``callbacks`` after every optimizer step (on every process)."""

    step: int
    total_steps: int
    loss: float
    learning_rate: float
    temperature: float
    grad_norm: float | None
    tokens: int


@dataclass
class TrainResult:
    """What ``train`` returns (on every process)."""

    model: Any  # the C2CModel, fusers trained in place
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


# ---------------------------------------------------------------------- public entry point


def train(
    model: Any = None,
    data: Any = None,
    config: TrainConfig | dict[str, Any] | str | Path | None = None,
    *,
    eval_data: Any = None,
    receiver_tokenizer: Any = None,
    sharer_tokenizer: Any = None,
    callbacks: Sequence[Callable[[StepInfo], None]] = (),
    trackers: Sequence[Any] = (),
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
    cfg = _as_config(config)
    start_time = time.perf_counter()
    data_source = data if data is not None else (cfg.data or None)
    if data_source is None:
        raise DataError("no training data: pass data= or set data (--data) to one or more .jsonl/.json/.parquet files")
    eval_source = eval_data if eval_data is not None else (cfg.eval_data or None)

    accelerator = make_accelerator(cfg, trackers)
    tracking = bool(cfg.log_with or trackers)
    _check_distributed_type(accelerator)
    world, rank = accelerator.num_processes, accelerator.process_index
    run = RunFolder(Path(cfg.output_dir))

    # 1. The output folder: refuse to overwrite anything before any compute.
    decision = run.check_reuse(resume=cfg.resume, overwrite=cfg.overwrite_output_dir)  # same answer on every process
    recorded = run.read_run() if decision == "resume" else None
    if recorded is not None:  # settings first (cheap); pair and data once they are loaded
        _refuse_other_run(run, recorded, describe_run(cfg, None, None, None, world), only=("config", "global_micro_batch"))

    # 2. Tokenizers and aligners (cheap), then the data: bad rows fail here, before the LLMs load.
    pair = PairSource.build(model, cfg, receiver_tokenizer, sharer_tokenizer)
    renderer = build_renderer(pair, cfg)
    with accelerator.main_process_first():
        train_ds, train_stats = prepare_dataset(
            data_source, renderer, max_length=cfg.max_length, max_examples=cfg.max_examples,
            num_proc=cfg.preprocess_workers, name="train", progress=cfg.progress and accelerator.is_main_process,
        )
        eval_ds, eval_stats = None, None
        if eval_source is not None:
            eval_ds, eval_stats = prepare_dataset(
                eval_source, renderer, max_length=cfg.max_length, num_proc=cfg.preprocess_workers,
                name="eval", progress=cfg.progress and accelerator.is_main_process,
            )
        elif cfg.eval_size or cfg.eval_fraction:
            train_ds, eval_ds = split_eval(train_ds, size=cfg.eval_size, fraction=cfg.eval_fraction, seed=cfg.seed)
    logger.info(train_stats.summary())
    if eval_stats is not None:
        logger.info(eval_stats.summary())

    # 3. Schedule: everything below depends only on the global batch, never on the process count.
    micro_per_epoch = len(epoch_batches(len(train_ds), batch_size=cfg.batch_size, world_size=world, rank=0, seed=cfg.seed, epoch=0))
    if micro_per_epoch == 0:
        raise DataError(
            f"{len(train_ds)} training conversations cannot fill one batch across {world} processes; "
            "add data or use fewer processes"
        )
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.gradient_accumulation_steps)
    total_steps = cfg.max_steps or steps_per_epoch * cfg.num_epochs
    warmup_steps = math.ceil(cfg.warmup_ratio * total_steps)

    # 4. The models (loaded here when given by id), the fusers' master weights in fp32.
    c2c = pair.materialise(cfg, accelerator.device, world)
    # The saved fuser records how it was prompted, so every entry point prompts it the same way.
    c2c.config = dataclasses.replace(c2c.config, prompt_format="chat" if renderer.chat else "text")
    collator = TrainCollator.for_model(c2c)
    description = describe_run(cfg, c2c, train_ds, eval_ds, world)
    if recorded is not None:
        _refuse_other_run(run, recorded, description)

    module = FuserModule(c2c)
    optimizer = make_optimizer(c2c, cfg)
    scheduler = make_scheduler(optimizer, warmup_steps, total_steps)
    module, optimizer = accelerator.prepare(module, optimizer)

    # 5. Fresh start or resume.
    state = TrainerState(total_steps=total_steps)
    resumed_from = None
    ckpts = run.checkpoints
    if accelerator.is_main_process:
        if decision == "overwrite":  # only now that data and models checked out
            run.clear()
        for p in ckpts.remove_partial():
            logger.warning("removed %s: a checkpoint interrupted while being written", p)
        if recorded is None:
            run.write_run(description)
    accelerator.wait_for_everyone()
    latest = ckpts.latest() if cfg.resume else None
    if cfg.resume and latest is None and recorded is not None:
        logger.info("no complete checkpoint in %s yet: starting the run from step 0", run.path)
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    if latest is not None:
        state = _load_checkpoint(latest, c2c, optimizer, scheduler, rank)
        resumed_from = latest
        logger.info("resumed from %s (step %d of %d)", latest, state.global_step, total_steps)

    if tracking:
        accelerator.init_trackers(cfg.project_name, config=_tracker_config(cfg))

    n_params = sum(p.numel() for p in c2c.fusers.parameters())
    logger.info(
        "training %s fuser parameters for %d steps (%d warmup), global batch %d conversations (%d x %d processes x %d accumulation)",
        f"{n_params:,}", total_steps, warmup_steps, cfg.batch_size * world * cfg.gradient_accumulation_steps,
        cfg.batch_size, world, cfg.gradient_accumulation_steps,
    )

    loop = _Loop(
        cfg=cfg, accelerator=accelerator, c2c=c2c, module=module, optimizer=optimizer,
        scheduler=scheduler, collator=collator, train_ds=train_ds, eval_ds=eval_ds, folder=run, state=state,
        callbacks=list(callbacks), tracking=tracking,
    )
    train_loss, eval_metrics, throughput = loop.run()
    c2c.eval()  # hand the model back ready for inference (hard gates, no dropout)

    # 6. Final fuser, result file.
    final_dir = run.final_dir
    if accelerator.is_main_process:
        c2c.save_pretrained(str(final_dir))
    accelerator.wait_for_everyone()
    open_gates, total_gates = _gate_counts(c2c)
    result = TrainResult(
        model=c2c,
        output_dir=run.path,
        final_dir=final_dir,
        global_step=state.global_step,
        total_steps=total_steps,
        train_loss=train_loss,
        eval_loss=eval_metrics.get("eval_loss") if eval_metrics else None,
        open_gates=open_gates,
        total_gates=total_gates,
        train_stats=train_stats,
        eval_stats=eval_stats,
        resumed_from=resumed_from,
        num_train=len(train_ds),
        num_eval=len(eval_ds) if eval_ds is not None else 0,
        history=list(state.log_history),
        wall_time=time.perf_counter() - start_time,
        tokens_per_second=throughput,
    )
    if accelerator.is_main_process:
        (run.path / RESULT_NAME).write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    if tracking:
        accelerator.end_training()
    return result


# ---------------------------------------------------------------------- the loop


class _Loop:
    """Optimizer steps from ``state`` to ``state.total_steps`` (logging, eval, checkpoints)."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)
        fuser_cfg = self.c2c.fusers[0].config
        self.temperatures = (
            self.cfg.gate_temperature_start or fuser_cfg.temperature_start,
            self.cfg.gate_temperature_end or fuser_cfg.temperature_end,
        )
        check_temperatures(*self.temperatures)
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.device = self.accelerator.device

    # -- data
    def _windows(self) -> Iterator[list[C2CBatch]]:
        """Accumulation windows from the saved data position on (crossing epochs as needed)."""
        cfg, st = self.cfg, self.state
        while True:
            batches = epoch_batches(
                len(self.train_ds), batch_size=cfg.batch_size, world_size=self.world, rank=self.rank, seed=cfg.seed, epoch=st.epoch
            )
            if st.micro_batch >= len(batches):
                st.epoch, st.micro_batch = st.epoch + 1, 0
                continue
            loader = _loader(self.train_ds, batches[st.micro_batch :], self.collator, cfg.num_workers)
            window: list[C2CBatch] = []
            for batch in loader:
                window.append(batch)
                if len(window) == cfg.gradient_accumulation_steps:
                    yield window
                    window = []
            if window:  # the epoch's last, shorter window
                yield window

    # -- one optimizer step
    def _step(self, window: list[C2CBatch]) -> StepOutput:
        return optimizer_step(self.accelerator, self.module, self.optimizer, self.scheduler, window, max_grad_norm=self.cfg.max_grad_norm)

    # -- evaluation
    def evaluate(self) -> dict[str, float]:
        acc, c2c = self.accelerator, self.c2c
        batches = epoch_batches(len(self.eval_ds), batch_size=self.cfg.batch_size, world_size=self.world, rank=self.rank, seed=0, epoch=0, shuffle=False)
        total = torch.zeros(2, device=self.device, dtype=torch.float64)
        c2c.eval()
        try:
            with torch.no_grad(), acc.autocast():
                for batch in _loader(self.eval_ds, batches, self.collator, 0):
                    out = c2c(batch.to(self.device))
                    total += torch.stack([out.loss.double() * out.num_tokens, torch.tensor(float(out.num_tokens), device=self.device, dtype=torch.float64)])
        finally:
            c2c.train()
        total = acc.reduce(total, "sum")
        open_gates, total_gates = _gate_counts(c2c)
        return {"eval_loss": float(total[0] / total[1]) if total[1] > 0 else float("nan"), "eval_tokens": int(total[1]), "open_gates": open_gates, "total_gates": total_gates}

    # -- checkpoint
    def save_checkpoint(self) -> Path:
        acc, st = self.accelerator, self.state

        def write_local(folder: Path) -> None:
            torch.save(rng_state(), folder / f"rng_state_{self.rank}.pt")

        def write_shared(folder: Path) -> None:
            self.c2c.save_pretrained(str(folder / FUSER_DIR))
            torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), folder / "scheduler.pt")
            (folder / STATE_NAME).write_text(st.to_json())  # last: marks the folder complete

        ckpts = self.folder.checkpoints
        ckpts.keep = self.cfg.save_total_limit
        return ckpts.save(st.global_step, write_shared=write_shared, write_local=write_local, is_main=acc.is_main_process, barrier=acc.wait_for_everyone)

    def _log(self, record: dict[str, Any]) -> None:
        self.state.log_history.append(record)
        if self.accelerator.is_main_process:
            with open(self.folder.log_file, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.tracking:
            self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])

    def run(self) -> tuple[float | None, dict[str, float], float]:
        from tqdm.auto import tqdm

        cfg, st, acc = self.cfg, self.state, self.accelerator
        self.c2c.train()
        eval_metrics: dict[str, float] = {}
        bar = tqdm(total=st.total_steps, initial=st.global_step, desc="c2c train", dynamic_ncols=True,
                   disable=not (cfg.progress and acc.is_local_main_process))
        window_loss, window_tokens, last_loss = 0.0, 0, None
        seen, t0 = 0, time.perf_counter()
        windows = self._windows()
        try:
            while st.global_step < st.total_steps:
                temperature = gate_temperature(st.global_step, st.total_steps, *self.temperatures)
                self.c2c.set_gate_temperature(temperature)
                lr = self.scheduler.get_last_lr()[0]
                window = next(windows)
                out = self._step(window)
                loss, grad_norm, tokens, seen_now = out.loss, out.grad_norm, out.tokens, out.seen
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"training loss became {loss} at step {st.global_step + 1}; lower learning_rate or check the data"
                    )
                st.global_step += 1
                st.micro_batch += len(window)
                st.tokens_seen += tokens
                seen += seen_now
                window_loss, window_tokens = window_loss + loss * tokens, window_tokens + tokens
                last = st.global_step == st.total_steps
                open_gates, total_gates = _gate_counts(self.c2c)  # hard-gate state: a few scalars
                if st.global_step % cfg.logging_steps == 0 or last:
                    last_loss = window_loss / window_tokens
                    self._log({"step": st.global_step, "epoch": st.epoch, "loss": last_loss, "learning_rate": lr,
                               "temperature": temperature, "grad_norm": grad_norm, "open_gates": open_gates,
                               "total_gates": total_gates, "tokens_seen": st.tokens_seen,
                               "tokens_per_second": seen / max(time.perf_counter() - t0, 1e-9)})
                    window_loss, window_tokens = 0.0, 0
                if self.eval_ds is not None and ((cfg.eval_steps and st.global_step % cfg.eval_steps == 0) or last):
                    eval_metrics = self.evaluate()
                    open_gates = int(eval_metrics["open_gates"])
                    if st.best_eval_loss is None or eval_metrics["eval_loss"] < st.best_eval_loss:
                        st.best_eval_loss = eval_metrics["eval_loss"]
                    self._log({"step": st.global_step, **eval_metrics})
                if cfg.save_steps and (st.global_step % cfg.save_steps == 0 or last):
                    self.save_checkpoint()
                bar.set_postfix(loss=f"{loss:.4f}", temp=f"{temperature:.3g}", gates=f"{open_gates}/{total_gates}", refresh=False)
                bar.update(1)
                info = StepInfo(st.global_step, st.total_steps, loss, lr, temperature, grad_norm, tokens)
                for cb in self.callbacks:
                    cb(info)
        finally:
            bar.close()
        if self.eval_ds is not None and not eval_metrics:  # resumed at the end: evaluate once
            eval_metrics = self.evaluate()
        throughput = seen / max(time.perf_counter() - t0, 1e-9) if seen else 0.0
        if last_loss is None and st.log_history:
            last_loss = next((r["loss"] for r in reversed(st.log_history) if "loss" in r), None)
        return last_loss, eval_metrics, throughput


# ---------------------------------------------------------------------- helpers


class _Rows(torch.utils.data.Dataset):
    """Index lists -> rows of a ``datasets.Dataset`` (one columnar read per micro-batch)."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, idx: list[int]) -> list[dict[str, Any]]:
        cols = self.ds[idx]
        keys = list(cols)
        return [dict(zip(keys, vals)) for vals in zip(*(cols[k] for k in keys))]


def _loader(ds: Any, batches: list[list[int]], collator: TrainCollator, num_workers: int) -> torch.utils.data.DataLoader:
    # batch_size=None: each sampler item is already a micro-batch; a private generator keeps the global RNG
    # (dropout, gate noise) untouched by loader creation, so resumed runs draw the same numbers.
    return torch.utils.data.DataLoader(
        _Rows(ds), sampler=batches, batch_size=None, collate_fn=collator, num_workers=num_workers,
        generator=torch.Generator(),
    )


def _as_config(config: TrainConfig | dict[str, Any] | str | Path | None) -> TrainConfig:
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


def _refuse_other_run(run: RunFolder, recorded: dict[str, Any], current: dict[str, Any], only: Sequence[str] | None = None) -> None:
    keys = only or sorted(set(recorded) | set(current))
    diffs = describe_differences({k: recorded.get(k) for k in keys}, {k: current.get(k) for k in keys})
    if diffs:
        raise CheckpointError(
            f"output_dir {run.path} holds a different run; --resume would mix them:\n  " + "\n  ".join(diffs)
            + "\nResume with the recorded settings, or choose another output_dir"
        )


def _check_distributed_type(accelerator: Any) -> None:
    """DDP (or one process) only: the fuser is replicated, the frozen LLMs live outside accelerate."""
    kind = str(accelerator.distributed_type).split(".")[-1]
    if kind in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        raise ConfigError(
            f"c2c train runs data-parallel (DDP) only, but accelerate is configured for {kind}. Launch with a "
            "plain multi-process configuration (torchrun, or accelerate launch without --use_fsdp/--use_deepspeed) "
            "and pass --shard-llms to shard the frozen LLMs across processes"
        )


def _gate_counts(c2c: Any) -> tuple[int, int]:
    states = [s for f in c2c.gate_states() for s in f.values()]
    return sum(int(k) + int(v) for k, v in states), 2 * len(states)


def _load_checkpoint(folder: Path, c2c: Any, optimizer: Any, scheduler: Any, rank: int) -> TrainerState:
    try:
        load_fuser_weights(c2c, folder / FUSER_DIR)
    except CheckpointError as exc:
        raise CheckpointError(f"cannot resume from checkpoint {folder}: {exc}") from exc
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    rng_file = folder / f"rng_state_{rank}.pt"
    if rng_file.is_file():
        load_rng_state(torch.load(rng_file, weights_only=True))
    else:
        logger.warning("%s has no RNG state for process %d (different process count?): random draws will differ", folder, rank)
    return TrainerState.from_file(folder / STATE_NAME)


def _tracker_config(cfg: TrainConfig) -> dict[str, Any]:
    return {k: (v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v)) for k, v in cfg.to_dict().items()}
