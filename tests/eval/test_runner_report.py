"""Runner + reports end to end on the fixture benchmark with tiny models (answers are garbage: we check the
harness, never accuracy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from c2c.eval.benchmarks import Benchmark, Question, load_benchmark
from c2c.eval.modes import C2CMode, ReceiverOnly, SharerOnly, TextToText
from c2c.eval.report import fit_subject_routing, load_runs, make_report, markdown_report, write_run
from c2c.eval.runner import EvalConfig, build_query, evaluate, score

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def bench() -> Benchmark:
    return load_benchmark(FIXTURES / "mmlu_redux_tiny.jsonl", limit=5)


def test_score_is_strict() -> None:
    q = Question("x", "Which?", ["a", "b", "c"], "B", ["B"])
    assert score(q, "The correct answer is B")["correct"]
    assert not score(q, "Because of A.")["correct"]  # stray capital: unparsed, wrong
    assert score(q, "Because of A.")["parse_method"] == "none"
    qa = Question("y", "Capital of France?", [], "Paris", ["Paris"])
    assert score(qa, "Paris.")["correct"] and not score(qa, "Lyon")["correct"]


def test_query_carries_options_and_instruction(bench) -> None:
    query = build_query(bench.questions[0], EvalConfig().prompts)
    assert "A. Venus" in query.prompt and "B. Mercury" in query.prompt
    assert '"The correct answer is X"' in query.prompt and "A, B, C, D" in query.prompt
    # The T2T note prompt and routing read the plain question with its options, no instruction.
    assert query.question == "Which planet is closest to the Sun?\nA. Venus\nB. Mercury\nC. Earth\nD. Mars"


def test_run_json_markdown_figures(pair, c2c_model, bench, tmp_path: Path) -> None:
    modes = [
        ReceiverOnly(pair.receiver, pair.receiver_tokenizer),
        SharerOnly(pair.sharer, pair.sharer_tokenizer),
        TextToText(pair.receiver, pair.receiver_tokenizer, pair.sharer, pair.sharer_tokenizer, note_max_new_tokens=4),
        C2CMode(c2c_model),
    ]
    run = evaluate(modes, bench, EvalConfig(batch_size=2, max_new_tokens=4, progress=False), run_name="tiny")
    assert len(run["records"]) == 4 * len(bench)
    for name, m in run["metrics"].items():
        recs = [r for r in run["records"] if r["mode"] == name]
        assert m["n"] == len(bench) and m["correct"] == sum(r["correct"] for r in recs)
        assert sorted(m["unparsed"]) == sorted(r["uid"] for r in recs if r["parse_method"] in ("none", "conflict"))
        assert m["latency"]["batches"] == 3 and m["latency"]["stages"]["total"]["median"] > 0
    assert all("note" in r for r in run["records"] if r["mode"] == "t2t")
    assert run["metrics"]["t2t"]["latency"]["stages"]["note"]["n"] == 3
    info = run["run"]
    assert info["seed"] == 0 and info["config"]["max_new_tokens"] == 4
    assert info["environment"]["packages"]["torch"] and info["modes"][2]["note_max_new_tokens"] == 4
    assert "gates" in info["modes"][3]

    path = write_run(run, tmp_path / "runs" / "tiny.json")
    (tmp_path / "runs" / "not_a_run.json").write_text(json.dumps({"results": []}))
    runs = load_runs([tmp_path / "runs"])
    assert len(runs) == 1 and runs[0]["metrics"] == json.loads(path.read_text())["metrics"]
    md = markdown_report(runs)
    assert "| receiver |" in md and "| c2c |" in md and "sharer_prefill" in md
    written = make_report([path], tmp_path / "report")
    for key in ("accuracy", "accuracy_vs_latency", "gates", "markdown"):
        assert written[key].exists() and written[key].stat().st_size > 0
    assert written["accuracy"].read_bytes()[:4] == b"\x89PNG"


def test_batched_equals_unbatched(pair, bench) -> None:
    mode = ReceiverOnly(pair.receiver, pair.receiver_tokenizer)
    runs = [evaluate([mode], bench, EvalConfig(batch_size=b, max_new_tokens=5, progress=False)) for b in (1, 5)]
    assert [r["response"] for r in runs[0]["records"]] == [r["response"] for r in runs[1]["records"]]
    assert runs[0]["metrics"]["receiver"]["accuracy"] == runs[1]["metrics"]["receiver"]["accuracy"]


def test_errors_count_as_wrong_and_are_listed(c2c_model) -> None:
    """A prompt beyond the receiver's context makes C2CModel.generate raise: that question is wrong and
    listed; its batch neighbours are still answered."""
    long = Question("too-long", "word " * 700, ["yes", "no"], "A", ["A"])
    ok = [Question(f"ok{i}", f"Is {i} even?", ["yes", "no"], "A", ["A"]) for i in range(2)]
    bench = Benchmark("mixed", "mmlu-redux", [ok[0], long, ok[1]], files=[])
    run = evaluate([C2CMode(c2c_model)], bench, EvalConfig(batch_size=3, max_new_tokens=3, progress=False))
    m = run["metrics"]["c2c"]
    assert m["errors"] == ["too-long"] and m["n"] == 3
    bad = next(r for r in run["records"] if r["uid"] == "too-long")
    assert bad["correct"] is False and "context" in bad["error"]
    assert all(r["error"] is None for r in run["records"] if r["uid"] != "too-long")


def test_fit_subject_routing() -> None:
    run = {
        "run": {"name": "r"},
        "metrics": {
            "receiver": {"by_subject": {"a": {"accuracy": 0.5}, "b": {"accuracy": 0.2}}},
            "sharer": {"by_subject": {"a": {"accuracy": 0.5}, "b": {"accuracy": 0.9}}},
        },
    }
    assert fit_subject_routing(run) == {"a": 0, "b": 1}
    with pytest.raises(ValueError, match="no metrics"):
        fit_subject_routing(run, ("receiver", "t2t"))


def test_evaluate_rejects_duplicate_mode_names(pair, bench) -> None:
    mode = ReceiverOnly(pair.receiver, pair.receiver_tokenizer)
    with pytest.raises(ValueError, match="unique"):
        evaluate([mode, mode], bench)


@pytest.mark.parametrize(
    ("path", "kwargs"),
    [
        ("arc_challenge_tiny.jsonl", {}),
        ("openbookqa_tiny.jsonl", {}),
        ("ceval", {"split": "val"}),
        ("qa_tiny.jsonl", {}),
    ],
)
def test_every_fixture_format_runs(pair, path: str, kwargs: dict) -> None:
    bench = load_benchmark(FIXTURES / path, limit=2, **kwargs)
    run = evaluate(
        [ReceiverOnly(pair.receiver, pair.receiver_tokenizer)],
        bench,
        EvalConfig(batch_size=2, max_new_tokens=2, progress=False),
    )
    m = run["metrics"]["receiver"]
    assert m["n"] == 2 and not m["errors"] and len(run["records"]) == 2
    assert json.dumps(run, ensure_ascii=False)  # the run document is plain JSON
