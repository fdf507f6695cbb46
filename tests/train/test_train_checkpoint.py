"""Checkpoint manager: atomic publish, partial folders ignored, pruning, RNG round trip, run-folder rules."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from c2c.train import CheckpointError
from c2c.train.checkpoint import (
    STATE_NAME,
    CheckpointManager,
    RunFolder,
    TrainerState,
    load_rng_state,
    rng_state,
)


def _save(mgr: CheckpointManager, step: int, payload: str = "x") -> None:
    def shared(folder):
        (folder / "payload.txt").write_text(payload)
        (folder / STATE_NAME).write_text(TrainerState(global_step=step).to_json())

    mgr.save(
        step,
        write_shared=shared,
        write_local=lambda f: (f / "rng_state_0.pt").write_bytes(b"r"),
        is_main=True,
        barrier=lambda: None,
    )


def test_save_publishes_complete_folders_and_keeps_the_last_k(tmp_path):
    mgr = CheckpointManager(tmp_path / "ckpts", keep=2)
    for step in (2, 4, 6):
        _save(mgr, step)
    names = [p.name for p in mgr.checkpoints()]
    assert names == ["checkpoint-00000004", "checkpoint-00000006"]
    assert mgr.latest().name == "checkpoint-00000006"
    assert not mgr.partial()
    assert (mgr.latest() / "rng_state_0.pt").is_file()


def test_a_crash_mid_write_leaves_the_previous_checkpoint_as_latest(tmp_path):
    mgr = CheckpointManager(tmp_path / "ckpts", keep=0)
    _save(mgr, 2)

    def crash(folder):
        (folder / "payload.txt").write_text("half")
        raise KeyboardInterrupt  # the process dies before the state file and the rename

    with pytest.raises(KeyboardInterrupt):
        mgr.save(4, write_shared=crash, write_local=lambda f: None, is_main=True, barrier=lambda: None)
    assert mgr.latest().name == "checkpoint-00000002"
    assert [p.name for p in mgr.partial()] == [".tmp-checkpoint-00000004"]
    # a folder with the final name but no state file (e.g. copied by hand, truncated) is not complete
    (tmp_path / "ckpts" / "checkpoint-00000009").mkdir()
    assert mgr.latest().name == "checkpoint-00000002"
    assert mgr.remove_partial() and not mgr.partial()


def test_resaving_a_step_replaces_it_atomically(tmp_path):
    mgr = CheckpointManager(tmp_path / "ckpts", keep=0)
    _save(mgr, 2, "first")
    _save(mgr, 2, "second")
    assert (mgr.latest() / "payload.txt").read_text() == "second"
    assert len(list((tmp_path / "ckpts").iterdir())) == 1


def test_rng_state_round_trip():
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    random.random(), np.random.rand(), torch.rand(1)
    saved = rng_state()
    torch.save(saved, "/dev/null")  # plain tensors and numbers
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    load_rng_state(saved)
    got = (random.random(), float(np.random.rand()), torch.rand(3))
    assert expected[0] == got[0] and expected[1] == got[1] and torch.equal(expected[2], got[2])


def test_rng_state_loads_with_weights_only(tmp_path):
    torch.save(rng_state(), tmp_path / "r.pt")
    load_rng_state(torch.load(tmp_path / "r.pt", weights_only=True))


def test_run_folder_rules(tmp_path):
    run = RunFolder(tmp_path / "out")
    assert run.check_reuse(resume=False, overwrite=False) == "fresh"
    run.write_run({"config": {"lr": 1}})
    with pytest.raises(CheckpointError, match="already holds a training run.*--resume.*--overwrite-output-dir"):
        run.check_reuse(resume=False, overwrite=False)
    assert run.check_reuse(resume=True, overwrite=False) == "resume"
    assert run.check_reuse(resume=False, overwrite=True) == "overwrite"
    run.clear()
    assert not run.path.exists()

    foreign = RunFolder(tmp_path / "foreign")
    foreign.path.mkdir()
    (foreign.path / "thesis.tex").write_text("precious")
    for resume, overwrite in [(False, False), (True, False), (False, True)]:
        with pytest.raises(CheckpointError, match="(are not a|holds no) c2c training run"):
            foreign.check_reuse(resume=resume, overwrite=overwrite)
    with pytest.raises(CheckpointError, match="refusing to delete"):
        foreign.clear()
    assert (foreign.path / "thesis.tex").read_text() == "precious"

    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        RunFolder(tmp_path / "file").check_reuse(resume=False, overwrite=False)


def test_unreadable_state_file_is_a_clear_error(tmp_path):
    (tmp_path / STATE_NAME).write_text("{broken")
    with pytest.raises(CheckpointError, match=f"{STATE_NAME} is unreadable"):
        TrainerState.from_file(tmp_path / STATE_NAME)
    (tmp_path / STATE_NAME).write_text('{"global_step": "three"}')  # parses, but is not a state
    with pytest.raises(CheckpointError, match="unreadable.*'global_step' = 'three' has the wrong type"):
        TrainerState.from_file(tmp_path / STATE_NAME)
    (tmp_path / STATE_NAME).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CheckpointError, match="unreadable"):
        TrainerState.from_file(tmp_path / STATE_NAME)
    assert json.loads(TrainerState(global_step=3).to_json())["global_step"] == 3
