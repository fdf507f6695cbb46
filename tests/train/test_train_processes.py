"""Real processes: a run killed with SIGKILL and resumed, and 2-process runs (gloo) under torchrun and
``accelerate launch``.

The reference runs (uninterrupted, single-process) train in this process with one thread while the
subprocesses run, so each test costs about two interpreter start-ups of wall time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_support import run_training

SCRIPT = Path(__file__).with_name("train_support.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: int = 150) -> tuple[int, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, (out or "")[-2000:] + (err or "")[-4000:]


@contextmanager
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocesses run with OMP_NUM_THREADS=1: same kernels, same rounding
    try:
        yield
    finally:
        torch.set_num_threads(n)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_sigkill_then_resume_ends_with_the_same_weights(tmp_path):
    """Checkpoints every 2 steps; the process kills itself with SIGKILL right after step 5 (a checkpoint
    exists for step 4, step 5 is lost); --resume finishes the 8 steps. Dropout and Gumbel gate noise are
    on, so the RNG state and data position must be restored exactly."""
    args = [
        sys.executable,
        str(SCRIPT),
        "--out",
        str(tmp_path / "b"),
        "--steps",
        "8",
        "--batch-size",
        "2",
        "--dropout",
        "0.1",
    ]
    killed = start(args + ["--kill-at", "5"])
    with one_thread():
        run_training(str(tmp_path / "a"), steps=8, batch_size=2, dropout=0.1)
    code, log = finish(killed)
    assert code == -signal.SIGKILL, log
    ckpts = sorted(p.name for p in (tmp_path / "b" / "run" / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-00000002", "checkpoint-00000004"]
    assert not (tmp_path / "b" / "weights_rank0.safetensors").exists()

    code, log = finish(start(args + ["--resume"]))
    assert code == 0, log

    a, b = weights(tmp_path / "a" / "weights_rank0.safetensors"), weights(tmp_path / "b" / "weights_rank0.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the second process really resumed (a fresh start with the same seed would also match): it started from
    # checkpoint 4 and redid the lost step 5
    done = json.loads((tmp_path / "b" / "done_rank0").read_text())
    assert done["global_step"] == 8 and done["resumed_from"].endswith("checkpoint-00000004")
    log_steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "run" / "train_log.jsonl").read_text().splitlines()]
    assert log_steps == [1, 2, 3, 4, 5, 5, 6, 7, 8]
    assert json.loads((tmp_path / "a" / "done_rank0").read_text())["loss"] == done["loss"]


def _launch(launcher: str, port: int) -> list[str]:
    if launcher == "torchrun":
        return ["torchrun", "--nproc_per_node", "2", "--master_port", str(port)]
    # accelerate's --cpu runs a single process unless MPI is set up; --multi_gpu uses torchrun's launcher,
    # and the trainer asks accelerate for CPU processes (gloo) when there is no GPU.
    return [
        "accelerate",
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
    ]


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_match_one_process(tmp_path, launcher):
    """2 CPU processes (gloo, DDP on the fuser only) x batch 1 x 2 accumulation == 1 process x batch 2 x 2
    accumulation: identical weights on both ranks, equal (to float rounding) to the single-process run;
    under torchrun also with ``shard_llms`` (FSDP2 over the frozen LLMs' layers). No noise (no gate variant,
    no dropout): per-process random draws would differ between the layouts."""
    if shutil.which(launcher) is None:
        pytest.skip(f"{launcher} not on PATH")
    common = ["--steps", "3", "--rows", "12", "--variant", "no_gate", "--accum", "2"]
    extra = ["--also-sharded"] if launcher == "torchrun" else []
    ddp = start(
        [
            *_launch(launcher, _free_port()),
            str(SCRIPT),
            "--out",
            str(tmp_path / "ddp"),
            "--batch-size",
            "1",
            *extra,
            *common,
        ]
    )
    with one_thread():
        run_training(str(tmp_path / "one"), steps=3, rows=12, variant="no_gate", accum=2, batch_size=2)
    code, log = finish(ddp, timeout=180)
    assert code == 0, log

    single = weights(tmp_path / "one" / "weights_rank0.safetensors")
    folders = [tmp_path / "ddp"] + ([tmp_path / "ddp" / "sharded"] if extra else [])
    for folder in folders:
        r0, r1 = weights(folder / "weights_rank0.safetensors"), weights(folder / "weights_rank1.safetensors")
        assert r0.keys() == single.keys()
        for k in r0:
            assert torch.equal(r0[k], r1[k]), f"{folder.name}: ranks disagree on {k}"
            torch.testing.assert_close(
                r0[k], single[k], rtol=1e-4, atol=1e-5
            )  # packed rows: other matmul shapes, float rounding only
        sharded = json.loads((folder / "done_rank1").read_text())["llm_layers_sharded"]
        assert sharded == (folder.name == "sharded")
    # both processes left their RNG state in the checkpoint; the shared files were written once
    latest = max((tmp_path / "ddp" / "run" / "checkpoints").iterdir())
    assert {p.name for p in latest.iterdir()} >= {
        "rng_state_0.pt",
        "rng_state_1.pt",
        "optimizer.pt",
        "trainer_state.json",
    }
    assert json.loads((tmp_path / "ddp" / "done_rank1").read_text())["global_step"] == 3


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
