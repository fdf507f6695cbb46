"""The demo's outputs made from its results dictionary: a text table, the gate states and a PNG figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

PATH_LABELS: dict[str, str] = {
    "receiver": "receiver alone",
    "sharer": "sharer alone",
    "t2t": "text-to-text",
    "t2t_reference": "text-to-text, reference note (ceiling)",
    "routing": "routing (confidence, fitted on val)",
    "c2c": "C2C (shift 1, offsets, projection only)",
    "c2c_identical": "identical control (receiver as sharer)",
}
STAGE_ORDER: tuple[str, ...] = ("routing", "sharer_prefill", "note", "fusion", "receiver_prefill", "decode")


def label_of(path: str) -> str:
    """Readable name of a path, study fusers included ("grid_shift0_longest" -> "C2C grid: shift 0, longest")."""
    if path in PATH_LABELS:
        return PATH_LABELS[path]
    if path.startswith("grid_shift"):
        shift, align = path[len("grid_shift") :].split("_", 1)
        return f"C2C grid: shift {shift}, {align}"
    if path.startswith("size_"):
        return f"C2C size: {path[len('size_') :]}"
    if path.startswith("c2c_"):
        return f"C2C ablation: {path[len('c2c_') :].replace('_', ' ')}"
    if path.startswith("data_"):
        return f"C2C data: {path[len('data_') :]} entities"
    if path.startswith("seed_"):
        return f"C2C fuser seed replicate {path[len('seed_') :]}"
    return path


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{1000 * x:.1f}"


def _split(path: str, info: dict[str, Any]) -> str:
    """The latency split worth printing for ``path`` (median ms per stage)."""
    st = info.get("stages", {})
    if path.startswith("c2c") and "fusion" in st:
        return (
            f"sharer prefill {_ms(st.get('sharer_prefill'))} + fusion {_ms(st.get('fusion'))} + receiver "
            f"{_ms(st.get('receiver_prefill'))} + decode {_ms(st.get('decode'))}"
        )
    if path == "t2t":
        return (
            f"note writing {_ms(st.get('note'))} ({info.get('note_tokens_median', 0):.0f} tokens) + receiver "
            f"{_ms(st.get('receiver_prefill'))} + decode {_ms(st.get('decode'))}"
        )
    if path == "routing":
        return f"routing {_ms(st.get('routing'))}; {100 * info.get('share_to_sharer', 0):.0f} % sent to the sharer"
    return ""


def table(results: dict[str, Any]) -> str:
    """Test accuracy (held-out entities) and median latency per path, as aligned text."""
    rows = [("path", "test acc", "val acc", "train acc", "median ms", "latency split (median ms)")]
    for path in list(PATH_LABELS) + [p for p in results["paths"] if p not in PATH_LABELS]:
        info = results["paths"].get(path)
        if info is None:
            continue
        label = label_of(path)
        val = info.get("val_accuracy")
        trn = info.get("fuser_train_accuracy")
        rows.append(
            (
                label,
                f"{100 * info['accuracy']:.1f} %",
                "-" if val is None else f"{100 * val:.1f} %",
                "-" if trn is None else f"{100 * trn:.1f} %",
                _ms(info.get("median_seconds")),
                _split(path, info),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def swapped_text(results: dict[str, Any]) -> str:
    sw, p = results["swapped"], results["paths"]
    return (
        "swapped-sharer control (the sharer reads the same question about another held-out entity):\n"
        f"  true answer {100 * sw['true_answer_accuracy']:.1f} % (receiver alone {100 * p['receiver']['accuracy']:.1f} %, "
        f"C2C normally {100 * p['c2c']['accuracy']:.1f} %); follows the other entity "
        f"{100 * sw['follows_other_accuracy']:.1f} %\n"
        f"identical control (the receiver as its own sharer): {100 * p['c2c_identical']['accuracy']:.1f} % "
        f"(receiver alone {100 * p['receiver']['accuracy']:.1f} %)"
    )


def gates_text(results: dict[str, Any]) -> str:
    """Hard gate states after training and how far the logits travelled (first -> last snapshot)."""
    out = ["per-layer gates after training (receiver layer: key/value open; logits start -> end):"]
    for name, g in results["gates"].items():
        final = g["final"]
        traj = g.get("trajectory")
        if traj is None:  # a variant without gates (projection only, no gate): every layer always fused
            out.append(f"  {label_of(name)}: no gates (this variant fuses every layer, always)")
            continue
        cells = []
        for k, (layer, st) in enumerate(sorted(final.items(), key=lambda kv: int(kv[0]))):
            cell = f"{layer}:{int(st['key_open'])}/{int(st['value_open'])}"
            if traj:
                a, b = traj[0]["logits"][k], traj[-1]["logits"][k]
                cell += f" ({a[0]:+.1f}->{b[0]:+.1f}, {a[1]:+.1f}->{b[1]:+.1f})"
            cells.append(cell)
        out.append(f"  {label_of(name)}: " + "  ".join(cells))
    return "\n".join(out)


def models_text(results: dict[str, Any]) -> str:
    out = []
    for role in ("receiver", "sharer"):
        m = results["models"][role]
        how = "loaded from cache" if m.get("cached") else f"pretrained in {m.get('seconds', 0):.0f} s"
        q = m.get("quality") or {}
        checks = ", ".join(
            f"{k} {100 * v:.1f} %" for k, v in q.items() if k not in ("score", "questions") and isinstance(v, float)
        )
        bar = "met" if m.get("bar_met") else "MISSED"
        out.append(
            f"{role}: {m.get('parameters', 0) / 1e6:.2f} M parameters, {m.get('epochs', '?')} epochs, {how}; "
            f"bar {m.get('bar')} {bar} ({checks})"
        )
    return "\n".join(out)


def study_text(results: dict[str, Any]) -> str:
    st = results.get("study") or {}
    if not st.get("ran"):
        return ""
    out = [
        f"study: {st['fusers']} more fusers, {st['train_core_seconds'] / 60:.1f} core-minutes of training and "
        f"{st['eval_seconds'] / 60:.1f} min of evaluation; the whole run took {results['total_seconds'] / 60:.1f} min",
        "grid (held-out accuracy | the sharer's own next-token recall on that cell's input):",
    ]
    for g in st["grid"]:
        out.append(
            f"  shift {g['alignment_shift']}, {g['token_alignment']:<8} C2C {100 * g['accuracy']:5.1f} % "
            f"(val {100 * g['val_accuracy']:.1f} %) | sharer recall {100 * g['sharer_recall']:5.1f} %"
        )
    out.append("ablations (headline cell):")
    for a in st["ablations"]:
        what = f"{a['variant']}, reads {'the sharer rows' if a['inputs'] == 'sharer' else 'both caches'}"
        if a["variant"] == "projection_only":
            what = "projection only, reads the sharer rows"
        out.append(
            f"  {a['label']:<22} {what:<38} {100 * a['accuracy']:5.1f} % (val {100 * a['val_accuracy']:.1f} %, "
            f"training entities {100 * a['fuser_train_accuracy']:.1f} %)"
        )
    out.append(
        "fuser sizes (headline cell): params | FLOPs/token | test acc | share of the full fuser's gain | train s"
    )
    for s in st["sizes"]:
        share = "-" if s["share_of_full_gain"] is None else f"{100 * s['share_of_full_gain']:.0f} %"
        out.append(
            f"  {s['label']:<12} {s['parameters']:>10,} ({s['parameter_ratio']:5.1f}x fewer) | "
            f"{s['flops_per_token']:>10,} ({s['flops_ratio']:5.1f}x) | {100 * s['accuracy']:5.1f} % | {share} | "
            f"{s['train_seconds']:.0f}"
        )
    out.append("training data (headline fuser, same optimiser steps): fuser entities | steps | test acc | val acc")
    for d in st.get("data", []):
        share = "-" if d["share_of_full_gain"] is None else f"{100 * d['share_of_full_gain']:.0f} %"
        out.append(
            f"  {d['entities']:>5} | {d['steps']:>5} | {100 * d['accuracy']:5.1f} % ({share} of the full gain) | "
            f"{100 * d['val_accuracy']:5.1f} % (training entities {100 * d['fuser_train_accuracy']:.1f} %)"
        )
    seeds = st.get("seeds", [])
    if seeds:
        out.append("fuser seeds (the headline recipe, replicate 0 is the headline): seed | test acc | val acc")
        for r in seeds:
            out.append(
                f"  {r['seed']:>5} | {100 * r['accuracy']:5.1f} % | {100 * r['val_accuracy']:5.1f} % "
                f"(training entities {100 * r['fuser_train_accuracy']:.1f} %)"
            )
        acc, val = [r["accuracy"] for r in seeds], [r["val_accuracy"] for r in seeds]
        out.append(
            f"  spread: test {100 * (max(acc) - min(acc)):.1f} points, val {100 * (max(val) - min(val)):.1f} points"
        )
    return "\n".join(out)


def targets_text(results: dict[str, Any]) -> str:
    out = ["targets:"]
    for name, t in results["targets"].items():
        out.append(f"  {'met   ' if t['met'] else 'MISSED'} {name}: {t['value']:.3f} (target {t['target']:.3f})")
    return "\n".join(out)


def summary(results: dict[str, Any]) -> str:
    """Everything a reader wants after a run, as plain text."""
    w = results["world"]
    head = [
        f"world: {w['splits']} entities; {w['test_questions']} held-out test questions; chance {100 * w['chance']:.1f} %",
        models_text(results),
    ]
    warn = [f"WARNING: {m}" for m in results.get("warnings", [])]
    lat = results.get("latency", {})
    timing = (
        f"latency: {lat.get('queries')} queries, every path interleaved query by query; load average "
        f"{lat.get('load_average_start')} -> {lat.get('load_average_end')}"
    )
    parts = ["\n".join(head + warn), table(results), timing, swapped_text(results), gates_text(results)]
    st = study_text(results)
    if st:
        parts.append(st)
    parts += [
        targets_text(results),
        f"total {results['total_seconds']:.0f} s; phases: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in results["phase_seconds"].items()),
    ]
    return "\n\n".join(parts)


def figure(results: dict[str, Any], path: str | Path) -> Path:
    """Two panels: test accuracy per headline path (chance dashed) and median latency per path by stage."""
    names = [p for p in PATH_LABELS if p in results["paths"]]
    labels = [PATH_LABELS[p] for p in names]
    info = [results["paths"][p] for p in names]
    fig = Figure(figsize=(12, 4.8), constrained_layout=True)
    ax1, ax2 = fig.subplots(1, 2)
    ys = list(range(len(names)))
    ax1.barh(
        ys, [100 * i["accuracy"] for i in info], color=["#c44e52" if n.startswith("c2c") else "#4c72b0" for n in names]
    )
    ax1.axvline(100 * results["world"]["chance"], ls="--", color="gray", label="chance")
    ax1.set_yticks(ys, labels)
    ax1.invert_yaxis()
    ax1.set_xlim(0, 100)
    ax1.set_xlabel("accuracy on held-out entities (%)")
    ax1.legend(loc="lower right")
    left = [0.0] * len(names)
    colors = dict(zip(STAGE_ORDER, ("#8172b2", "#55a868", "#ccb974", "#c44e52", "#4c72b0", "#64b5cd")))
    for stage in STAGE_ORDER:
        vals = [1000 * i.get("stages", {}).get(stage, 0.0) for i in info]
        if any(vals):
            ax2.barh(ys, vals, left=left, color=colors[stage], label=stage.replace("_", " "))
            left = [a + b for a, b in zip(left, vals)]
    for y, i in zip(ys, info):
        if i.get("median_seconds") is not None:
            ax2.plot(1000 * i["median_seconds"], y, "k|", ms=14)
    ax2.set_yticks(ys, [""] * len(names))
    ax2.invert_yaxis()
    ax2.set_xlabel("median latency per query (ms), interleaved loop: stages, | total")
    ax2.legend(loc="lower right", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def frontier_figure(results: dict[str, Any], path: str | Path) -> Path | None:
    """Held-out accuracy against fuser parameters (log scale) for the size sweep; None without a study."""
    st = results.get("study") or {}
    if not st.get("ran"):
        return None
    fig = Figure(figsize=(6.4, 4.4), constrained_layout=True)
    ax = fig.subplots()
    for s in st["sizes"]:
        ax.scatter(s["parameters"], 100 * s["accuracy"], s=40, color="#c44e52" if s["family"] == "full" else "#4c72b0")
        ax.annotate(
            s["label"], (s["parameters"], 100 * s["accuracy"]), textcoords="offset points", xytext=(5, 4), fontsize=8
        )
    ax.axhline(100 * results["paths"]["receiver"]["accuracy"], ls="--", color="gray", label="receiver alone")
    ax.axhline(100 * results["paths"]["c2c_identical"]["accuracy"], ls=":", color="gray", label="identical control")
    ax.set_xscale("log")
    ax.set_xlabel("fuser parameters (log scale)")
    ax.set_ylabel("accuracy on held-out entities (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="lower right", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
