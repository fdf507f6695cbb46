"""`c2c demo --quick --study` end to end on a fixed quick world whose tiny models learn: every phase runs,
every output is written, the splits hold, and the science holds in small: C2C reads the sharer (the
swapped control follows the other entity), the identical control stays near the receiver, gates start at
the paper's initialisation and move. The full demo's numbers are in the demo section of the README."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from c2c.demo.config import GRID, DemoConfig
from c2c.demo.report import label_of
from c2c.demo.world import World
from c2c.model import C2CModel

pytestmark = pytest.mark.slow


def test_every_path_control_and_study_row_is_measured(quick_demo: tuple[Path, dict]) -> None:
    _, results = quick_demo
    headline = {"receiver", "sharer", "t2t", "t2t_reference", "routing", "c2c", "c2c_identical"}
    study = {
        "grid_shift0_longest",
        "grid_shift0_offsets",
        "grid_shift1_longest",
        "c2c_full",
        "c2c_no_gate",
        "c2c_sharer_inputs",
        "c2c_sharer_inputs_no_gate",
        "size_lowrank_r8",
        "data_80",
        "seed_1",
    }
    assert set(results["paths"]) == headline | study
    for name in ("receiver", "sharer", "t2t", "routing", "c2c"):  # the interleaved loop
        assert results["paths"][name]["median_seconds"] > 0, name
    assert {"sharer_prefill", "fusion", "receiver_prefill", "decode", "total"} <= set(results["paths"]["c2c"]["stages"])
    assert {"note", "receiver_prefill", "decode"} <= set(results["paths"]["t2t"]["stages"])
    lat = results["latency"]
    assert lat["order"] == "rotating" and len(lat["load_average_start"]) == len(lat["load_average_end"]) == 3
    assert results["paths"]["c2c"]["c2c_config"]["alignment_shift"] == 1
    assert results["paths"]["routing"]["rule"].startswith("confidence")
    grid = results["study"]["grid"]
    assert [(g["alignment_shift"], g["token_alignment"]) for g in grid] == [
        (c["alignment_shift"], c["token_alignment"]) for c in GRID
    ]
    assert results["study"]["fusers"] == len(study) and results["study"]["eval_seconds"] > 0
    sizes = {s["label"]: s for s in results["study"]["sizes"]}
    assert sizes["lowrank_r8"]["parameter_ratio"] > 10 and sizes["lowrank_r8"]["flops_ratio"] > 10
    assert sizes["full"]["parameter_ratio"] == 1.0
    # The data sweep: the headline fuser on the first 80 of the 160 fuser entities, then the headline itself.
    data = results["study"]["data"]
    assert [d["entities"] for d in data] == [80, 160] and data[-1]["name"] == "c2c"
    assert data[-1]["accuracy"] == results["paths"]["c2c"]["accuracy"]
    rows = [json.loads(line) for line in Path(results["data_files"]["train_80"]).read_text().splitlines()]
    assert len({r["entity"] for r in rows}) == 80 and len(rows) == 80 * 8
    # The seed replicate: the headline job from another seed (its own initialisation and data order).
    seeds = results["study"]["seeds"]
    assert [(r["replicate"], r["seed"], r["name"]) for r in seeds] == [(0, 0, "c2c"), (1, 1000, "seed_1")]
    assert seeds[0]["accuracy"] == results["paths"]["c2c"]["accuracy"]
    log = results["fuser_training"]
    assert log["seed_1"]["steps"] == log["c2c_full"]["steps"]  # the run's data, the study's training overrides
    assert label_of("seed_1") == "C2C fuser seed replicate 1" and label_of("data_80") == "C2C data: 80 entities"


def test_the_quick_models_meet_their_bars(quick_demo: tuple[Path, dict]) -> None:
    _, results = quick_demo
    for role in ("receiver", "sharer"):
        m = results["models"][role]
        assert m["bar_met"], (role, m["quality"])
        assert m["quality"]["score"] >= m["bar"]
    assert results["warnings"] == []
    # The sharer knows the held-out entities; the receiver does not.
    assert results["paths"]["sharer"]["accuracy"] >= 0.9
    assert results["paths"]["receiver"]["accuracy"] <= 0.3


def test_c2c_reads_the_sharer_and_the_controls_hold(quick_demo: tuple[Path, dict]) -> None:
    _, results = quick_demo
    p, sw = results["paths"], results["swapped"]
    assert p["c2c"]["accuracy"] >= p["receiver"]["accuracy"] + 0.3
    # Swapped sharer: C2C follows the other entity, not the question's.
    assert sw["follows_other_accuracy"] >= 0.5 * p["c2c"]["accuracy"]
    assert sw["true_answer_accuracy"] < p["c2c"]["accuracy"] - 0.3
    # Identical control: the receiver as its own sharer cannot answer about unseen entities.
    assert abs(p["c2c_identical"]["accuracy"] - p["receiver"]["accuracy"]) <= 0.15
    # The sharer's own recall on its natural tokenization (offsets cells) is its recall as a model.
    offsets = [g for g in results["study"]["grid"] if g["token_alignment"] == "offsets"]
    assert all(g["sharer_recall"] >= 0.8 for g in offsets)


def test_gates_start_closed_at_the_paper_initialisation_and_move(quick_demo: tuple[Path, dict]) -> None:
    _, results = quick_demo
    # The paper's gated fuser (the study's "full" ablation; the headline fuser, projection only, has none).
    traj = results["gates"]["c2c_full"]["trajectory"]
    assert all(v == 0.0 for layer in traj[0]["logits"] for v in layer)  # a fresh fuser changes nothing
    assert traj[-1]["step"] == results["fuser_training"]["c2c_full"]["steps"]
    moved = max(abs(v) for layer in traj[-1]["logits"] for v in layer)
    assert moved > 0.5
    for name in ("c2c", "c2c_no_gate"):
        assert results["gates"][name]["trajectory"] is None  # no gates to move


def test_outputs_splits_and_report(quick_demo: tuple[Path, dict]) -> None:
    out, results = quick_demo
    for png in ("demo.png", "frontier.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    world = World.generate(DemoConfig.quick().world)
    split_of = {e.name: e.split for e in world.entities}
    for kind, split in (("train", "fuser"), ("val", "val"), ("test", "test")):
        rows = [json.loads(line) for line in Path(results["data_files"][kind]).read_text().splitlines()]
        assert rows and {split_of[r["entity"]] for r in rows} == {split}, kind
    assert results["world"]["test_questions"] == 8 * len(world.split("test"))
    assert label_of("grid_shift0_longest") == "C2C grid: shift 0, longest"
    fuser_dir = results["fuser_training"]["c2c"]["fuser_dir"]
    receiver, sharer = results["models"]["receiver"]["path"], results["models"]["sharer"]["path"]
    model = C2CModel.from_pretrained(fuser_dir, receiver=receiver, sharer=sharer)
    assert model.config.alignment_shift == 1 and model.config.token_alignment == "offsets"
    assert isinstance(model.generate("Where does Bo live?", max_new_tokens=2), str)
