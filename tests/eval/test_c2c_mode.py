"""The C2C mode wraps C2CModel.generate behind the same interface as the baselines."""

from __future__ import annotations

import pytest

from c2c.eval.modes import C2CMode, Query, ReceiverOnly

QUERIES = [
    Query("q1", "Which planet is closest to the Sun?", "Which planet is closest to the Sun?"),
    Query("q2", "What is the chemical symbol of gold? A. Ag B. Au", "What is the chemical symbol of gold?"),
]


def test_closed_gates_leave_the_receiver_unchanged(pair, c2c_model) -> None:
    c2c_model.fusers[0].set_gates(False)
    fused = C2CMode(c2c_model).generate(QUERIES, max_new_tokens=6)
    alone = ReceiverOnly(pair.receiver, pair.receiver_tokenizer).generate(QUERIES, max_new_tokens=6)
    assert fused.texts == alone.texts
    assert C2CMode(c2c_model, model_mode="receiver").generate(QUERIES, max_new_tokens=6).texts == alone.texts


def test_open_gates_batched_equals_unbatched_with_stage_timings(c2c_model) -> None:
    c2c_model.fusers[0].set_gates(True)
    try:
        mode = C2CMode(c2c_model)
        out = mode.generate(QUERIES, max_new_tokens=6)
        assert {"sharer_prefill", "fusion", "receiver_prefill", "decode"} <= set(out.timings)
        assert "total" not in out.timings
        assert out.texts == [mode.generate([q], max_new_tokens=6).texts[0] for q in QUERIES]
        gates = mode.describe()["gates"][0]["layers"]
        assert gates and all(g["key_open"] and g["value_open"] for g in gates.values())
    finally:
        c2c_model.fusers[0].set_gates(False)


def test_c2c_mode_errors(c2c_model) -> None:
    with pytest.raises(ValueError, match="model_mode"):
        C2CMode(c2c_model, model_mode="t2t")
    out = C2CMode(c2c_model).generate(QUERIES, max_new_tokens=3, min_new_tokens=3)
    assert [x["new_tokens"] for x in out.extras] == [3] * len(QUERIES)
    c2c_model.train()
    try:
        with pytest.raises(ValueError, match="model.eval"):
            C2CMode(c2c_model).generate(QUERIES, max_new_tokens=2)
    finally:
        c2c_model.eval()
