"""Benchmark loaders: public release layouts, file types, filters, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from c2c.eval.benchmarks import detect_format, load_benchmark

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def test_mmlu_redux_jsonl_subjects_and_flags() -> None:
    b = load_benchmark(FIX / "mmlu_redux_tiny.jsonl")
    assert b.format == "mmlu-redux" and len(b) == 8 and b.kind == "mc"
    assert b.subjects() == ["astronomy", "chemistry"]
    assert b.questions[0].answer == "B" and b.questions[0].choices[1] == "Mercury"
    chem = load_benchmark(FIX / "mmlu_redux_tiny.jsonl", subject="chemistry", limit=3)
    assert [q.subject for q in chem.questions] == ["chemistry"] * 3
    assert len(load_benchmark(FIX / "mmlu_redux_tiny.jsonl", drop_flagged=True)) == 7
    assert len({q.uid for q in b.questions}) == 8


def test_arc_numeric_labels_and_five_options() -> None:
    b = load_benchmark(FIX / "arc_challenge_tiny.jsonl", format="arc-challenge")
    by_id = {q.uid: q for q in b.questions}
    assert by_id["ARC_tiny_2"].answer == "C" and len(by_id["ARC_tiny_2"].choices) == 3
    assert len(by_id["ARC_tiny_3"].choices) == 5 and by_id["ARC_tiny_3"].answer == "C"


def test_openbookqa_original_nested_layout() -> None:
    b = load_benchmark(FIX / "openbookqa_tiny.jsonl")
    assert b.format == "openbookqa"
    assert b.questions[0].question == "A magnet will stick to" and b.questions[0].answer == "B"
    assert b.questions[0].meta["fact1"] == "magnets attract iron"


def test_openbookqa_hub_layout(tmp_path: Path) -> None:
    row = {
        "id": "1",
        "question_stem": "Frogs are",
        "choices": {"text": ["plants", "amphibians"], "label": ["A", "B"]},
        "answerKey": "B",
    }
    (tmp_path / "test.jsonl").write_text(json.dumps(row) + "\n")
    b = load_benchmark(tmp_path / "test.jsonl")
    assert b.format == "openbookqa" and b.questions[0].answer == "B" and b.questions[0].split == "test"


def test_ceval_csv_release_layout_and_split_filter() -> None:
    b = load_benchmark(FIX / "ceval", split="val")
    assert b.format == "ceval" and len(b) == 3
    assert b.questions[0].subject == "computer_network" and b.questions[0].split == "validation"
    assert b.questions[2].answer == "C"
    with pytest.raises(ValueError, match="no questions left"):
        load_benchmark(FIX / "ceval", split="test")


def test_ceval_test_split_without_answers_is_refused(tmp_path: Path) -> None:
    (tmp_path / "law").mkdir()
    row = {"id": 0, "question": "q", "A": "1", "B": "2", "C": "3", "D": "4", "answer": ""}
    (tmp_path / "law" / "test.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match="evaluate on split 'val'"):
        load_benchmark(tmp_path)


@pytest.mark.parametrize("ext", ["parquet", "json"])
def test_parquet_and_json_release_layout(tmp_path: Path, ext: str) -> None:
    rows = [json.loads(line) for line in (FIX / "mmlu_redux_tiny.jsonl").read_text().splitlines()]
    for subject in ("astronomy", "chemistry"):
        sub = [{k: v for k, v in r.items() if k != "subject"} for r in rows if r["subject"] == subject]
        (tmp_path / subject).mkdir()
        target = tmp_path / subject / f"test-00000-of-00001.{ext}"
        if ext == "parquet":
            datasets.Dataset.from_list(sub).to_parquet(str(target))
        else:
            target.write_text(json.dumps(sub))  # a JSON array, not JSON lines
    b = load_benchmark(tmp_path, subject="chemistry,astronomy", split="test")
    assert len(b) == 8 and b.subjects() == ["astronomy", "chemistry"]
    assert all(q.split == "test" for q in b.questions)
    assert len(load_benchmark(str(tmp_path / "*" / f"*.{ext}"), subject=["astronomy"])) == 4


def test_open_qa() -> None:
    b = load_benchmark(FIX / "qa_tiny.jsonl")
    assert b.kind == "qa" and b.questions[0].answers == ["Paris"] and b.questions[1].answers == ["8"]
    assert not b.questions[0].is_multiple_choice


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no benchmark file"):
        load_benchmark(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="unknown benchmark format"):
        load_benchmark(FIX / "qa_tiny.jsonl", format="squad")
    with pytest.raises(ValueError, match="cannot tell the benchmark format"):
        detect_format(["text", "label"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 5}) + "\n")
    with pytest.raises(ValueError, match="row 0"):
        load_benchmark(bad)
