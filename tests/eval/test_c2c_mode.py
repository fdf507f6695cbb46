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
    mode = C2CMode(c2c_model)
    out = mode.generate(QUERIES, max_new_tokens=6)
    assert {"sharer_prefill", "fusion", "receiver_prefill", "decode"} <= set(out.timings)
    assert "total" not in out.timings
    assert out.texts == [mode.generate([q], max_new_tokens=6).texts[0] for q in QUERIES]
    gates = mode.describe()["gates"][0]["layers"]
    assert gates and all(g["key_open"] and g["value_open"] for g in gates.values())


def test_a_plain_text_fuser_is_evaluated_on_plain_text_in_every_mode(pair, c2c_model) -> None:
    """The fuser records how it was trained; eval prompts it (and the baselines beside it) the same way."""
    from dataclasses import replace

    from c2c.eval.factory import ModeOptions, build_modes
    from c2c.eval.generation import plain_text
    from c2c.eval.parsing import strip_thinking
    from c2c.hf import encode_text

    c2c_model.config = replace(c2c_model.config, prompt_format="text")
    modes = {m.name: m for m in build_modes(["receiver", "sharer", "t2t", "c2c"], c2c_model=c2c_model)}
    assert all(m.describe().get("prompt_format", "text") == "text" for m in modes.values())
    q = QUERIES[0]
    want = c2c_model.generate(plain_text(q.messages()), max_new_tokens=5, mode="receiver")
    assert modes["receiver"].generate([q], max_new_tokens=5).texts == [strip_thinking(want)]
    ids = encode_text(pair.receiver_tokenizer, plain_text(q.messages()))
    assert c2c_model.encode(plain_text(q.messages())).input_ids[0].tolist() == ids
    fused = c2c_model.generate(plain_text(q.messages()), max_new_tokens=5)
    assert modes["c2c"].generate([q], max_new_tokens=5).texts == [strip_thinking(fused)]
    with pytest.raises(ValueError, match="differs from the fuser"):
        build_modes(["receiver"], c2c_model=c2c_model, options=ModeOptions(prompt_format="chat"))


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
