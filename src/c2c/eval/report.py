"""Run documents on disk, and the Markdown tables and figures made from them.

A run document (one JSON per :func:`c2c.eval.runner.evaluate` call) is the single source: tables and
figures are regenerated from any set of them with :func:`make_report` (``c2c eval report``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from c2c.eval.latency import STAGES

__all__ = [
    "fit_subject_routing",
    "load_runs",
    "make_report",
    "markdown_report",
    "plot_accuracy",
    "plot_accuracy_vs_latency",
    "plot_gates",
    "write_run",
]


def write_run(run: dict[str, Any], path: str | Path) -> Path:
    """Write a run document as indented UTF-8 JSON (directories created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    return path


def load_runs(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Read run documents; a directory contributes every ``*.json`` run in it."""
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.glob("*.json")) if p.is_dir() else [p])
    runs = []
    for f in files:
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read run file {f}: {exc}") from exc
        if not isinstance(doc, dict) or "metrics" not in doc or "run" not in doc:
            continue  # not a run document (e.g. a perf-suite result next to it)
        doc.setdefault("_path", str(f))
        runs.append(doc)
    if not runs:
        raise ValueError(f"no run documents (JSON with 'run' and 'metrics') in {[str(p) for p in paths]}")
    return runs


def _bench_keys(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Column name per run: the benchmark name, made unique with the run name when repeated."""
    names = [r["run"]["benchmark"]["name"] for r in runs]
    return [n if names.count(n) == 1 else f"{n} ({r['run']['name']})" for n, r in zip(names, runs)]


def _modes(runs: Sequence[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for r in runs:
        seen += [m for m in r["metrics"] if m not in seen]
    return seen


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def markdown_report(runs: Sequence[dict[str, Any]]) -> str:
    """Accuracy table (modes x benchmarks, with the average) and one latency table per run."""
    keys, modes = _bench_keys(runs), _modes(runs)
    lines = ["## Accuracy (%)", "", "| mode | " + " | ".join(keys) + " | average |", "|---" * (len(keys) + 2) + "|"]
    for mode in modes:
        accs = [r["metrics"][mode]["accuracy"] * 100 if mode in r["metrics"] else None for r in runs]
        present = [a for a in accs if a is not None]
        avg = sum(present) / len(present) if present else None
        lines.append(f"| {mode} | " + " | ".join(_fmt(a, 2) for a in accs) + f" | {_fmt(avg, 2)} |")
    lines.append("")
    lines.append("Unparsed answers and generation errors count as wrong (their ids are listed in the run JSON).")
    for key, run in zip(keys, runs):
        metrics = run["metrics"]
        stages = [s for s in STAGES if any(s in m["latency"]["stages"] for m in metrics.values())]
        info = run["run"]
        lines += [
            "",
            f"## {key}: {info['benchmark']['n']} questions, batch size {info['config']['batch_size']}",
            "",
            "Median seconds per batch for each stage; s/question = total time / questions.",
            "",
            "| mode | accuracy % | unparsed | errors | s/question | " + " | ".join(stages) + " |",
            "|---" * (5 + len(stages)) + "|",
        ]
        for mode, m in metrics.items():
            med = [m["latency"]["stages"].get(s, {}).get("median") for s in stages]
            lines.append(
                f"| {mode} | {_fmt(m['accuracy'] * 100, 2)} | {len(m['unparsed'])} | {len(m['errors'])} | "
                f"{_fmt(m['latency']['seconds_per_question'], 4)} | " + " | ".join(_fmt(v, 4) for v in med) + " |"
            )
    return "\n".join(lines) + "\n"


def plot_accuracy(runs: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Grouped bars: accuracy of each mode on each benchmark."""
    keys, modes = _bench_keys(runs), _modes(runs)
    fig = Figure(figsize=(max(5.0, 1.2 * len(keys) * max(1, len(modes)) / 2), 3.6), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(modes))
    for j, mode in enumerate(modes):
        xs = [i + (j - (len(modes) - 1) / 2) * width for i in range(len(keys))]
        ys = [r["metrics"][mode]["accuracy"] * 100 if mode in r["metrics"] else 0.0 for r in runs]
        ax.bar(xs, ys, width=width, label=mode)
    ax.set_xticks(range(len(keys)), keys, rotation=15)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize="small", ncols=min(4, len(modes)))
    ax.set_title("Accuracy per mode")
    return _save(fig, path)


def plot_accuracy_vs_latency(runs: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Scatter: seconds per question (x, log scale) against accuracy (y), one point per mode and run."""
    keys, modes = _bench_keys(runs), _modes(runs)
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    markers = "osD^vP*X"
    for j, mode in enumerate(modes):
        for i, (key, run) in enumerate(zip(keys, runs)):
            m = run["metrics"].get(mode)
            spq = m and m["latency"]["seconds_per_question"]
            if not spq:
                continue
            ax.scatter(
                [spq],
                [m["accuracy"] * 100],
                color=f"C{j}",
                marker=markers[i % len(markers)],
                label=mode if i == 0 else None,
            )
            ax.annotate(key, (spq, m["accuracy"] * 100), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_ylim(-2, 102)
    ax.set_xlabel("seconds per question")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy vs latency")
    if modes:
        ax.legend(fontsize="small")
    return _save(fig, path)


def _gate_panels(runs: Sequence[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    panels, seen = [], set()
    for run in runs:
        for mode in run["run"].get("modes", []):
            for g in mode.get("gates") or []:
                sig = json.dumps(g["layers"], sort_keys=True)
                if sig in seen:
                    continue  # the same fuser evaluated on several benchmarks
                seen.add(sig)
                panels.append((f"{mode['name']} (sharer {g['sharer']})", g["layers"]))
    return panels


def plot_gates(runs: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Per-layer gate states of every C2C mode: key / value rows, receiver layers as columns.

    Colour is the gate logit where recorded (open where > 0), else the hard state. None when no run has
    gates.
    """
    panels = _gate_panels(runs)
    if not panels:
        return None
    fig = Figure(figsize=(7.0, 1.3 + 1.1 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (title, layers) in zip(axes, panels):
        order = sorted(layers, key=int)

        def value(g: dict[str, Any], i: int) -> float:
            if g.get("logits") is not None:
                return float(g["logits"][i])
            return 1.0 if g["key_open" if i == 0 else "value_open"] else -1.0

        grid = [[value(layers[k], i) for k in order] for i in (0, 1)]
        bound = max(1e-6, max(abs(v) for row in grid for v in row))
        im = ax.imshow(grid, cmap="RdYlGn", vmin=-bound, vmax=bound, aspect="auto")
        for i in (0, 1):
            for j in range(len(order)):
                ax.text(j, i, "o" if grid[i][j] > 0 else "x", ha="center", va="center", fontsize=7)
        ax.set_yticks([0, 1], ["K", "V"])
        ax.set_xticks(range(len(order)), order, fontsize=6)
        ax.set_title(f"{title}: gate logits (o open, x closed)", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.02)
    axes[-1].set_xlabel("receiver layer")
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def make_report(run_paths: Sequence[str | Path], out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.md``, ``accuracy.png``, ``accuracy_vs_latency.png`` and (with gates) ``gates.png``."""
    runs = load_runs(run_paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {
        "accuracy": plot_accuracy(runs, out / "accuracy.png"),
        "accuracy_vs_latency": plot_accuracy_vs_latency(runs, out / "accuracy_vs_latency.png"),
    }
    gates = plot_gates(runs, out / "gates.png")
    if gates is not None:
        written["gates"] = gates
    figures = "\n".join(f"![{k}]({p.name})" for k, p in written.items())
    sources = "\n".join(f"- `{r['_path']}`: {r['run']['name']}" for r in runs)
    text = f"# Evaluation report\n\n{markdown_report(runs)}\n## Figures\n\n{figures}\n\n## Runs\n\n{sources}\n"
    (out / "report.md").write_text(text, encoding="utf-8")
    written["markdown"] = out / "report.md"
    return written


def fit_subject_routing(run: dict[str, Any], candidates: Sequence[str] = ("receiver", "sharer")) -> dict[str, int]:
    """``{subject: index into candidates}``: the candidate mode with the best accuracy per subject in ``run``
    (ties go to the earlier candidate). Feed it to :class:`c2c.eval.modes.SubjectRule`."""
    missing = [c for c in candidates if c not in run["metrics"]]
    if missing:
        raise ValueError(f"run {run['run']['name']!r} has no metrics for modes {missing}")
    subjects = set().union(*(run["metrics"][c]["by_subject"] for c in candidates))
    table = {}
    for s in sorted(subjects):
        accs = [run["metrics"][c]["by_subject"].get(s, {}).get("accuracy", -1.0) for c in candidates]
        table[s] = max(range(len(candidates)), key=lambda k: (accs[k], -k))
    return table
