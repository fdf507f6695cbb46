"""TrainConfig: defaults of the reference recipe, YAML/JSON files, type coercion, flag overrides, errors."""

from __future__ import annotations

import json

import pytest

from c2c import FuserConfig
from c2c.train import ConfigError, TrainConfig


def test_defaults_are_the_reference_recipe():
    c = TrainConfig()
    assert (c.learning_rate, c.weight_decay, c.warmup_ratio, c.max_grad_norm) == (1e-4, 0.01, 0.1, 1.0)
    assert (c.seed, c.max_length) == (42, 2048)
    assert c.gate_temperature_start is c.gate_temperature_end is None  # the fuser's 1.0 -> 0.001


def test_yaml_file_with_yaml_quirks(tmp_path):
    path = tmp_path / "c.yaml"
    # YAML 1.1 reads "1e-4" as a string and "null" as None; lists may be scalars
    path.write_text(
        "learning_rate: 1e-4\nmax_steps: null\ndata: a.jsonl\nlog-with: [tensorboard]\nfuser: {hidden_size: 64}\n"
    )
    c = TrainConfig.from_file(path)
    assert c.learning_rate == 1e-4 and isinstance(c.learning_rate, float)
    assert c.max_steps is None and c.data == ["a.jsonl"] and c.log_with == ["tensorboard"]
    assert c.fuser.hidden_size == 64 and c.fuser == FuserConfig(hidden_size=64)  # typed, other fields default


def test_json_file_and_flags_override_the_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"batch_size": 4, "learning_rate": 0.001, "output_dir": "runs/x", "resume": False}))
    c = TrainConfig.from_sources(path, {"batch_size": 16, "learning_rate": None, "resume": True})
    assert c.batch_size == 16  # flag wins
    assert c.learning_rate == 0.001  # flag not given: the file's value
    assert c.output_dir == "runs/x" and c.resume is True


def test_unknown_option_suggests_the_right_name(tmp_path):
    with pytest.raises(ConfigError, match="unknown option 'learning_rat'. Did you mean 'learning_rate'"):
        TrainConfig.from_dict({"learning_rat": 1})


@pytest.mark.parametrize(
    "values, match",
    [
        ({"batch_size": "many"}, "batch_size.*expected an integer"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"warmup_ratio": 1.5}, "warmup_ratio must be in"),
        ({"layout": "xml"}, "option 'layout' must be one of 'auto', 'messages', 'conversations', 'prompt_response'"),
        ({"gate_temperature_end": 2.0}, "gate temperatures"),
        ({"resume": True, "overwrite_output_dir": True}, "contradict"),
        ({"resume": "maybe"}, "expected true/false"),
        ({"fuser": 3}, "option 'fuser' expects a mapping of FuserConfig fields"),
    ],
)
def test_invalid_values_are_named(values, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(values)


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        TrainConfig.from_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        TrainConfig.from_file(bad)
    toml = tmp_path / "c.toml"
    toml.write_text("a = 1")
    with pytest.raises(ConfigError, match="unknown extension"):
        TrainConfig.from_file(toml)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        TrainConfig.from_file(lst)


def test_round_trip_and_fingerprint_ignores_bookkeeping(tmp_path):
    c = TrainConfig(data=["a.jsonl"], max_steps=10)
    c.save(tmp_path / "c.json")
    assert TrainConfig.from_file(tmp_path / "c.json") == c
    assert c.replace(save_steps=7, progress=False).fingerprint() == c.fingerprint()
    assert c.replace(learning_rate=1.0).fingerprint() != c.fingerprint()
