"""``c2c train``: flags plus an optional YAML/JSON config file (flags override the file).

Wired into the ``c2c`` app by ``c2c.cli`` (``app.command("train")(train_command)``). The same command runs
under ``python -m c2c train``, ``torchrun ... -m c2c train`` and ``accelerate launch -m c2c train``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["parse_set_options", "train_command"]

_Opt = typer.Option


def parse_set_options(items: list[str]) -> dict[str, Any]:
    """``["fuser.hidden_size=256", "c2c.alignment_shift=1", "lr=1e-3"]`` -> nested dict (values parsed as
    JSON when they parse, else kept as strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        parts = key.replace("-", "_").split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise typer.BadParameter(f"--set {item!r}: {part} is not a mapping")
        node[parts[-1]] = value
    return out


def train_command(
    config: Annotated[Path | None, _Opt("--config", "-c", help="YAML or JSON file with TrainConfig options.")] = None,
    receiver: Annotated[str | None, _Opt(help="Receiver model id or path.")] = None,
    sharer: Annotated[str | None, _Opt(help="Sharer model id or path.")] = None,
    data: Annotated[
        list[str] | None,
        _Opt("--data", "-d", help="Training file(s): .jsonl, .json or .parquet (repeatable, globs ok)."),
    ] = None,
    eval_data: Annotated[list[str] | None, _Opt(help="Evaluation file(s).")] = None,
    output_dir: Annotated[
        str | None, _Opt("--output-dir", "-o", help="Run folder (checkpoints, log, final fuser).")
    ] = None,
    max_steps: Annotated[int | None, _Opt(help="Optimizer steps (overrides --num-epochs).")] = None,
    num_epochs: Annotated[int | None, _Opt(help="Passes over the data.")] = None,
    batch_size: Annotated[int | None, _Opt(help="Conversations per process per micro-batch.")] = None,
    gradient_accumulation_steps: Annotated[int | None, _Opt(help="Micro-batches per optimizer step.")] = None,
    learning_rate: Annotated[float | None, _Opt("--learning-rate", "--lr", help="Peak learning rate (1e-4).")] = None,
    gate_learning_rate: Annotated[
        float | None, _Opt(help="Learning rate of the gate logits (default: --learning-rate).")
    ] = None,
    weight_decay: Annotated[float | None, _Opt(help="AdamW weight decay (0.01; none on gates, norms, biases).")] = None,
    warmup_ratio: Annotated[float | None, _Opt(help="Share of steps with linear warmup (0.1).")] = None,
    max_grad_norm: Annotated[float | None, _Opt(help="Gradient clipping norm (1.0; 0 disables).")] = None,
    max_length: Annotated[
        int | None, _Opt(help="Drop conversations longer than this many receiver tokens (2048).")
    ] = None,
    max_examples: Annotated[int | None, _Opt(help="Use the first N conversations of --data.")] = None,
    eval_size: Annotated[int | None, _Opt(help="Hold out N conversations for evaluation.")] = None,
    eval_fraction: Annotated[float | None, _Opt(help="Hold out this share of conversations for evaluation.")] = None,
    eval_steps: Annotated[int | None, _Opt(help="Evaluate every N steps (default: at the end).")] = None,
    save_steps: Annotated[int | None, _Opt(help="Checkpoint every N steps (0: only at the end).")] = None,
    save_total_limit: Annotated[int | None, _Opt(help="Keep the newest K checkpoints (0: all).")] = None,
    logging_steps: Annotated[int | None, _Opt(help="Log every N steps.")] = None,
    seed: Annotated[int | None, _Opt(help="Random seed (42).")] = None,
    layout: Annotated[str | None, _Opt(help="auto, messages, conversations or prompt_response.")] = None,
    mixed_precision: Annotated[str | None, _Opt(help="auto (bf16 autocast on GPU), no, bf16, fp16.")] = None,
    model_dtype: Annotated[str | None, _Opt(help="Dtype of the frozen LLMs: auto, float32, bfloat16, float16.")] = None,
    shard_llms: Annotated[
        bool | None,
        _Opt("--shard-llms/--no-shard-llms", help="FSDP2 over the frozen LLMs' decoder layers across processes."),
    ] = None,
    init_fuser: Annotated[str | None, _Opt(help="Start from this saved fuser folder instead of a fresh one.")] = None,
    log_with: Annotated[
        list[str] | None, _Opt(help="accelerate tracker(s): tensorboard, wandb, ... (repeatable).")
    ] = None,
    resume: Annotated[
        bool | None, _Opt("--resume/--no-resume", help="Continue from the newest complete checkpoint.")
    ] = None,
    overwrite_output_dir: Annotated[
        bool | None, _Opt("--overwrite-output-dir", help="Delete a previous run in --output-dir.")
    ] = None,
    progress: Annotated[bool | None, _Opt("--progress/--no-progress", help="Show the progress bar.")] = None,
    set_: Annotated[
        list[str] | None, _Opt("--set", help="Any option as KEY=VALUE, nested with dots: --set fuser.hidden_size=256.")
    ] = None,
) -> None:
    """Train a fuser for a receiver/sharer pair on chat data (flags override --config)."""
    # Imported here, not at the top: c2c.train pulls in torch, datasets and accelerate, and `c2c --help`
    # (which imports this module to register the command) should not wait for them.
    from c2c.train.config import TrainConfig, load_config_file, merge_options
    from c2c.train.errors import CheckpointError, ConfigError, DataError

    main = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(level=logging.INFO if main else logging.WARNING, format="%(message)s")
    logging.getLogger("c2c.train").setLevel(logging.INFO if main else logging.WARNING)
    flags = {k: v for k, v in locals().items() if k in TrainConfig.field_names() and v is not None}
    try:
        values = load_config_file(config) if config is not None else {}
        values = merge_options(merge_options(values, parse_set_options(set_ or [])), flags)
        cfg = TrainConfig.from_dict(values, source=str(config) if config else "options")
        from c2c.train.trainer import train

        result = train(None, None, cfg)
    except (ConfigError, DataError, CheckpointError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    if main:
        s = result.train_stats
        typer.echo(
            f"trained {result.global_step} steps on {result.num_train} conversations "
            f"({s.n_too_long} dropped as longer than {s.max_length} tokens, {s.n_nothing_to_fuse} with nothing to fuse)"
        )
        if result.eval_loss is not None:
            typer.echo(f"eval loss {result.eval_loss:.4f}, open gates {result.open_gates}/{result.total_gates}")
        typer.echo(f"fuser saved to {result.final_dir}")
