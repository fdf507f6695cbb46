"""The demo's outputs made from its results dictionary: a text table, the gate states and a PNG figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

PATH_LABELS: dict[str, str] = {
    "receiver": "receiver alone",
    "sharer": "sharer alone",
    "t2t": "text-to-text",
    "routing": "routing",
    "c2c": "C2C (shifted, full fuser)",
    "c2c_no_gate": "C2C (shifted, no gate)",
    "c2c_no_dynamic_weight": "C2C (shifted, no dynamic weight)",
    "c2c_projection_only": "C2C (shifted, projection only)",
    "c2c_paper": "C2C (paper protocol)",
}
STAGE_ORDER: tuple[str, ...] = ("routing", "sharer_prefill", "note", "fusion", "receiver_prefill", "decode")


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{1000 * x:.1f}"


def _split(path: str, info: dict[str, Any]) -> str:
    """The latency split worth printing for ``path`` (median ms per stage)."""
    st = info.get("stages", {})
    if path.startswith("c2c") and "fusion" in st:
        return (f"sharer prefill {_ms(st.get('sharer_prefill'))} + fusion {_ms(st.get('fusion'))} + receiver "
                f"{_ms(st.get('receiver_prefill'))} + decode {_ms(st.get('decode'))}")
    if path == "t2t":
        return (f"note writing {_ms(st.get('note'))} ({info.get('note_tokens_median', 0):.0f} tokens) + receiver "
                f"{_ms(st.get('receiver_prefill'))} + decode {_ms(st.get('decode'))}")
    if path == "routing":
        return f"routing {_ms(st.get('routing'))}; {100 * info.get('share_to_sharer', 0):.0f} % sent to the sharer"
    return ""


def table(results: dict[str, Any]) -> str:
    """Test accuracy (held-out entities) and median latency per path, as aligned text."""
    rows = [("path", "test acc", "val acc", "train acc", "median ms", "latency split (median ms)")]
    for path, label in PATH_LABELS.items():
        info = results["paths"].get(path)
        if info is None:
            continue
        val = info.get("val_accuracy")
        trn = info.get("fuser_train_accuracy")
        rows.append((
            label,
            f"{100 * info['accuracy']:.1f} %",
            "-" if val is None else f"{100 * val:.1f} %",
            "-" if trn is None else f"{100 * trn:.1f} %",
            _ms(info.get("median_seconds")),
            _split(path, info),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def swapped_text(results: dict[str, Any]) -> str:
    sw = results["swapped"]
    out = [f"swapped-sharer control (chance {100 * sw['chance']:.1f} %):"]
    for name in ("c2c", "c2c_paper"):
        if name in sw:
            out.append(
                f"  {PATH_LABELS[name]}: true answer {100 * sw[name]['true_answer_accuracy']:.1f} % (normal "
                f"{100 * results['paths'][name]['accuracy']:.1f} %), follows the other entity "
                f"{100 * sw[name]['follows_other_accuracy']:.1f} %"
            )
    return "\n".join(out)


def gates_text(results: dict[str, Any]) -> str:
    out = ["per-layer gates (receiver layer: key/value, 1 = open):"]
    for name, layers in results["gates"].items():
        cells = [f"{layer}:{int(g['key_open'])}/{int(g['value_open'])}" for layer, g in sorted(layers.items(), key=lambda kv: int(kv[0]))]
        out.append(f"  {PATH_LABELS.get(name, name)}: " + " ".join(cells))
    return "\n".join(out)


def targets_text(results: dict[str, Any]) -> str:
    out = ["targets:"]
    for name, t in results["targets"].items():
        out.append(f"  {'met   ' if t['met'] else 'MISSED'} {name}: {t['value']:.3f} (target {t['target']})")
    return "\n".join(out)


def summary(results: dict[str, Any]) -> str:
    """Everything a reader wants after a run, as plain text."""
    models = results["models"]
    head = [
        f"world: {results['world']['splits']} entities; {results['world']['test_questions']} held-out test questions; "
        f"chance {100 * results['world']['chance']:.1f} %",
    ]
    for role in ("receiver", "sharer"):
        m = models[role]
        how = "loaded from cache" if m.get("cached") else f"pretrained in {m.get('seconds', 0):.0f} s"
        head.append(f"{role}: {m.get('parameters', 0) / 1e6:.2f} M parameters, {how} ({m.get('path')})")
    return "\n\n".join(
        ["\n".join(head), table(results), swapped_text(results), gates_text(results), targets_text(results),
         f"total {results['total_seconds']:.0f} s; phases: "
         + ", ".join(f"{k} {v:.0f} s" for k, v in results["phase_seconds"].items())]
    )


def figure(results: dict[str, Any], path: str | Path) -> Path:
    """Two panels: test accuracy per path (chance dashed) and median latency per path split by stage."""
    names = [p for p in PATH_LABELS if p in results["paths"]]
    labels = [PATH_LABELS[p] for p in names]
    info = [results["paths"][p] for p in names]
    fig = Figure(figsize=(12, 4.8), constrained_layout=True)
    ax1, ax2 = fig.subplots(1, 2)
    ys = range(len(names))
    ax1.barh(list(ys), [100 * i["accuracy"] for i in info], color=["#c44e52" if n.startswith("c2c") else "#4c72b0" for n in names])
    ax1.axvline(100 * results["world"]["chance"], ls="--", color="gray", label="chance")
    ax1.set_yticks(list(ys), labels)
    ax1.invert_yaxis()
    ax1.set_xlim(0, 100)
    ax1.set_xlabel("accuracy on held-out entities (%)")
    ax1.legend(loc="lower right")
    left = [0.0] * len(names)
    colors = dict(zip(STAGE_ORDER, ("#8172b2", "#55a868", "#ccb974", "#c44e52", "#4c72b0", "#64b5cd")))
    for stage in STAGE_ORDER:
        vals = [1000 * i.get("stages", {}).get(stage, 0.0) for i in info]
        if any(vals):
            ax2.barh(list(ys), vals, left=left, color=colors[stage], label=stage.replace("_", " "))
            left = [a + b for a, b in zip(left, vals)]
    for y, i in zip(ys, info):
        if i.get("median_seconds") is not None:
            ax2.plot(1000 * i["median_seconds"], y, "k|", ms=14)
    ax2.set_yticks(list(ys), [""] * len(names))
    ax2.invert_yaxis()
    ax2.set_xlabel("median latency per query (ms): stages, | total")
    ax2.legend(loc="lower right", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
