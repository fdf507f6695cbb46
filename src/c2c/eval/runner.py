"""Run answering modes over a benchmark: batched generation, strict scoring, per-question records.

Scoring rules: multiple choice is correct only when the strictly parsed letter (:func:`parse_choice`)
equals the gold letter; open QA needs an exact match. An unparseable answer is wrong and listed under
``unparsed``; a query whose generation raised is wrong, keeps the error text, and is listed under ``errors``.
Nothing is skipped: every metric's denominator is the number of questions.

When a batch raises, each of its queries is retried alone, so one bad query cannot sink its neighbours.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import random
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from c2c.eval.benchmarks import Benchmark, Question
from c2c.eval.latency import summarize, summarize_stages
from c2c.eval.modes import Mode, ModeOutput, Query
from c2c.eval.oracle import Exemplar
from c2c.eval.parsing import exact_match, option_letters, parse_choice
from c2c.eval.prompts import PromptConfig, format_options

__all__ = [
    "EvalConfig",
    "build_query",
    "environment",
    "evaluate",
    "exemplars_from_questions",
    "mode_metrics",
    "run_mode",
    "score",
]

SCHEMA_VERSION = 1


@dataclass
class EvalConfig:
    """Protocol of one run (recorded in its JSON). Defaults are the paper's: greedy, 64 new tokens."""

    batch_size: int = 8
    max_new_tokens: int = 64
    seed: int = 0
    prompts: PromptConfig = field(default_factory=PromptConfig)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


def build_query(question: Question, prompts: PromptConfig) -> Query:
    """The :class:`Query` every mode answers for ``question``."""
    if question.is_multiple_choice:
        body = format_options(question.question, question.choices)
        letters = ", ".join(option_letters(len(question.choices)))
        prompt = prompts.mc_template.format(question=body, letters=letters)
        plain = format_options(question.question, question.choices, headings=False)
    else:
        prompt = prompts.qa_template.format(question=f"Question: {question.question.strip()}")
        plain = question.question.strip()
    return Query(question.uid, prompt.strip(), plain, question.subject, prompts.system_prompt)


def exemplars_from_questions(questions: Sequence[Question]) -> list[Exemplar]:
    """Solved exemplars (question, options, "The correct answer is X") for the oracle / few-shot modes."""
    out = []
    for q in questions:
        if q.is_multiple_choice:
            text = f"{format_options(q.question, q.choices)}\nThe correct answer is {q.answer}"
        else:
            text = f"Question: {q.question.strip()}\nAnswer: {q.answers[0]}"
        out.append(Exemplar(q.uid, text, q.subject))
    return out


def score(question: Question, text: str) -> dict[str, Any]:
    """``parsed`` letter (MC), ``parse_method`` and ``correct`` of one answer."""
    if question.is_multiple_choice:
        parsed = parse_choice(text, question.choices)
        return {"parsed": parsed.letter, "parse_method": parsed.method, "correct": parsed.letter == question.answer}
    return {"parsed": None, "parse_method": "exact_match", "correct": exact_match(text, question.answers)}


def _timed(mode: Mode, queries: list[Query], config: EvalConfig) -> tuple[ModeOutput, float]:
    start = time.perf_counter()
    out = mode.generate(queries, max_new_tokens=config.max_new_tokens)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    if len(out.texts) != len(queries):
        raise RuntimeError(f"mode {mode.name!r} returned {len(out.texts)} answers for {len(queries)} queries")
    return out, time.perf_counter() - start


def _record(
    question: Question,
    mode: Mode,
    text: str,
    extras: dict[str, Any],
    timings: dict[str, float],
    batch: int,
    size: int,
    error: str | None = None,
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "uid": question.uid,
        "mode": mode.name,
        "subject": question.subject,
        "gold": question.answer if question.is_multiple_choice else question.answers,
        "response": text,
        **(score(question, text) if error is None else {"parsed": None, "parse_method": "error", "correct": False}),
        "error": error,
        "batch": batch,
        "batch_size": size,
        "timings": timings,
    }
    rec.update({k: v for k, v in extras.items() if k not in rec})
    return rec


