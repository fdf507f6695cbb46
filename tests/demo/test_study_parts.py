"""The demo's study machinery on its own: the router's fit, the interleaved timing loop, the controls'
targets (built so that they can fail) and the fuser recipes of the size sweep."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c2c.demo.config import DemoConfig, StudyConfig
from c2c.demo.fusers import FuserJob, Recipe, build_model, fuser_config, job_key
from c2c.demo.report import gates_text
from c2c.demo.routing import ConfidenceRouter
from c2c.demo.study import data_sweep_epochs, data_sweep_questions, study_jobs
from c2c.demo.targets import targets
from c2c.demo.timing import interleaved, ratio
from c2c.demo.world import Question, World, WorldConfig

# ------------------------------------------------------------------------------------------ routing

rows = st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.booleans(), st.booleans()), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(rows)
def test_the_fitted_router_is_at_least_as_good_as_either_model_alone_on_its_fitting_data(data) -> None:
    conf_r, conf_s, ok_r, ok_s = (list(x) for x in zip(*data))
    router = ConfidenceRouter.fit(conf_r, conf_s, ok_r, ok_s)
    n = len(data)
    assert router.val_accuracy >= max(sum(ok_r), sum(ok_s)) / n - 1e-12
    choice = router.choose(conf_r, conf_s)
    routed = sum(ok_s[i] if c else ok_r[i] for i, c in enumerate(choice)) / n
    assert routed == pytest.approx(router.val_accuracy)
    assert router.val_share_to_sharer == pytest.approx(sum(choice) / n)


def test_the_router_sends_confident_sharer_questions_to_the_sharer() -> None:
    # The sharer is right exactly when it is confident; the receiver is never right.
    conf_s = [0.9, 0.95, 0.2, 0.1]
    router = ConfidenceRouter.fit([0.3] * 4, conf_s, [False] * 4, [True, True, False, False])
    assert router.choose([0.3] * 4, conf_s)[:2] == [1, 1]
    assert router.val_accuracy == 0.5
    # Both right everywhere but the receiver is more confident: nothing to gain, so no preference (margin 0
    # side): the tie between margins goes to the one closest to 0.
    tie = ConfidenceRouter.fit([0.9, 0.8], [0.1, 0.2], [True, True], [True, True])
    assert tie.val_accuracy == 1.0 and abs(tie.margin) <= 0.7


def test_the_router_refuses_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="same lengths"):
        ConfidenceRouter.fit([0.1], [0.2, 0.3], [True], [False])


# ------------------------------------------------------------------------------------------ timing


def test_interleaved_timing_rotates_the_paths_and_records_the_load() -> None:
    calls: list[tuple[str, str]] = []

    def path(name: str, seconds: float):
        def run(q: Question) -> dict[str, float]:
            calls.append((name, q.entity))
            return {"decode": seconds, "total": seconds}

        return run

    qs = [Question(f"E{i}", "city", 0, f"Where does E{i} live?", "Rome") for i in range(4)]
    out = interleaved({"a": path("a", 0.1), "b": path("b", 0.3), "c": path("c", 0.2)}, qs)
    timed = calls[3:]  # after one warm-up call per path
    assert [n for n, _ in timed] == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert [e for _, e in timed] == [q.entity for q in qs for _ in range(3)]
    assert ratio(out, "b", "a") == pytest.approx(3.0)
    assert out["queries"] == 4 and out["order"] == "rotating"
    assert out["load_average_start"] is not None and len(out["load_average_end"]) == 3
    with pytest.raises(ValueError, match="at least one query"):
        interleaved({"a": path("a", 0.1)}, [])


# ------------------------------------------------------------------------------------------ targets


def _results(**over: Any) -> dict[str, Any]:
    acc = {"receiver": 0.1, "sharer": 0.98, "t2t": 0.84, "c2c": 0.85, "c2c_identical": 0.12}
    acc.update(over.pop("acc", {}))
    res: dict[str, Any] = {
        "paths": {k: {"accuracy": v, "median_seconds": 0.1} for k, v in acc.items()},
        "swapped": {"true_answer_accuracy": 0.05, "follows_other_accuracy": 0.7},
        "models": {
            r: {"bar_met": True, "bar": 0.97, "quality": {"score": 0.99}, "cached": True}
            for r in ("receiver", "sharer")
        },
        "study_run": False,
        "total_seconds": 60.0,
    }
    res["paths"]["t2t"]["median_seconds"] = 0.5
    for k, v in over.items():
        res[k] = v
    return res


def test_the_controls_pass_a_fuser_that_reads_the_sharer() -> None:
    t = targets(_results())
    assert all(v["met"] for v in t.values()), {k: v for k, v in t.items() if not v["met"]}
    assert "cached_run_le_2_min" in t


def test_a_fuser_that_transfers_nothing_fails_the_swapped_control() -> None:
    """Near chance with a swapped sharer, but it follows nobody: the old 'within 10 points of chance'
    passed this; following the other entity at >= 70 % of C2C's accuracy does not."""
    t = targets(_results(swapped={"true_answer_accuracy": 0.09, "follows_other_accuracy": 0.1}))
    assert t["swapped_true_answer_below_receiver"]["met"]
    assert not t["swapped_follows_other_ge_70pct_of_c2c"]["met"]


