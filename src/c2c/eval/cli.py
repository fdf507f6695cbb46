"""``c2c eval run`` / ``c2c eval report``: run any set of modes on benchmark files; write run JSON,
Markdown report and figures (``eval_app`` is added to the ``c2c`` app as its ``eval`` group).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer

from c2c.cli_options import parse_dtype
from c2c.eval.prompts import NOTE_TEMPLATE

__all__ = ["eval_app", "eval_command", "load_hf", "report_command", "validate_options"]

eval_app = typer.Typer(
    help="Evaluate baselines and C2C on local benchmark files.", no_args_is_help=True, add_completion=False
)


def _fail(message: str) -> NoReturn:
    """``error: <message>`` on stderr, exit code 2, no traceback (as every c2c command does)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


_MAX_SEED = 2**64 - 1  # torch.manual_seed's upper bound


def validate_options(
    *,
    modes: list[str],
    fuser: str | None,
    batch_size: int,
    max_new_tokens: int,
    limit: int | None,
    seed: int,
    note_max_tokens: int,
    oracle_model: str,
    oracle_shots: int,
) -> None:
    """Check ``c2c eval run``'s options before anything is loaded; exit with a clear error on the first bad one."""
    from c2c.eval.factory import MODE_NAMES

    if not modes:
        _fail(f"--modes is empty; give a comma-separated list from {', '.join(MODE_NAMES)}")
    unknown = [m for m in modes if m not in MODE_NAMES]
    if unknown:
        _fail(f"--modes: unknown modes {unknown}; choose from {', '.join(MODE_NAMES)}")
    if "c2c" in modes and fuser is None:
        _fail("--modes c2c needs a saved fuser: pass --fuser <folder or hub id>")
    for name, value, low in (
        ("--batch-size", batch_size, 1),
        ("--max-new-tokens", max_new_tokens, 1),
        ("--note-max-tokens", note_max_tokens, 1),
        ("--oracle-shots", oracle_shots, 0),
        ("--limit", limit, 1),
    ):
        if value is not None and value < low:
            _fail(f"{name} must be at least {low}, got {value}")
    if not 0 <= seed <= _MAX_SEED:
        _fail(f"--seed must be between 0 and 2**64 - 1, got {seed}")
    if oracle_model not in ("receiver", "sharer"):
        _fail(f"--oracle-model must be 'receiver' or 'sharer', got {oracle_model!r}")


def _device(name: str | None) -> str:
    import torch

    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def load_hf(path: str, dtype: Any, device: str, role: str) -> tuple[Any, Any]:
    """A causal LM (eval mode) and its tokenizer from a hub id or a local folder."""
    from c2c.hf import load_causal_lm, load_tokenizer

    model = load_causal_lm(path, role=role, dtype=dtype, device_map=device)
    return model, load_tokenizer(path, role=role, required=True)


