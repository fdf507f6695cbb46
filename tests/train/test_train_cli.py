"""``c2c train``: models and data by path, config file + flags (flags win), --set, clear errors."""

from __future__ import annotations

import json

import pytest
import typer
from safetensors.torch import load_file
from train_support import chat_rows, tokenizer
from typer.testing import CliRunner

from c2c.testing.models import tiny_model
from c2c.train.cli import parse_set_options, train_command

app = typer.Typer()
app.command("train")(train_command)
app.command("noop")(lambda: None)  # a second command keeps "train" a sub-command, as in the real app


@pytest.fixture(scope="module")
def pair_on_disk(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for name, tok, family, seed in [("receiver", "qwen3", "qwen3", 0), ("sharer", "llama3", "llama", 1)]:
        t = tokenizer(tok)
        tiny_model(family, vocab_size=len(t), seed=seed).save_pretrained(root / name)
        t.save_pretrained(root / name)
    data = root / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(10, "conversations", system=True)))
    return root


def invoke(*args: str):
    return CliRunner().invoke(app, ["train", *args], catch_exceptions=False)


def test_flags_override_the_config_file(pair_on_disk, tmp_path):
    conf = tmp_path / "train.yaml"
    conf.write_text(
        f"receiver: {pair_on_disk / 'receiver'}\nsharer: {pair_on_disk / 'sharer'}\ndata: {pair_on_disk / 'chats.jsonl'}\n"
        f"output_dir: {tmp_path / 'run'}\nmax_steps: 50\nbatch_size: 2\nlearning_rate: 1e-3\nsave_steps: 1\n"
        "eval_size: 2\nprogress: false\nfuser: {hidden_size: 32, intermediate_size: 32}\n"
    )
    res = invoke("--config", str(conf), "--max-steps", "2", "--set", "fuser.hidden_size=16", "--set", "seed=5")
    assert res.exit_code == 0, res.output
    assert "trained 2 steps on 8 conversations (0 dropped" in res.output and "fuser saved to" in res.output
    run = json.loads((tmp_path / "run" / "train_run.json").read_text())
    assert run["config"]["max_steps"] == 2 and run["config"]["learning_rate"] == 1e-3 and run["config"]["seed"] == 5
    fuser_cfg = json.loads((tmp_path / "run" / "final" / "fuser_config.json").read_text())["fuser_config"]
    assert (fuser_cfg["hidden_size"], fuser_cfg["intermediate_size"]) == (16, 32)
    assert "fusers.0.layers.0.key.input.weight" in load_file(tmp_path / "run" / "final" / "fuser_model.safetensors")

    # the same command again refuses to overwrite; --resume finds the run complete
    again = invoke("--config", str(conf), "--max-steps", "2", "--set", "fuser.hidden_size=16", "--set", "seed=5")
    assert again.exit_code == 2 and "already holds a training run" in again.output
    resumed = invoke(
        "--config", str(conf), "--max-steps", "2", "--set", "fuser.hidden_size=16", "--set", "seed=5", "--resume"
    )
    assert resumed.exit_code == 0, resumed.output


def test_errors_exit_with_a_message_not_a_traceback(pair_on_disk, tmp_path):
    base = [
        "--receiver",
        str(pair_on_disk / "receiver"),
        "--sharer",
        str(pair_on_disk / "sharer"),
        "-o",
        str(tmp_path / "r"),
        "--no-progress",
    ]
    res = invoke(*base, "--data", str(tmp_path / "missing.jsonl"))
    assert res.exit_code == 2 and "error: data file" in res.output and "does not exist" in res.output
    res = invoke(*base, "--data", str(pair_on_disk / "chats.jsonl"), "--max-length", "5")
    assert res.exit_code == 2 and "Nothing is left to train on" in res.output
    res = invoke(*base, "--data", str(pair_on_disk / "chats.jsonl"), "--set", "learnin_rate=1")
    assert res.exit_code == 2 and "Did you mean 'learning_rate'" in res.output
    res = invoke("--data", str(pair_on_disk / "chats.jsonl"), "-o", str(tmp_path / "r"))
    assert res.exit_code == 2 and "set receiver and sharer" in res.output
    res = invoke(*base[:4], "--sharer", str(tmp_path / "nope"), "--data", str(pair_on_disk / "chats.jsonl"))
    assert res.exit_code == 2 and "sharer tokenizer" in res.output
    assert not (tmp_path / "r").exists()


def test_parse_set_options():
    assert parse_set_options(["a=1", "b.c=true", "b.d=x y", "e=[1, 2]", "f-g=null"]) == {
        "a": 1,
        "b": {"c": True, "d": "x y"},
        "e": [1, 2],
        "f_g": None,
    }
    with pytest.raises(typer.BadParameter):
        parse_set_options(["novalue"])
