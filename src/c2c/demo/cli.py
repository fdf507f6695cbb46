"""Command function ``demo`` (wired into the ``c2c`` typer app by :mod:`c2c.cli`).

``python -m c2c.demo.cli`` runs it without the main CLI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def demo_command(
    quick: Annotated[
        bool, typer.Option(help="Small world, small models, short training (about a minute; used by the tests).")
    ] = False,
    out: Annotated[
        Path, typer.Option(help="Folder for results.json, demo.png, the data files and the trained fusers.")
    ] = Path("c2c-demo"),
    cache_dir: Annotated[
        Optional[Path],
        typer.Option(
            help="Where pretrained tiny models and trained fusers are kept (default $C2C_CACHE/demo or ~/.cache/c2c/demo)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the world, the pretraining and the fusers.")] = 0,
    retrain: Annotated[
        bool, typer.Option(help="Pretrain the tiny models and train the fusers again even if they are cached.")
    ] = False,
    study: Annotated[
        bool,
        typer.Option(
            help="Also run the study: the alignment grid (shift x token alignment, with the sharer's own recall per "
            "cell), the ablations, the fuser size sweep, the data sweep and two more seeds of the headline fuser (15 "
            "more fusers, about 45 core-minutes of training: about 23 more minutes on 2 cores; reports its own cost)."
        ),
    ] = False,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch (default: torch's choice).")] = None,
) -> None:
    """Offline experiment: two tiny LMs with different knowledge, a trained fuser, every baseline, held-out test.

    Builds a synthetic world, pretrains a Qwen3-style receiver and a Llama-style sharer on CPU until each
    meets its quality bar (cached after the first run), trains fusers with c2c's own trainer and reports
    accuracy on entities that neither the receiver nor the fuser ever saw: receiver, sharer, text-to-text
    (and its reference-note ceiling), confidence routing, C2C, a swapped-sharer and an identical-sharer
    control, gate trajectories and interleaved latency.
    """
    from c2c.demo.config import DemoConfig
    from c2c.demo.experiment import run_demo
    from c2c.demo.report import figure, frontier_figure, summary

    if threads is not None:
        if threads < 1:
            raise typer.BadParameter("--threads must be >= 1")
        import torch

        torch.set_num_threads(threads)
    config = DemoConfig.quick(seed) if quick else DemoConfig.full(seed)
    results = run_demo(
        config, out, cache_dir=cache_dir, retrain=retrain, study=study, log=lambda m: typer.echo(m, err=True)
    )
    png = figure(results, out / "demo.png")
    results["figure"] = str(png)
    frontier = frontier_figure(results, out / "frontier.png")
    results["frontier_figure"] = str(frontier) if frontier else None
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    typer.echo(summary(results))
    typer.echo(f"\nresults: {out / 'results.json'}\nfigure:  {png}" + (f"\nfrontier: {frontier}" if frontier else ""))


if __name__ == "__main__":
    typer.run(demo_command)
