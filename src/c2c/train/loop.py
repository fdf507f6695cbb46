"""The training loop: optimizer steps from the current :class:`TrainerState` to the last one, with
logging, evaluation, checkpoints and callbacks.

The data position (epoch, micro-batch) lives in the state, and the data order is a pure function of
(seed, epoch, global batch), so a loop started from a restored checkpoint reads exactly the batches an
uninterrupted run would have read next.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from datasets import Dataset
from torch import nn
from tqdm.auto import tqdm

from c2c.batch import C2CBatch
from c2c.fuser import gate_temperature
from c2c.model import C2CModel
from c2c.train.batching import TrainCollator, epoch_batches, micro_batch_loader
from c2c.train.checkpoint import (
    FUSER_DIR,
    OPTIMIZER_NAME,
    SCHEDULER_NAME,
    STATE_NAME,
    RunFolder,
    TrainerState,
    rng_file,
    rng_state,
)
from c2c.train.config import TrainConfig, check_temperatures
from c2c.train.step import StepOutput, optimizer_step

__all__ = ["LoopOutcome", "StepInfo", "TrainLoop", "gate_counts"]

Callback = Callable[["StepInfo"], None]


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
class LoopOutcome:
    """What the loop hands back: the last logged training loss (token-weighted over its logging window),
    the last evaluation, and the throughput in receiver tokens per second over all processes."""

    train_loss: float | None
    eval_metrics: dict[str, float] = field(default_factory=dict)
    tokens_per_second: float = 0.0


def gate_counts(c2c: C2CModel) -> tuple[int, int]:
    """Open hard gates and all gates (key and value gate of every fused layer of every fuser)."""
    states = [s for f in c2c.gate_states() for s in f.values()]
    return sum(int(k) + int(v) for k, v in states), 2 * len(states)


class TrainLoop:
    """Optimizer steps from ``state`` to ``state.total_steps`` (logging, eval, checkpoints)."""

    cfg: TrainConfig
    accelerator: Accelerator
    c2c: C2CModel
    module: nn.Module  # the prepared FuserModule (DDP-wrapped across processes)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    collator: TrainCollator
    train_ds: Dataset
    eval_ds: Dataset | None
    run_folder: RunFolder
    state: TrainerState
    callbacks: list[Callback]
    tracking: bool
    temperatures: tuple[float, float]  # gate temperature at the first and the last step
    world: int
    rank: int
    device: torch.device

    def __init__(
        self,
        *,
        cfg: TrainConfig,
        accelerator: Accelerator,
        c2c: C2CModel,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        collator: TrainCollator,
        train_ds: Dataset,
        eval_ds: Dataset | None,
        run_folder: RunFolder,
        state: TrainerState,
        callbacks: Sequence[Callback] = (),
        tracking: bool = False,
    ) -> None:
        self.cfg, self.accelerator, self.c2c, self.module = cfg, accelerator, c2c, module
        self.optimizer, self.scheduler, self.collator = optimizer, scheduler, collator
        self.train_ds, self.eval_ds, self.run_folder, self.state = train_ds, eval_ds, run_folder, state
        self.callbacks, self.tracking = list(callbacks), tracking
        fuser_cfg = c2c.fuser_list[0].config
        self.temperatures = (
            cfg.gate_temperature_start or fuser_cfg.temperature_start,
            cfg.gate_temperature_end or fuser_cfg.temperature_end,
        )
        check_temperatures(*self.temperatures)
        self.world = accelerator.num_processes
        self.rank = accelerator.process_index
        self.device = accelerator.device

    # ------------------------------------------------------------------ data

    def windows(self) -> Iterator[list[C2CBatch]]:
        """Accumulation windows from the saved data position on (crossing epochs as needed)."""
        cfg, st = self.cfg, self.state
        while True:
            batches = epoch_batches(
                len(self.train_ds),
                batch_size=cfg.batch_size,
                world_size=self.world,
                rank=self.rank,
                seed=cfg.seed,
                epoch=st.epoch,
            )
            if st.micro_batch >= len(batches):
                st.epoch, st.micro_batch = st.epoch + 1, 0
                continue
            window: list[C2CBatch] = []
            for batch in micro_batch_loader(self.train_ds, batches[st.micro_batch :], self.collator, cfg.num_workers):
                window.append(batch)
                if len(window) == cfg.gradient_accumulation_steps:
                    yield window
                    window = []
            if window:  # the epoch's last, shorter window
                yield window

    # ------------------------------------------------------------------ one step, evaluation, checkpoint

    def step(self, window: list[C2CBatch]) -> StepOutput:
        return optimizer_step(
            self.accelerator, self.module, self.optimizer, self.scheduler, window, max_grad_norm=self.cfg.max_grad_norm
        )

    def evaluate(self) -> dict[str, float]:
        """Token-weighted mean loss over the eval set (all processes), and the hard-gate counts."""
        assert self.eval_ds is not None
        acc, c2c = self.accelerator, self.c2c
        batches = epoch_batches(
            len(self.eval_ds),
            batch_size=self.cfg.batch_size,
            world_size=self.world,
            rank=self.rank,
            seed=0,
            epoch=0,
            shuffle=False,
        )
        total = torch.zeros(2, device=self.device, dtype=torch.float64)
        c2c.eval()
        try:
            with torch.no_grad(), acc.autocast():
                for batch in micro_batch_loader(self.eval_ds, batches, self.collator, 0):
                    out = c2c(batch.to(self.device))
                    assert out.loss is not None
                    n = torch.tensor(float(out.num_tokens), device=self.device, dtype=torch.float64)
                    total += torch.stack([out.loss.double() * out.num_tokens, n])
        finally:
            c2c.train()
        total = acc.reduce(total, "sum")
        open_gates, total_gates = gate_counts(c2c)
        return {
            "eval_loss": float(total[0] / total[1]) if total[1] > 0 else float("nan"),
            "eval_tokens": int(total[1]),
            "open_gates": open_gates,
            "total_gates": total_gates,
        }

    def save_checkpoint(self) -> Path:
        """Every process writes its RNG state; the main process the fuser, optimizer, scheduler and the state
        file (last: it marks the folder complete). Collective."""
        acc, st = self.accelerator, self.state

        def write_local(folder: Path) -> None:
            torch.save(rng_state(), rng_file(folder, self.rank))

        def write_shared(folder: Path) -> None:
            self.c2c.save_pretrained(str(folder / FUSER_DIR))
            torch.save(self.optimizer.state_dict(), folder / OPTIMIZER_NAME)
            torch.save(self.scheduler.state_dict(), folder / SCHEDULER_NAME)
            (folder / STATE_NAME).write_text(st.to_json())

        ckpts = self.run_folder.checkpoints
        ckpts.keep = self.cfg.save_total_limit
        return ckpts.save(
            st.global_step,
            write_shared=write_shared,
            write_local=write_local,
            is_main=acc.is_main_process,
            barrier=acc.wait_for_everyone,
        )

    def log(self, record: dict[str, Any]) -> None:
        self.state.log_history.append(record)
        if self.accelerator.is_main_process:
            with open(self.run_folder.log_file, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.tracking:
            self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])

    # ------------------------------------------------------------------ the loop

    def run(self) -> LoopOutcome:
        cfg, st, acc = self.cfg, self.state, self.accelerator
        self.c2c.train()
        eval_metrics: dict[str, float] = {}
        bar = tqdm(
            total=st.total_steps,
            initial=st.global_step,
            desc="c2c train",
            dynamic_ncols=True,
            disable=not (cfg.progress and acc.is_local_main_process),
        )
        window_loss, window_tokens, last_loss = 0.0, 0, None
        seen, t0 = 0, time.perf_counter()
        windows = self.windows()
        try:
            while st.global_step < st.total_steps:
                temperature = gate_temperature(st.global_step, st.total_steps, *self.temperatures)
                self.c2c.set_gate_temperature(temperature)
                lr = float(self.scheduler.get_last_lr()[0])
                window = next(windows)
                out = self.step(window)
                if not math.isfinite(out.loss):
                    raise FloatingPointError(
                        f"training loss became {out.loss} at step {st.global_step + 1}; lower learning_rate or check the data"
                    )
                st.global_step += 1
                st.micro_batch += len(window)
                st.tokens_seen += out.tokens
                seen += out.seen
                window_loss, window_tokens = window_loss + out.loss * out.tokens, window_tokens + out.tokens
                last = st.global_step == st.total_steps
                open_gates, total_gates = gate_counts(self.c2c)  # hard-gate state: a few scalars
                if st.global_step % cfg.logging_steps == 0 or last:
                    last_loss = window_loss / window_tokens
                    self.log(
                        {
                            "step": st.global_step,
                            "epoch": st.epoch,
                            "loss": last_loss,
                            "learning_rate": lr,
                            "temperature": temperature,
                            "grad_norm": out.grad_norm,
                            "open_gates": open_gates,
                            "total_gates": total_gates,
                            "tokens_seen": st.tokens_seen,
                            "tokens_per_second": seen / max(time.perf_counter() - t0, 1e-9),
                        }
                    )
                    window_loss, window_tokens = 0.0, 0
                if self.eval_ds is not None and ((cfg.eval_steps and st.global_step % cfg.eval_steps == 0) or last):
                    eval_metrics = self.evaluate()
                    open_gates = int(eval_metrics["open_gates"])
                    if st.best_eval_loss is None or eval_metrics["eval_loss"] < st.best_eval_loss:
                        st.best_eval_loss = eval_metrics["eval_loss"]
                    self.log({"step": st.global_step, **eval_metrics})
                if cfg.save_steps and (st.global_step % cfg.save_steps == 0 or last):
                    self.save_checkpoint()
                bar.set_postfix(
                    loss=f"{out.loss:.4f}",
                    temp=f"{temperature:.3g}",
                    gates=f"{open_gates}/{total_gates}",
                    refresh=False,
                )
                bar.update(1)
                info = StepInfo(st.global_step, st.total_steps, out.loss, lr, temperature, out.grad_norm, out.tokens)
                for cb in self.callbacks:
                    cb(info)
        finally:
            bar.close()
        if self.eval_ds is not None and not eval_metrics:  # resumed at the end: evaluate once
            eval_metrics = self.evaluate()
        throughput = seen / max(time.perf_counter() - t0, 1e-9) if seen else 0.0
        if last_loss is None and st.log_history:
            last_loss = next((r["loss"] for r in reversed(st.log_history) if "loss" in r), None)
        return LoopOutcome(last_loss, eval_metrics, throughput)