def test_a_fuser_that_answers_by_itself_fails_the_identical_control() -> None:
    t = targets(_results(acc={"c2c_identical": 0.5}))
    assert not t["identical_within_10_points_of_receiver"]["met"]


def test_missed_bars_and_slow_runs_are_reported_as_missed() -> None:
    res = _results(total_seconds=200.0)
    res["models"]["sharer"].update(bar_met=False, quality={"score": 0.5})
    t = targets(res)
    assert not t["sharer_meets_its_bar"]["met"] and t["sharer_meets_its_bar"]["value"] == 0.5
    assert not t["cached_run_le_2_min"]["met"]
    res = copy.deepcopy(res)
    res["fuser_training"] = {"c2c": {"cached": False}}  # cached models, a fuser trained: neither label
    assert "partly_cached_run_le_12_min" in targets(res) and "from_scratch_le_12_min" not in targets(res)
    res["models"]["receiver"]["cached"] = False  # one model pretrained: still partly cached
    assert "partly_cached_run_le_12_min" in targets(res)
    res["models"]["sharer"]["cached"] = False
    t = targets(res)
    assert "from_scratch_le_12_min" in t and t["from_scratch_le_12_min"]["met"]
    res["total_seconds"] = 13 * 60.0
    assert not targets(res)["from_scratch_le_12_min"]["met"]
    res["study_run"] = True
    assert not any(k.endswith("_min") for k in targets(res))  # the study reports its own time


# ------------------------------------------------------------------------------------------ fusers


def test_compact_families_take_only_their_own_size_fields() -> None:
    recipe = Recipe(DemoConfig().fuser, DemoConfig().train, 0, "r", "s", "d")
    low = fuser_config(recipe, FuserJob("x", {}, fuser={"family": "lowrank", "rank": 16}))
    assert low.family == "lowrank" and low.rank == 16 and low.gate_init == 0.0
    full = fuser_config(recipe, FuserJob("y", {}))
    assert full.hidden_size == DemoConfig().fuser["hidden_size"]


DATA_FILES = {75: "d75.jsonl", 150: "d150.jsonl"}


def test_the_study_trains_each_grid_cell_once_and_every_ablation_and_size() -> None:
    cfg = DemoConfig(study=StudyConfig(sizes={"lowrank_r16": {"family": "lowrank", "rank": 16}}))
    names = [j.name for j in study_jobs(cfg, DATA_FILES)]
    assert names == [
        "grid_shift0_longest",
        "grid_shift0_offsets",
        "grid_shift1_longest",  # shift1_offsets is "c2c"
        "c2c_full",
        "c2c_no_gate",
        "c2c_sharer_inputs",
        "c2c_sharer_inputs_no_gate",
        "size_lowrank_r16",
        "data_75",
        "data_150",
        "seed_1",
        "seed_2",
    ]
    assert len(set(names)) == len(names)
    jobs = {j.name: j for j in study_jobs(cfg, DATA_FILES)}
    recipe = Recipe(cfg.fuser, cfg.train, 0, "r", "s", "d")
    # The headline recipe is projection only; the ablations are the paper's gated fuser and its relatives,
    # and the compact sizes keep the headline's behaviour (only their size fields differ).
    assert fuser_config(recipe, jobs["c2c_full"]).variant == "full"
    assert fuser_config(recipe, jobs["c2c_full"]).inputs == "both"
    assert fuser_config(recipe, jobs["c2c_sharer_inputs_no_gate"]).inputs == "sharer"
    assert fuser_config(recipe, jobs["size_lowrank_r16"]).variant == cfg.fuser["variant"] == "projection_only"
    assert jobs["size_lowrank_r16"].train == {"num_epochs": 40} and jobs["c2c_full"].train == {}


def test_the_data_sweep_trains_the_headline_fuser_on_fewer_entities_for_as_many_steps() -> None:
    cfg = DemoConfig()
    jobs = {j.name: j for j in study_jobs(cfg, DATA_FILES)}
    epochs = cfg.train["num_epochs"]
    for n, path in DATA_FILES.items():
        job = jobs[f"data_{n}"]
        assert job.data == path and job.fuser == {} and job.c2c == cfg.variant
        # Same optimiser steps as the headline: epochs x entities is held fixed.
        assert job.train["num_epochs"] == data_sweep_epochs(cfg, n) == epochs * cfg.world.n_fuser // n
    assert jobs["c2c_full"].data == ""  # every other job trains on the run's file
    with pytest.raises(ValueError, match=r"no training file .*\[150\].*write them first"):
        study_jobs(cfg, {75: "d75.jsonl"})


def test_a_data_sweep_row_reads_exactly_the_first_n_fuser_entities() -> None:
    world = World.generate(WorldConfig(seed=3, n_receiver=4, n_practice=4, n_fuser=12, n_val=2, n_test=2))
    qs = data_sweep_questions(world, 5)
    first = [e.name for e in world.split("fuser")[:5]]
    assert sorted({q.entity for q in qs}) == sorted(first)
    assert len(qs) == 5 * 8  # four attributes, two paraphrases each
    by_name = world.by_name()
    assert all(by_name[q.entity].facts[q.attribute] == q.answer for q in qs)