def run_mode(mode: Mode, questions: Sequence[Question], config: EvalConfig) -> list[dict[str, Any]]:
    """Answer ``questions`` with ``mode`` in batches of ``config.batch_size``; one record per question.

    ``batch`` in a record numbers the generate call that answered it (-1: every attempt raised).
    """
    records: list[dict[str, Any]] = []
    calls = 0
    bar = tqdm(total=len(questions), desc=f"eval {mode.name}", disable=not config.progress, leave=False)
    for start in range(0, len(questions), config.batch_size):
        batch = list(questions[start : start + config.batch_size])
        queries = [build_query(q, config.prompts) for q in batch]
        try:
            out, seconds = _timed(mode, queries, config)
            timings = {**out.timings, "total": seconds}
            extras = out.extras or [{} for _ in batch]
            for q, text, extra in zip(batch, out.texts, extras):
                records.append(_record(q, mode, text, extra, timings, calls, len(batch)))
            calls += 1
        except Exception:
            for q, query in zip(batch, queries):
                try:
                    out, seconds = _timed(mode, [query], config)
                    extra = out.extras[0] if out.extras else {}
                    records.append(_record(q, mode, out.texts[0], extra, {**out.timings, "total": seconds}, calls, 1))
                    calls += 1
                except Exception as exc:
                    records.append(_record(q, mode, "", {}, {}, -1, 1, error=f"{type(exc).__name__}: {exc}"))
        bar.update(len(batch))
    bar.close()
    return records


def mode_metrics(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy (errors and unparsed answers count as wrong), per subject, and latency summaries."""
    n = len(records)
    correct = sum(bool(r["correct"]) for r in records)
    unparsed = [r["uid"] for r in records if r["error"] is None and r["parse_method"] in ("none", "conflict")]
    errors = [r["uid"] for r in records if r["error"] is not None]
    by_subject: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        by_subject[r["subject"] or "-"].append(bool(r["correct"]))
    # One latency sample per batch (all questions of a batch share its timings).
    batches: dict[int, dict[str, float]] = {}
    for r in records:
        if r["timings"]:
            batches.setdefault(r["batch"], r["timings"])
    totals = [t["total"] for t in batches.values()]
    timed = sum(1 for r in records if r["timings"])
    decode_per_token = [
        r["timings"]["decode"] / r["new_tokens"] for r in records if r["timings"].get("decode") and r.get("new_tokens")
    ]
    return {
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "unparsed": unparsed,
        "errors": errors,
        "parse_methods": dict(sorted(_count(r["parse_method"] for r in records).items())),
        "by_subject": {
            s: {"n": len(v), "correct": sum(v), "accuracy": sum(v) / len(v)} for s, v in sorted(by_subject.items())
        },
        "latency": {
            "unit": "seconds per batch",
            "batches": len(batches),
            "stages": summarize_stages(list(batches.values())),
            "seconds_per_question": sum(totals) / timed if timed else None,
            "questions_per_second": timed / sum(totals) if totals and sum(totals) > 0 else None,
            "decode_seconds_per_token": summarize(decode_per_token),
        },
        "new_tokens": summarize([r["new_tokens"] for r in records if r.get("new_tokens") is not None]),
    }


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for x in items:
        out[str(x)] += 1
    return out


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Package versions and machine facts recorded with every run."""
    pkgs = ("c2c", "torch", "transformers", "datasets", "tokenizers", "accelerate", "safetensors", "numpy")
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "packages": {p: _version(p) for p in pkgs},
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else [],
    }
    return env


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def evaluate(
    modes: Sequence[Mode],
    benchmark: Benchmark,
    config: EvalConfig | None = None,
    *,
    run_name: str | None = None,
    extra_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run every mode on every question of ``benchmark``; returns the run document (see :mod:`report`).

    The document holds ``run`` (name, time, benchmark, protocol config, seed, modes' configs, package
    versions and machine), ``metrics`` per mode and ``records`` (one per question and mode).
    """
    config = config or EvalConfig()
    names = [m.name for m in modes]
    if len(set(names)) != len(names):
        raise ValueError(f"mode names must be unique within a run, got {names}; pass name= to tell them apart")
    if not modes:
        raise ValueError("give at least one mode to evaluate")
    seed_everything(config.seed)
    started = _dt.datetime.now(_dt.timezone.utc)
    records: list[dict[str, Any]] = []
    for mode in modes:
        records.extend(run_mode(mode, benchmark.questions, config))
    metrics = {name: mode_metrics([r for r in records if r["mode"] == name]) for name in names}
    questions = {
        q.uid: {"question": q.question, "choices": q.choices, "subject": q.subject, "split": q.split, "meta": q.meta}
        for q in benchmark.questions
    }
    return {
        "schema": SCHEMA_VERSION,
        "run": {
            "name": run_name or f"{benchmark.name}-{started.strftime('%Y%m%d-%H%M%S')}",
            "started": started.isoformat(),
            "seconds": (_dt.datetime.now(_dt.timezone.utc) - started).total_seconds(),
            "benchmark": {
                "name": benchmark.name,
                "format": benchmark.format,
                "kind": benchmark.kind,
                "files": benchmark.files,
                "filters": benchmark.filters,
                "n": len(benchmark),
            },
            "config": asdict(config),
            "seed": config.seed,
            "modes": [m.describe() for m in modes],
            "environment": environment(),
            **(extra_info or {}),
        },
        "metrics": metrics,
        "questions": questions,
        "records": records,
    }
