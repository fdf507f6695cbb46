"""``c2c demo --study``: the fair grid, the ablations and the fuser size and data sweeps, with the headline
run's recipe.

- **Grid**: alignment shift {0, 1} x token alignment {longest, offsets}. In every cell the sharer reads a
  well-formed input (its own BOS first); its own next-token recall on each cell's input is reported beside
  C2C's accuracy, so a cell that fails because the sharer cannot recall on that input is told apart from
  one that fails because the fused rows do not carry the fact.
- **Ablations** on the headline cell, against the headline fuser (projection only: the sharer rows
  projected and substituted for the receiver's): the paper's gated fuser reading both caches, the same
  without its gate, and both reading the sharer rows only (``FuserConfig.inputs="sharer"``).
- **Sizes** on the headline cell: the full fuser and compact families at >= 10x and >= 30x fewer
  parameters, with parameters and fusion FLOPs per token from ``c2c.fuser.fuser_size``, held-out accuracy,
  gain over the receiver alone and training time.
- **Data**: the headline fuser trained on the questions of only the first n fuser entities, for as many
  optimiser steps as the headline, so that the rows differ in training data only: how C2C's transfer to
  unseen entities grows with the entities a fuser learns from.
- **Seeds**: the headline fuser trained again from other seeds (initialisation and data order), the same
  recipe otherwise: the spread that any difference between two rows above has to exceed to mean anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from c2c.demo.config import DemoConfig, cell_name
from c2c.demo.corpus import split_questions
from c2c.demo.fusers import FuserJob
from c2c.demo.world import Question, World
from c2c.fuser import fuser_size
from c2c.model import C2CModel

SEED_STRIDE = 1000
"""Replicate ``k`` of the headline fuser trains from the run's seed + ``SEED_STRIDE * k``."""


def data_sweep_questions(world: World, n: int) -> list[Question]:
    """The fuser-training questions about the first ``n`` fuser entities (a data-sweep row's training set)."""
    keep = {e.name for e in world.split("fuser")[:n]}
    return [q for q in split_questions(world, "fuser") if q.entity in keep]


def data_sweep_epochs(cfg: DemoConfig, n: int) -> int:
    """Epochs over ``n`` entities that make as many optimiser steps as the headline's epochs over all of them."""
    return max(1, round(int(cfg.train["num_epochs"]) * cfg.world.n_fuser / n))


def study_jobs(cfg: DemoConfig, data_files: Mapping[int, str]) -> list[FuserJob]:
    """The study's extra fusers (the headline fuser "c2c" is the grid's headline cell, the full size and the
    data sweep's full set). ``data_files[n]`` is the training file of the data sweep's row ``n``."""
    missing = [n for n in cfg.study.data_sizes if n not in data_files]
    if missing:
        raise ValueError(f"no training file for the data sweep's sizes {missing}; write them first")
    t = dict(cfg.study.train)
    jobs = [FuserJob(f"grid_{cell_name(c)}", dict(c), train=t) for c in cfg.study.grid if dict(c) != dict(cfg.variant)]
    jobs += [
        FuserJob(f"c2c_{name}", dict(cfg.variant), fuser=dict(f), train=t) for name, f in cfg.study.ablations.items()
    ]
    size_t = {**cfg.study.size_train, **t}
    jobs += [
        FuserJob(f"size_{name}", dict(cfg.variant), fuser=dict(f), train=size_t) for name, f in cfg.study.sizes.items()
    ]
    jobs += [
        FuserJob(
            f"data_{n}",
            dict(cfg.variant),
            train={"num_epochs": data_sweep_epochs(cfg, n), **t},
            data=str(data_files[n]),
        )
        for n in cfg.study.data_sizes
    ]
    jobs += [
        FuserJob(f"seed_{k}", dict(cfg.variant), train=t, seed_offset=SEED_STRIDE * k) for k in cfg.study.fuser_seeds
    ]
    return jobs


def _size(model: C2CModel) -> dict[str, int]:
    fuser = model.fuser_list[0]
    size = fuser_size(fuser.config, fuser.geometry)
    return {"parameters": size.parameters, "flops_per_token": size.flops_per_token}


def _open_gates(model: C2CModel) -> list[int]:
    states = model.fuser_list[0].hard_gates()
    return [int(k) + int(v) for _, (k, v) in sorted(states.items())]


def evaluate_study(
    cfg: DemoConfig,
    paths: dict[str, dict[str, Any]],
    train_log: dict[str, dict[str, Any]],
    models: dict[str, C2CModel],
    test_qs: list[Question],
) -> dict[str, Any]:
    """Tables of the grid, the ablations, the size and data sweeps and the seed replicates from the evaluated
    fusers (``paths``)."""
    receiver = paths["receiver"]["accuracy"]

    def row(name: str) -> dict[str, Any]:
        p = paths[name]
        return {
            "name": name,
            "accuracy": p["accuracy"],
            "val_accuracy": p["val_accuracy"],
            "fuser_train_accuracy": p["fuser_train_accuracy"],
            "gain_over_receiver": p["accuracy"] - receiver,
            "train_seconds": train_log[name]["seconds"],
            "open_gates_per_layer": _open_gates(models[name]),
        }

    grid = []
    for cell in cfg.study.grid:
        name = "c2c" if dict(cell) == dict(cfg.variant) else f"grid_{cell_name(cell)}"
        grid.append({**row(name), **dict(cell), "sharer_recall": paths[name]["sharer_recall"]})

    def behaviour(overrides: dict[str, Any]) -> dict[str, Any]:
        merged: dict[str, Any] = {"variant": "full", "inputs": "both", **cfg.fuser, **overrides}
        return {"variant": merged["variant"], "inputs": merged["inputs"]}

    ablations = [{**row("c2c"), "label": "headline", **behaviour({})}]
    ablations += [{**row(f"c2c_{k}"), "label": k, **behaviour(f)} for k, f in cfg.study.ablations.items()]
    sizes = [{**row("c2c"), "family": "full", "label": "full", **_size(models["c2c"])}]
    for label, f in cfg.study.sizes.items():
        name = f"size_{label}"
        sizes.append({**row(name), "family": f.get("family", "full"), "label": label, **_size(models[name])})
    full = sizes[0]

    def share_of_full_gain(r: dict[str, Any]) -> float | None:
        return r["gain_over_receiver"] / full["gain_over_receiver"] if full["gain_over_receiver"] > 0 else None

    for s in sizes:
        s["parameter_ratio"] = full["parameters"] / s["parameters"]
        s["flops_ratio"] = full["flops_per_token"] / s["flops_per_token"]
        s["share_of_full_gain"] = share_of_full_gain(s)
    data = []
    for n in (*cfg.study.data_sizes, cfg.world.n_fuser):
        name = "c2c" if n == cfg.world.n_fuser else f"data_{n}"
        r = row(name)
        data.append(
            {**r, "entities": n, "steps": train_log[name]["steps"], "share_of_full_gain": share_of_full_gain(r)}
        )
    seeds = [
        {**row(f"seed_{k}" if k else "c2c"), "replicate": k, "seed": cfg.seed + SEED_STRIDE * k}
        for k in (0, *cfg.study.fuser_seeds)
    ]
    return {"ran": True, "grid": grid, "ablations": ablations, "sizes": sizes, "data": data, "seeds": seeds}