@pytest.mark.parametrize("sizes", [(0,), (300,), (75, 400)])
def test_the_demo_config_refuses_a_data_sweep_size_outside_the_fuser_entities(sizes: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"data_sizes .* must lie between 1 and the 300 fuser entities.*smaller"):
        DemoConfig(study=StudyConfig(data_sizes=sizes))


def test_a_fusers_cache_key_follows_its_training_data_not_the_files_path(tmp_path) -> None:
    run = tmp_path / "run.jsonl"
    run.write_text('{"prompt": "a", "response": " b"}\n')
    recipe = Recipe({"hidden_size": 8}, {"num_epochs": 1}, 0, "r", "s", str(run))
    plain = FuserJob("c2c", {"alignment_shift": 1})
    # Pinned: a job on the run's data keeps the key it had before jobs could bring their own file, so
    # cached fusers are not retrained.
    assert job_key(plain, recipe) == "f942d916ca0ca9fc"
    a, b, c = tmp_path / "a.jsonl", tmp_path / "elsewhere" / "a.jsonl", tmp_path / "c.jsonl"
    b.parent.mkdir()
    a.write_text('{"prompt": "x", "response": " y"}\n')
    b.write_text(a.read_text())
    c.write_text('{"prompt": "x", "response": " z"}\n')
    key = {p: job_key(FuserJob("data_1", {"alignment_shift": 1}, data=str(p)), recipe) for p in (a, b, c)}
    assert key[a] == key[b] != key[c]
    assert key[a] != job_key(FuserJob("data_1", {"alignment_shift": 1}), recipe)


def test_the_seed_replicates_are_the_headline_job_from_other_seeds() -> None:
    cfg = DemoConfig()
    jobs = {j.name: j for j in study_jobs(cfg, DATA_FILES)}
    headline = FuserJob("c2c", dict(cfg.variant))
    for k in (1, 2):
        job = jobs[f"seed_{k}"]
        assert job.seed_offset == 1000 * k
        assert (job.c2c, job.fuser, job.train, job.data, job.identical) == (
            headline.c2c,
            headline.fuser,
            headline.train,
            headline.data,
            headline.identical,
        )
    with pytest.raises(ValueError, match=r"fuser_seeds \[0, 1\] must be distinct integers >= 1.*\(\) for no"):
        DemoConfig(study=StudyConfig(fuser_seeds=(0, 1)))
    with pytest.raises(ValueError, match=r"fuser_seeds \[2, 2\] must be distinct"):
        DemoConfig(study=StudyConfig(fuser_seeds=(2, 2)))
    assert DemoConfig(study=StudyConfig(fuser_seeds=())).study.fuser_seeds == ()


def test_a_seed_offset_changes_the_fresh_fuser_and_its_cache_key_and_nothing_else(tmp_path) -> None:
    from c2c.testing.models import tiny_model
    from c2c.testing.tokenizers import build_tokenizer

    tok = build_tokenizer(None, 300)
    for name, family in (("r", "qwen3"), ("s", "llama")):
        tiny_model(family, vocab_size=len(tok)).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    run = tmp_path / "run.jsonl"
    run.write_text('{"prompt": "a", "response": " b"}\n')
    recipe = Recipe(
        {"hidden_size": 8, "intermediate_size": 8}, {}, 5, str(tmp_path / "r"), str(tmp_path / "s"), str(run)
    )

    def fresh(offset: int) -> dict[str, Any]:
        return build_model(recipe, FuserJob("c2c", {}, seed_offset=offset)).fuser_list[0].state_dict()

    base, again, other = fresh(0), fresh(0), fresh(1000)
    assert all(base[k].equal(again[k]) for k in base)  # deterministic from the seed
    assert any(not base[k].equal(other[k]) for k in base)
    # Offset 0 keeps the key a job had before jobs could have offsets (cached fusers are reused).
    assert job_key(FuserJob("c2c", {}), recipe) == job_key(FuserJob("c2c", {}, seed_offset=0), recipe)
    assert job_key(FuserJob("c2c", {}), recipe) != job_key(FuserJob("c2c", {}, seed_offset=1000), recipe)


def test_gate_readout_says_when_a_fuser_has_no_gates() -> None:
    """A variant without gates is not reported as "open" gates (its hard-gate states read all open)."""
    opened = {"0": {"key_open": True, "value_open": True}}
    text = gates_text(
        {
            "gates": {
                "c2c": {"final": opened, "trajectory": None},
                "c2c_full": {
                    "final": {"0": {"key_open": True, "value_open": False}},
                    "trajectory": [{"step": 0, "logits": [[0.0, 0.0]]}, {"step": 9, "logits": [[2.5, -0.7]]}],
                },
            }
        }
    )
    lines = text.splitlines()
    assert "no gates" in lines[1] and "0:1/1" not in lines[1]
    assert "0:1/0 (+0.0->+2.5, +0.0->-0.7)" in lines[2]