def eval_command(
    benchmarks: Annotated[list[Path], typer.Argument(help="Benchmark files / folders / globs (one run each).")],
    modes: Annotated[
        str, typer.Option(help="Comma-separated: receiver, sharer, t2t, routing, c2c, oracle, few_shot.")
    ] = "receiver,sharer,t2t,c2c",
    fuser: Annotated[
        Optional[str], typer.Option(help="Saved fuser folder (needed for c2c; records both models).")
    ] = None,
    receiver: Annotated[Optional[str], typer.Option(help="Receiver id or path (default: the fuser's).")] = None,
    sharer: Annotated[Optional[str], typer.Option(help="Sharer id or path (default: the fuser's).")] = None,
    format: Annotated[str, typer.Option("--format", help="auto, mmlu-redux, openbookqa, arc, ceval or qa.")] = "auto",
    subject: Annotated[Optional[str], typer.Option(help="Keep only these subjects (comma-separated).")] = None,
    split: Annotated[Optional[str], typer.Option(help="Keep only these splits (comma-separated).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="First N questions after filtering.")] = None,
    drop_flagged: Annotated[bool, typer.Option(help="MMLU-Redux: keep only error_type == 'ok'.")] = False,
    batch_size: Annotated[int, typer.Option(help="Questions per generate call.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="New tokens per answer (protocol: 64).")] = 64,
    seed: Annotated[int, typer.Option(help="Seed recorded with the run (decoding is greedy).")] = 0,
    note_template: Annotated[str, typer.Option(help="T2T: the sharer's note prompt ({question}).")] = NOTE_TEMPLATE,
    note_max_tokens: Annotated[int, typer.Option(help="T2T: length cap of the note.")] = 64,
    routing_table: Annotated[
        Optional[Path],
        typer.Option(
            help="Routing by subject: JSON {subject: receiver|sharer}"
            " or a previous run JSON (default: perplexity rule)."
        ),
    ] = None,
    oracle_model: Annotated[str, typer.Option(help="Oracle / few-shot model: receiver or sharer.")] = "receiver",
    oracle_shots: Annotated[int, typer.Option(help="Oracle / few-shot: exemplars per question.")] = 5,
    exemplars: Annotated[
        Optional[Path],
        typer.Option(
            help="Oracle / few-shot exemplar file (default: the benchmark itself, never the question being asked)."
        ),
    ] = None,
    thinking: Annotated[bool, typer.Option(help="Let thinking models think (Qwen3 enable_thinking).")] = False,
    dtype: Annotated[
        Optional[str], typer.Option(help="LLM dtype: float32, bfloat16, float16 (default: saved).")
    ] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda when available).")] = None,
    out: Annotated[Path, typer.Option(help="Output folder: <name>.json per run, report.md, figures.")] = Path(
        "eval_results"
    ),
    name: Annotated[Optional[str], typer.Option(help="Run name prefix (default: benchmark-time).")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run modes on benchmark files; write one JSON per run and refresh the report in OUT."""
    from c2c.eval.benchmarks import load_benchmark
    from c2c.eval.factory import ModeOptions, build_modes
    from c2c.eval.factory import routing_table as read_routing
    from c2c.eval.report import make_report, write_run
    from c2c.eval.runner import EvalConfig, evaluate, exemplars_from_questions

    names = [m.strip() for m in modes.split(",") if m.strip()]
    validate_options(
        modes=names,
        fuser=fuser,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        limit=limit,
        seed=seed,
        note_max_tokens=note_max_tokens,
        oracle_model=oracle_model,
        oracle_shots=oracle_shots,
    )
    try:
        torch_dtype = parse_dtype(dtype)
    except typer.BadParameter as exc:
        _fail(f"--dtype: {exc.message}")
    try:
        benches = [
            load_benchmark(b, format=format, subject=subject, split=split, limit=limit, drop_flagged=drop_flagged)
            for b in benchmarks
        ]
    except (ValueError, OSError) as exc:
        _fail(str(exc))

    dev = _device(device)
    c2c_model, models = None, {}
    try:
        if fuser is not None:
            from c2c.model import C2CModel

            typer.echo(f"loading fuser {fuser} ...", err=True)
            c2c_model = C2CModel.from_pretrained(
                fuser, receiver=receiver, sharer=sharer, dtype=torch_dtype, device_map=dev
            )
            c2c_model.fusers.to(dev)
        else:
            for role, model_path in (("receiver", receiver), ("sharer", sharer)):
                if model_path is not None:
                    typer.echo(f"loading {role} {model_path} ...", err=True)
                    models[role], models[f"{role}_tokenizer"] = load_hf(model_path, torch_dtype, dev, role)
    except (OSError, ValueError) as exc:  # a missing folder, a wrong pair, a corrupted file
        _fail(str(exc))

    written: list[Path] = []
    for bench in benches:
        try:
            pool = load_benchmark(exemplars, format=format).questions if exemplars else bench.questions
            options = ModeOptions(
                note_template=note_template,
                note_max_new_tokens=note_max_tokens,
                routing=read_routing(routing_table) if routing_table else None,
                oracle_model=oracle_model,
                oracle_shots=oracle_shots,
                exemplars=exemplars_from_questions(pool),
                enable_thinking=thinking,
            )
            mode_objs = build_modes(names, c2c_model=c2c_model, options=options, **models)
        except (ValueError, OSError) as exc:
            _fail(str(exc))
        config = EvalConfig(batch_size=batch_size, max_new_tokens=max_new_tokens, seed=seed, progress=progress)
        run_name = f"{name}-{bench.name}" if name else None
        run = evaluate(
            mode_objs,
            bench,
            config,
            run_name=run_name,
            extra_info={
                "models": {"fuser": fuser, "receiver": receiver, "sharer": sharer, "dtype": dtype, "device": dev}
            },
        )
        path = write_run(run, out / f"{run['run']['name']}.json")
        written.append(path)
        summary = ", ".join(f"{m} {v['accuracy'] * 100:.2f}%" for m, v in run["metrics"].items())
        typer.echo(f"{bench.name} ({len(bench)} questions): {summary} -> {path}")
    report = make_report([out], out)
    typer.echo(f"report: {report['markdown']}")


def report_command(
    runs: Annotated[list[Path], typer.Argument(help="Run JSON files or folders of them.")],
    out: Annotated[Path, typer.Option(help="Folder for report.md and the figures.")] = Path("eval_report"),
) -> None:
    """Regenerate the Markdown tables and figures from run JSON files."""
    from c2c.eval.report import make_report

    try:
        written = make_report(runs, out)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    for key, path in written.items():
        typer.echo(f"{key}: {path}")


eval_app.command("run")(eval_command)
eval_app.command("report")(report_command)
