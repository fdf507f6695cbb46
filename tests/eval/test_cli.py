"""`c2c eval` end to end: saved tiny models and fuser on disk, fixture benchmark, all outputs written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from c2c.eval.cli import eval_app
from c2c.eval.factory import ModeOptions, build_modes, routing_table

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def saved(pair, make_c2c, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for role, model, tok in (
        ("receiver", pair.receiver, pair.receiver_tokenizer),
        ("sharer", pair.sharer, pair.sharer_tokenizer),
    ):
        model.save_pretrained(root / role)
        tok.save_pretrained(root / role)
        paths[role] = root / role
    c2c_model = make_c2c()
    c2c_model.fusers[0].set_gates(True)
    c2c_model.save_pretrained(str(root / "fuser"))
    paths["fuser"] = root / "fuser"
    return paths


def test_eval_command_writes_json_markdown_figures(saved, tmp_path: Path) -> None:
    out = tmp_path / "results"
    args = [
        "run",
        str(FIXTURES / "mmlu_redux_tiny.jsonl"),
        str(FIXTURES / "qa_tiny.jsonl"),
        "--modes",
        "receiver,t2t,routing,c2c,oracle",
        "--fuser",
        str(saved["fuser"]),
        "--receiver",
        str(saved["receiver"]),
        "--sharer",
        str(saved["sharer"]),
        "--limit",
        "3",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "3",
        "--note-max-tokens",
        "3",
        "--oracle-shots",
        "1",
        "--out",
        str(out),
        "--name",
        "cli",
        "--no-progress",
        "--device",
        "cpu",
    ]
    result = CliRunner().invoke(eval_app, args)
    assert result.exit_code == 0, result.output
    runs = sorted(out.glob("cli-*.json"))
    assert [p.name for p in runs] == ["cli-mmlu-redux.json", "cli-qa.json"]
    doc = json.loads(runs[0].read_text())
    assert list(doc["metrics"]) == ["receiver", "t2t", "routing", "c2c", "oracle"]
    assert len(doc["records"]) == 15 and doc["run"]["models"]["fuser"] == str(saved["fuser"])
    gates = doc["run"]["modes"][3]["gates"][0]["layers"]
    assert all(g["key_open"] for g in gates.values())  # the saved (opened) fuser was loaded
    for f in ("report.md", "accuracy.png", "accuracy_vs_latency.png", "gates.png"):
        assert (out / f).stat().st_size > 0
    assert "| oracle |" in (out / "report.md").read_text()

    rep = CliRunner().invoke(eval_app, ["report", str(runs[1]), "--out", str(tmp_path / "rep")])
    assert rep.exit_code == 0, rep.output and (tmp_path / "rep" / "report.md").exists()


def test_eval_command_errors_are_clear(saved, tmp_path: Path) -> None:
    res = CliRunner().invoke(
        eval_app,
        [
            "run",
            str(FIXTURES / "qa_tiny.jsonl"),
            "--modes",
            "c2c",
            "--receiver",
            str(saved["receiver"]),
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code != 0 and "fuser" in res.output
    res = CliRunner().invoke(eval_app, ["run", str(tmp_path / "none.jsonl"), "--modes", "receiver"])
    assert res.exit_code != 0 and "no benchmark file" in res.output


def test_build_modes_and_routing_table(pair, tmp_path: Path) -> None:
    (tmp_path / "t.json").write_text(json.dumps({"chem": "sharer", "astro": "receiver"}))
    table = routing_table(tmp_path / "t.json")
    assert table == {"chem": 1, "astro": 0}
    modes = build_modes(
        ["receiver", "routing", "few_shot"],
        receiver=pair.receiver,
        receiver_tokenizer=pair.receiver_tokenizer,
        sharer=pair.sharer,
        sharer_tokenizer=pair.sharer_tokenizer,
        options=ModeOptions(routing=table),
    )
    assert [m.name for m in modes] == ["receiver", "routing", "few_shot"]
    with pytest.raises(ValueError, match="unknown modes"):
        build_modes(["t3t"], receiver=pair.receiver)
    with pytest.raises(ValueError, match="needs its models"):
        build_modes(["sharer"], receiver=pair.receiver, receiver_tokenizer=pair.receiver_tokenizer)
