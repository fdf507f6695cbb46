"""`c2c demo --quick` end to end: every phase runs, every output is written, the splits hold.

The quick models are too small to know anything, so no accuracy is asserted; the full demo's numbers are
in the demo section of the project README.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from c2c.demo.cli import demo_command
from c2c.demo.experiment import DemoConfig
from c2c.demo.report import PATH_LABELS
from c2c.demo.world import World
from c2c.model import C2CModel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("demo")
    app = typer.Typer()
    app.command()(demo_command)
    res = CliRunner().invoke(app, ["--quick", "--out", str(out), "--cache-dir", str(out / "cache")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return out, json.loads((out / "results.json").read_text()), res.output


def test_every_path_is_measured(run: tuple[Path, dict, str]) -> None:
    _, results, _ = run
    expected = {"receiver", "sharer", "t2t", "routing", "c2c", "c2c_no_gate", "c2c_projection_only", "c2c_paper"}
    assert set(results["paths"]) == expected
    for name, info in results["paths"].items():
        assert 0.0 <= info["accuracy"] <= 1.0, name
    for name in ("receiver", "sharer", "t2t", "routing", "c2c", "c2c_paper"):
        assert results["paths"][name]["median_seconds"] > 0, name
    c2c = results["paths"]["c2c"]["stages"]
    assert {"sharer_prefill", "fusion", "receiver_prefill", "decode", "total"} <= set(c2c)
    assert {"note", "receiver_prefill", "decode"} <= set(results["paths"]["t2t"]["stages"])
    assert results["paths"]["c2c"]["c2c_config"]["alignment_shift"] == 1
    assert results["paths"]["c2c_paper"]["c2c_config"]["alignment_shift"] == 0
    assert results["paths"]["c2c_projection_only"]["fuser"]["variant"] == "projection_only"


def test_controls_gates_and_targets_are_reported(run: tuple[Path, dict, str]) -> None:
    _, results, output = run
    for name in ("c2c", "c2c_paper"):
        sw = results["swapped"][name]
        assert 0.0 <= sw["true_answer_accuracy"] <= 1.0 and 0.0 <= sw["follows_other_accuracy"] <= 1.0
    n_layers = DemoConfig.quick().receiver.num_layers
    assert all(len(layers) == n_layers for layers in results["gates"].values())
    assert set(results["targets"]) == {
        "c2c_accuracy_ge_60", "c2c_minus_receiver_ge_50_points", "swapped_within_10_points_of_chance",
        "t2t_over_c2c_latency_ge_2x", "from_scratch_le_15_min",  # the test's cache starts empty
    }
    for label in (PATH_LABELS[p] for p in results["paths"]):
        assert label in output
    assert "swapped-sharer control" in output and "per-layer gates" in output


def test_outputs_and_held_out_splits(run: tuple[Path, dict, str]) -> None:
    out, results, _ = run
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    world = World.generate(DemoConfig.quick().world)
    split_of = {e.name: e.split for e in world.entities}
    for kind, split in (("train", "fuser"), ("val", "val"), ("test", "test")):
        rows = [json.loads(line) for line in Path(results["data_files"][kind]).read_text().splitlines()]
        assert rows and {split_of[r["entity"]] for r in rows} == {split}, kind
    assert results["world"]["test_questions"] == 8 * len(world.split("test"))
    fuser_dir = results["fuser_training"]["c2c"]["fuser_dir"]
    receiver, sharer = results["models"]["receiver"]["path"], results["models"]["sharer"]["path"]
    model = C2CModel.from_pretrained(fuser_dir, receiver=receiver, sharer=sharer)
    assert model.config.alignment_shift == 1 and model.config.token_alignment == "offsets"
    assert isinstance(model.generate("Where does Bo live?", max_new_tokens=2), str)
