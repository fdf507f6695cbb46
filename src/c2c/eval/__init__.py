"""Evaluation: baselines and C2C behind one interface, local benchmark runners, latency, reports.

Python use::

    from c2c.eval import load_benchmark, ReceiverOnly, TextToText, C2CMode, evaluate, EvalConfig, write_run
    bench = load_benchmark("mmlu_redux/", subject="anatomy", limit=100)
    run = evaluate([ReceiverOnly(receiver, tok_r), C2CMode(c2c_model)], bench, EvalConfig(batch_size=16))
    write_run(run, "results/anatomy.json")

CLI: ``c2c eval BENCH... --modes receiver,sharer,t2t,routing,c2c,oracle --fuser DIR`` (see :mod:`c2c.eval.cli`).
"""

from c2c.eval.benchmarks import FORMATS, Benchmark, Question, load_benchmark
from c2c.eval.factory import MODE_NAMES, ModeOptions, build_modes
from c2c.eval.latency import summarize
from c2c.eval.modes import (
    C2CMode,
    Mode,
    ModeOutput,
    PerplexityRule,
    Query,
    ReceiverOnly,
    Routing,
    SharerOnly,
    SubjectRule,
    TextToText,
)
from c2c.eval.oracle import CacheOracle, Exemplar
from c2c.eval.parsing import ParsedChoice, exact_match, parse_choice
from c2c.eval.prompts import PromptConfig
from c2c.eval.report import fit_subject_routing, load_runs, make_report, markdown_report, write_run
from c2c.eval.runner import EvalConfig, evaluate, exemplars_from_questions
from c2c.hf import StageTimer

__all__ = [
    "FORMATS",
    "MODE_NAMES",
    "Benchmark",
    "C2CMode",
    "CacheOracle",
    "EvalConfig",
    "Exemplar",
    "Mode",
    "ModeOptions",
    "ModeOutput",
    "ParsedChoice",
    "PerplexityRule",
    "PromptConfig",
    "Query",
    "Question",
    "ReceiverOnly",
    "Routing",
    "SharerOnly",
    "StageTimer",
    "SubjectRule",
    "TextToText",
    "build_modes",
    "evaluate",
    "exact_match",
    "exemplars_from_questions",
    "fit_subject_routing",
    "load_benchmark",
    "load_runs",
    "make_report",
    "markdown_report",
    "parse_choice",
    "summarize",
    "write_run",
]
