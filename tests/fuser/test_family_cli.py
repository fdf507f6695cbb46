"""``c2c train --set fuser.family=... --set fuser.rank=...`` end to end, then ``c2c info`` on what it saved."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from c2c.cli import app
from c2c.fuser import FuserConfig, fuser_size
from c2c.persistence import read_record
from c2c.testing.models import tiny_model
from c2c.testing.tokenizers import build_tokenizer


@pytest.fixture(scope="module")
def pair_on_disk(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tok = build_tokenizer(None, 380, chat_template=None)
    for name, family, seed in [("receiver", "qwen3", 0), ("sharer", "llama", 1)]:
        tiny_model(family, vocab_size=len(tok), seed=seed).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    rows = [{"prompt": f"where is item {i}?", "response": f"in box {i % 3}."} for i in range(6)]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_train_selects_a_family_and_info_shows_its_size(pair_on_disk, tmp_path):
    run = tmp_path / "run"
    args = [
        "train",
        "--receiver",
        str(pair_on_disk / "receiver"),
        "--sharer",
        str(pair_on_disk / "sharer"),
        "--data",
        str(pair_on_disk / "data.jsonl"),
        "-o",
        str(run),
        "--max-steps",
        "1",
        "--batch-size",
        "2",
        "--no-progress",
        "--set",
        "fuser.family=lowrank",
        "--set",
        "fuser.rank=16",
    ]
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    record = read_record(run / "final")
    fc = record.fuser_configs[0]
    assert (fc.family, fc.rank) == ("lowrank", 16)
    size = fuser_size(fc, record.geometries()[0])

    info = CliRunner().invoke(app, ["info", str(run / "final")], catch_exceptions=False)
    assert info.exit_code == 0, info.output
    assert f"{size.parameters:,} parameters" in info.output and "family lowrank, rank 16" in info.output
    assert f"{size.flops_per_token / 1e6:.1f} MFLOP/token" in info.output
    card = (run / "final" / "README.md").read_text()
    assert f"{size.parameters:,} parameters" in card and "family `lowrank` (lowrank, rank 16)" in card
    # a compact fuser really is smaller than the default one for the same pair
    assert size.parameters * 100 < fuser_size(FuserConfig(), record.geometries()[0]).parameters


def test_train_refuses_a_field_of_another_family(pair_on_disk, tmp_path):
    args = [
        "train",
        "--receiver",
        str(pair_on_disk / "receiver"),
        "--sharer",
        str(pair_on_disk / "sharer"),
        "--data",
        str(pair_on_disk / "data.jsonl"),
        "-o",
        str(tmp_path / "run"),
        "--max-steps",
        "1",
        "--no-progress",
        "--set",
        "fuser.rank=16",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code != 0
    assert "rank=16 sizes family 'lowrank'" in res.output and "--set fuser.family=lowrank" in res.output
    assert not (tmp_path / "run" / "final").exists()
