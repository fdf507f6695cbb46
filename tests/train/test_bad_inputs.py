"""The training bad-input catalogue: every bad input the trainer handles, each with the clear error (naming
the problem and the fix) or the correct result it gets.

- options of the wrong type or value, top level and inside ``fuser`` / ``c2c`` (Python, YAML, ``--set``);
- ``--resume`` with nothing to resume, and a run that stopped before its first checkpoint;
- a damaged newest checkpoint (each file, several ways): resume falls back to the previous complete one and
  ends with exactly the weights of an uninterrupted run; nothing loadable is an error listing every reason;
- a run record written by an older c2c (dict-style ``fuser`` / ``c2c``, options added since);
- chat-layout rows in plain-text mode, sharers without a chat template, a receiver whose cache does not
  continue a prefill, fusion settings that contradict an ``init_fuser``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import typer
from safetensors.torch import load_file, save_file
from train_support import chat_rows, make_pair, tiny_recurrent_model, tokenizer
from typer.testing import CliRunner

from c2c import C2CConfig, C2CModel, FuserConfig
from c2c.alignment.tokens import TokenAligner
from c2c.testing.models import tiny_model
from c2c.train import (
    CheckpointError,
    ConfigError,
    DataError,
    ExampleRenderer,
    TrainConfig,
    UnsupportedModelError,
    train,
)
from c2c.train.cli import train_command

CKPT2, CKPT4 = "checkpoint-00000002", "checkpoint-00000004"


def run_config(out: Path, **kw) -> TrainConfig:
    base = {
        "output_dir": str(out),
        "batch_size": 2,
        "max_steps": 4,
        "save_steps": 2,
        "save_total_limit": 0,
        "logging_steps": 1,
        "learning_rate": 3e-3,
        "warmup_ratio": 0.25,
        "seed": 3,
        "progress": False,
    }
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> Path:
    """An uninterrupted 4-step run with checkpoints at steps 2 and 4 (read only: tests copy it)."""
    out = tmp_path_factory.mktemp("golden") / "run"
    train(make_pair(), chat_rows(8), run_config(out))
    return out


def copy_run(golden: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(golden, out)
    return out


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "fuser_model.safetensors")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k, t in a.items():
        assert torch.equal(t, b[k]), k


# ---------------------------------------------------------------------- options


OPTION_CASES = [
    ({"fuser": {"hidden_size": "abc"}}, "option 'fuser.hidden_size': expected an integer, got 'abc'"),
    ({"fuser": {"dropout": "lots"}}, "option 'fuser.dropout': expected a number, got 'lots'"),
    ({"fuser": {"variant": "huge"}}, "option 'fuser.variant' must be one of 'full', 'no_gate', 'no_dynamic_weight'"),
    ({"fuser": {"layer_map": "diagonal"}}, "option 'fuser.layer_map'.*'terminal', 'proportional'.*expected a mapping"),
    ({"fuser": {"hiden_size": 3}}, "unknown option 'fuser.hiden_size'. Did you mean 'fuser.hidden_size'"),
    ({"fuser": {"hidden_size": 0}}, "option 'fuser': hidden_size must be positive, got 0"),
    ({"fuser": 3}, "option 'fuser' expects a mapping of FuserConfig fields, got 3"),
    ({"c2c": {"alignment_shift": 1.5}}, "option 'c2c.alignment_shift': expected an integer, got 1.5"),
    ({"c2c": {"token_alignment": "best"}}, "option 'c2c.token_alignment' must be one of 'longest', 'first', 'offsets'"),
    (
        {"c2c": {"include_response": True, "alignment_shift": 1}},
        "option 'c2c': include_response .* use alignment_shift=0",
    ),
    ({"c2c": {"prompt_format": "markdown"}}, "option 'c2c.prompt_format' must be one of 'chat', 'text'"),
    ({"mixed_precision": "fp8"}, "option 'mixed_precision' must be one of 'auto', 'no', 'bf16', 'fp16'; got 'fp8'"),
    ({"model_dtype": "int8"}, "option 'model_dtype' must be one of 'auto', 'float32', 'bfloat16', 'float16'"),
    ({"on_template_mismatch": "ignore"}, "option 'on_template_mismatch' must be one of 'warn', 'error'"),
    ({"layout": "xml"}, "option 'layout' must be one of 'auto', 'messages', 'conversations', 'prompt_response'"),
    ({"gate_learning_rate": -1}, "gate_learning_rate must be > 0 when set"),
    ({"gate_learning_rate": "fast"}, "option 'gate_learning_rate': expected a number, got 'fast'"),
    (
        {"use_chat_template": True, "c2c": {"prompt_format": "text"}},
        "use_chat_template: true contradicts c2c.prompt_format",
    ),
]


@pytest.mark.parametrize("values, match", OPTION_CASES)
def test_bad_options_name_the_option(values, match):
    with pytest.raises(ConfigError, match=f"^options: {match}"):
        TrainConfig.from_dict(values, source="options")


@pytest.mark.parametrize("values, match", OPTION_CASES[:5])
def test_bad_options_in_python_construction(values, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**values)


def test_yaml_quirks_inside_nested_configs_are_coerced(tmp_path):
    path = tmp_path / "c.yaml"
    # YAML 1.1 reads 1e-6 as a string; JSON gives layer-map keys as strings
    path.write_text(
        "fuser: {rms_norm_eps: 1e-6, hidden_size: '64', layer_map: {'1': 0}}\nc2c: {alignment_shift: '1'}\n"
    )
    c = TrainConfig.from_file(path)
    assert c.fuser == FuserConfig(rms_norm_eps=1e-6, hidden_size=64, layer_map={1: 0})
    assert c.c2c == C2CConfig(alignment_shift=1)
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c  # JSON round trip


@pytest.fixture()
def cli():
    app = typer.Typer()
    app.command("train")(train_command)
    app.command("noop")(lambda: None)

    def invoke(*args: str):
        return CliRunner().invoke(app, ["train", *args], catch_exceptions=False)

    return invoke


@pytest.mark.parametrize(
    "args, match",
    [
        (["--set", "fuser.hidden_size=abc"], "option 'fuser.hidden_size': expected an integer, got 'abc'"),
        (["--set", "fuser.variant=huge"], "option 'fuser.variant' must be one of"),
        (["--set", "c2c.token_alignment=best"], "option 'c2c.token_alignment' must be one of"),
        (["--set", "fuser=3"], "option 'fuser' expects a mapping"),
        (["--mixed-precision", "fp8"], "option 'mixed_precision' must be one of"),
    ],
)
def test_bad_options_on_the_command_line(cli, tmp_path, args, match):
    res = cli("--receiver", "r", "--sharer", "s", "--data", "d.jsonl", "-o", str(tmp_path / "run"), *args)
    assert res.exit_code == 2 and res.output.startswith("error: options: "), res.output
    assert re.search(match, res.output), res.output
    assert "Traceback" not in res.output and not (tmp_path / "run").exists()


def test_bad_nested_option_in_a_config_file_names_the_file(cli, tmp_path):
    conf = tmp_path / "train.yaml"
    conf.write_text("fuser:\n  dropout: lots\n")
    res = cli("--config", str(conf))
    assert res.exit_code == 2 and f"error: {conf}: option 'fuser.dropout': expected a number" in res.output


# ---------------------------------------------------------------------- --resume with nothing to resume


def test_resume_without_a_run_folder_is_an_error(tmp_path, cli):
    with pytest.raises(
        CheckpointError, match=r"--resume: nothing to resume, output_dir .*nope does not exist.*drop --resume"
    ):
        train(make_pair(), chat_rows(4), run_config(tmp_path / "nope", resume=True))
    assert not (tmp_path / "nope").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="nothing to resume, output_dir .*empty is empty"):
        train(make_pair(), chat_rows(4), run_config(tmp_path / "empty", resume=True))
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "thesis.tex").write_text("precious")
    with pytest.raises(
        CheckpointError, match=r"nothing to resume, .*thesis holds no c2c training run \(no train_run.json"
    ):
        train(make_pair(), chat_rows(4), run_config(tmp_path / "thesis", resume=True))
    assert (tmp_path / "thesis" / "thesis.tex").read_text() == "precious"
    res = cli("--receiver", "r", "--sharer", "s", "--data", "d.jsonl", "-o", str(tmp_path / "nope"), "--resume")
    assert res.exit_code == 2 and "error: --resume: nothing to resume" in res.output


def test_a_finished_run_without_checkpoints_has_nothing_to_resume(golden, tmp_path):
    run = copy_run(golden, tmp_path)
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(CheckpointError, match="finished and kept no checkpoint.*its fuser is in .*final"):
        train(make_pair(), chat_rows(8), run_config(run, resume=True))
    assert (run / "final" / "fuser_model.safetensors").is_file()


def test_a_run_stopped_before_its_first_checkpoint_restarts_from_step_0(golden, tmp_path, caplog):
    run = copy_run(golden, tmp_path)
    for name in ("checkpoints", "final"):
        shutil.rmtree(run / name)
    (run / "train_result.json").unlink()
    (run / "train_log.jsonl").unlink()
    with caplog.at_level(logging.INFO, logger="c2c.train"):
        result = train(make_pair(), chat_rows(8), run_config(run, resume=True))
    assert "no complete checkpoint" in caplog.text and "starting the run from step 0" in caplog.text
    assert result.resumed_from is None and result.global_step == 4
    assert_same_weights(final_weights(run), final_weights(golden))


# ---------------------------------------------------------------------- damaged checkpoints


def _garbage(name: str) -> Callable[[Path], None]:
    return lambda ckpt: (ckpt / name).write_bytes(b"\x00\x01 not what it should be \xff" * 3)


def _truncate(name: str) -> Callable[[Path], None]:
    def damage(ckpt: Path) -> None:
        data = (ckpt / name).read_bytes()
        (ckpt / name).write_bytes(data[: len(data) // 2])

    return damage


def _nan_weight(ckpt: Path) -> None:
    path = ckpt / "fuser" / "fuser_model.safetensors"
    weights = load_file(path)
    name = min(weights)
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, path)


def _other_optimizer(ckpt: Path) -> None:
    other = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))])
    torch.save(other.state_dict(), ckpt / "optimizer.pt")


DAMAGE = {
    "optimizer garbage": (_garbage("optimizer.pt"), r"optimizer.pt is unreadable"),
    "optimizer truncated": (_truncate("optimizer.pt"), r"optimizer.pt is unreadable"),
    "optimizer of another model": (_other_optimizer, r"optimizer.pt does not fit this run"),
    "scheduler garbage": (_garbage("scheduler.pt"), r"scheduler.pt is unreadable"),
    "rng state garbage": (_garbage("rng_state_0.pt"), r"rng_state_0.pt is unreadable"),
    "trainer state garbage": (_garbage("trainer_state.json"), r"trainer_state.json is unreadable"),
    "fuser weights garbage": (_garbage("fuser/fuser_model.safetensors"), r"fuser_model.safetensors is corrupted"),
    "fuser weights truncated": (_truncate("fuser/fuser_model.safetensors"), r"fuser_model.safetensors is corrupted"),
    "fuser weights NaN": (_nan_weight, r"holds unusable fuser weights.*NaN or inf"),
    "fuser config garbage": (_garbage("fuser/fuser_config.json"), r"fuser_config.json is not"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(golden, tmp_path, caplog, case):
    damage, reason = DAMAGE[case]
    run = copy_run(golden, tmp_path)
    damage(run / "checkpoints" / CKPT4)
    with caplog.at_level(logging.WARNING, logger="c2c.train"):
        result = train(make_pair(), chat_rows(8), run_config(run, resume=True))
    assert re.search(f"skipping checkpoint .*{CKPT4}: .*{reason}", caplog.text), caplog.text
    assert result.resumed_from is not None and result.resumed_from.name == CKPT2 and result.global_step == 4
    # steps 3 and 4 redone from checkpoint 2: exactly the uninterrupted run's weights, and a sound checkpoint 4
    assert_same_weights(final_weights(run), final_weights(golden))
    assert_same_weights(
        load_file(run / "checkpoints" / CKPT4 / "fuser" / "fuser_model.safetensors"),
        load_file(golden / "checkpoints" / CKPT4 / "fuser" / "fuser_model.safetensors"),
    )


def test_no_loadable_checkpoint_is_an_error_listing_each(golden, tmp_path):
    run = copy_run(golden, tmp_path)
    _garbage("optimizer.pt")(run / "checkpoints" / CKPT4)
    _nan_weight(run / "checkpoints" / CKPT2)
    with pytest.raises(
        CheckpointError,
        match=rf"(?s)no checkpoint in .* loads:\n  {CKPT4}: .*optimizer.pt is unreadable.*"
        rf"\n  {CKPT2}: .*NaN or inf.*Delete the damaged checkpoint folders.*--overwrite-output-dir",
    ):
        train(make_pair(), chat_rows(8), run_config(run, resume=True))


# ---------------------------------------------------------------------- run records of an older c2c


def _edit_record(run: Path, edit: Callable[[dict], None]) -> None:
    record = json.loads((run / "train_run.json").read_text())
    edit(record)
    (run / "train_run.json").write_text(json.dumps(record))


def _older(record: dict) -> None:
    # what c2c wrote before typed configs: the overrides given, no gate_learning_rate, no prompt format
    record["config"]["fuser"], record["config"]["c2c"] = {}, {}
    record["config"].pop("gate_learning_rate", None)
    for key in ("prompt_format", "chat_rows"):
        record["pair"]["c2c_config"].pop(key, None)


def test_an_older_run_record_compares_field_by_field(golden, tmp_path):
    run = copy_run(golden, tmp_path)
    _edit_record(run, _older)
    result = train(make_pair(), chat_rows(8), run_config(run, resume=True))  # the same run: resumes
    assert result.resumed_from is not None and result.resumed_from.name == CKPT4

    def other_size(record: dict) -> None:
        _older(record)
        record["config"]["fuser"] = {"hidden_size": 16}

    _edit_record(run, other_size)
    with pytest.raises(
        CheckpointError, match="(?s)holds a different run.*config.fuser.hidden_size: recorded 16, now 1024"
    ):
        train(make_pair(), chat_rows(8), run_config(run, resume=True))

    _edit_record(run, lambda r: r["config"].update(fuser={"hidden_sise": 16}))
    with pytest.raises(
        CheckpointError,
        match=r"(?s)train_run.json: config.fuser: unknown FuserConfig fields \['hidden_sise'\]"
        ".*cannot read the recorded run.*start a new run in another output_dir",
    ):
        train(make_pair(), chat_rows(8), run_config(run, resume=True))


# ---------------------------------------------------------------------- data and models


def plain_renderer(**kw) -> ExampleRenderer:
    tok = tokenizer("plain")
    return ExampleRenderer(tok, [TokenAligner(tok, tokenizer("llama3"))], chat=False, **kw)


@pytest.mark.parametrize(
    "messages",
    [
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
        ],
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2"},
        ],
    ],
)
def test_chat_rows_that_plain_text_cannot_hold_are_refused(messages):
    with pytest.raises(
        DataError,
        match=r"row 2: a conversation with turns \[.*\] before the response cannot be trained "
        "as plain text.*only a single user turn converts.*set tokenizer.chat_template",
    ):
        plain_renderer()({"messages": messages}, 2)


def test_a_sharer_without_chat_template_is_refused_in_chat_mode():
    rt = tokenizer("qwen3")
    with pytest.raises(DataError, match="tokenizer of sharer 0 .* has no chat template.*use_chat_template: false"):
        ExampleRenderer(rt, [TokenAligner(rt, tokenizer("plain"))], chat=True)


def test_a_receiver_whose_cache_does_not_continue_a_prefill_is_refused(tmp_path):
    rt, st = tokenizer("qwen3"), tokenizer("llama3")
    model = C2CModel.from_models(
        tiny_recurrent_model("jamba", len(rt)),
        tiny_model("llama", vocab_size=len(st), seed=1),
        fuser_config=FuserConfig(hidden_size=16, intermediate_size=16),
        receiver_tokenizer=rt,
        sharer_tokenizer=st,
    )
    with pytest.raises(UnsupportedModelError, match="the receiver .* cannot be trained"):
        train(model, chat_rows(4), run_config(tmp_path / "run", max_steps=1))
    assert not (tmp_path / "run").exists()


def test_fusion_settings_that_contradict_init_fuser_are_refused(tmp_path):
    saved = make_pair()
    saved.config = C2CConfig(token_alignment="offsets")
    saved.save_pretrained(tmp_path / "fuser")
    pair = (saved.receiver, saved.sharers[0])
    toks = {"receiver_tokenizer": saved.receiver_tokenizer, "sharer_tokenizer": saved.sharer_tokenizers[0]}
    cfg = run_config(
        tmp_path / "run", max_steps=1, save_steps=0, init_fuser=str(tmp_path / "fuser"), c2c={"alignment_shift": 1}
    )
    with pytest.raises(ConfigError, match="init_fuser .* records c2c settings .*drop the c2c options"):
        train(pair, chat_rows(4), cfg, **toks)
    # without c2c options the fuser continues with its recorded settings (and renders its data with them)
    result = train(pair, chat_rows(4), cfg.replace(c2c={}), **toks)
    assert result.model.config.token_alignment == "offsets"
    recorded = json.loads((result.final_dir / "fuser_config.json").read_text())["c2c_config"]
    assert recorded["token_alignment"] == "offsets" and recorded["alignment_shift"] == 0
