"""Baselines on tiny HF models: shapes of outputs, stage timings, batched == unbatched, oracle semantics."""

from __future__ import annotations

import pytest
import torch

from c2c.eval.generation import encode_chat, generate_timed
from c2c.eval.modes import PerplexityRule, Query, ReceiverOnly, Routing, SharerOnly, SubjectRule, TextToText
from c2c.eval.oracle import CacheOracle, Exemplar, select_exemplars
from c2c.eval.parsing import strip_thinking
from c2c.hf import StageTimer

QUERIES = [
    Query(
        "q1", "Which planet is closest to the Sun? Reply with a letter.", "Which planet is closest to the Sun?", "astro"
    ),
    Query("q2", "What is the chemical symbol of gold, A. Ag or B. Au?", "What is the chemical symbol of gold?", "chem"),
    Query("q3", "Water is made of hydrogen and which element?", "Water is made of hydrogen and?", "chem"),
]
EXEMPLARS = [
    Exemplar("e1", "Question: What is ice?\nOptions:\nA. Solid\nB. Gas\nThe correct answer is A", "chem"),
    Exemplar("e2", "Question: Is the Sun a star?\nOptions:\nA. Yes\nB. No\nThe correct answer is A", "astro"),
    Exemplar("q2", "Question: the query itself must never be its own exemplar", "chem"),
]


def _each(mode, max_new_tokens: int = 6) -> list[str]:
    return [mode.generate([q], max_new_tokens=max_new_tokens).texts[0] for q in QUERIES]


@pytest.mark.parametrize("kind", ["receiver", "sharer"])
def test_single_model_modes_batched_equals_unbatched(pair, kind: str) -> None:
    mode = (
        ReceiverOnly(pair.receiver, pair.receiver_tokenizer)
        if kind == "receiver"
        else SharerOnly(pair.sharer, pair.sharer_tokenizer)
    )
    out = mode.generate(QUERIES, max_new_tokens=6)
    assert len(out.texts) == 3 and len(out.extras) == 3
    assert set(out.timings) == {f"{kind}_prefill", "decode"} and all(v > 0 for v in out.timings.values())
    assert out.texts == _each(mode)


def test_prefill_split_matches_plain_generate(pair) -> None:
    """Prefilling all but the last token then generating equals one plain generate call."""
    tok, model = pair.receiver_tokenizer, pair.receiver
    seqs = encode_chat(tok, [q.messages() for q in QUERIES[:1]])
    ours, _ = generate_timed(model, tok, seqs, max_new_tokens=8, timer=StageTimer(), prefill_stage="p")
    ids = torch.tensor(seqs)
    plain = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    assert ours == [strip_thinking(tok.decode(plain[0, ids.shape[1] :], skip_special_tokens=True))]


def test_min_new_tokens_forces_length(pair) -> None:
    tok = pair.receiver_tokenizer
    seqs = encode_chat(tok, [q.messages() for q in QUERIES])
    timer = StageTimer()
    _, free = generate_timed(pair.receiver, tok, seqs, max_new_tokens=12, timer=timer, prefill_stage="p")
    _, forced = generate_timed(
        pair.receiver, tok, seqs, max_new_tokens=12, min_new_tokens=12, timer=timer, prefill_stage="p"
    )
    assert forced == [12, 12, 12] and all(0 <= n <= 12 for n in free)


def test_text_to_text_writes_a_note_then_answers(pair) -> None:
    mode = TextToText(pair.receiver, pair.receiver_tokenizer, pair.sharer, pair.sharer_tokenizer, note_max_new_tokens=5)
    out = mode.generate(QUERIES, max_new_tokens=4)
    assert set(out.timings) == {"sharer_prefill", "note", "receiver_prefill", "decode"}
    assert all("note" in e for e in out.extras)
    assert out.texts == _each(mode, 4)
    assert mode.describe()["note_template"].startswith("In one clear sentence")
    with pytest.raises(ValueError, match="must contain"):
        TextToText(pair.receiver, pair.receiver_tokenizer, pair.sharer, pair.sharer_tokenizer, note_template="no slot")


def test_routing_rules(pair) -> None:
    r = ReceiverOnly(pair.receiver, pair.receiver_tokenizer)
    s = SharerOnly(pair.sharer, pair.sharer_tokenizer)
    table = Routing([r, s], SubjectRule({"chem": 1}))
    out = table.generate(QUERIES, max_new_tokens=4)
    assert [e["routed_to"] for e in out.extras] == ["receiver", "sharer", "sharer"]
    assert out.texts[0] == r.generate(QUERIES[:1], max_new_tokens=4).texts[0]
    assert out.texts[1:] == s.generate(QUERIES[1:], max_new_tokens=4).texts

    rule = PerplexityRule([r.model, s.model], [r.tokenizer, s.tokenizer])
    scores = [rule.nll_per_char(m, t, [q.question for q in QUERIES]) for m, t in zip(rule.models, rule.tokenizers)]
    expected = [0 if scores[0][i] <= scores[1][i] else 1 for i in range(3)]
    routed = Routing([r, s]).generate(QUERIES, max_new_tokens=4)
    assert [e["routed_to"] for e in routed.extras] == [["receiver", "sharer"][k] for k in expected]
    assert routed.timings["routing"] > 0


def test_select_exemplars_prefers_subject_and_skips_self() -> None:
    assert [e.uid for e in select_exemplars(EXEMPLARS, QUERIES[1], 5)] == ["e1", "e2"]
    assert [e.uid for e in select_exemplars(EXEMPLARS, QUERIES[0], 1)] == ["e2"]


def test_oracle_without_exemplars_equals_zero_shot(pair) -> None:
    """With no exemplar the oracle's own decode loop reproduces plain greedy generation."""
    oracle = CacheOracle(pair.receiver, pair.receiver_tokenizer, EXEMPLARS, shots=0)
    zero = ReceiverOnly(pair.receiver, pair.receiver_tokenizer)
    assert oracle.generate(QUERIES, max_new_tokens=6).texts == zero.generate(QUERIES, max_new_tokens=6).texts


def test_few_shot_through_oracle_path_equals_plain_generate(pair) -> None:
    tok, model = pair.receiver_tokenizer, pair.receiver
    few = CacheOracle(model, tok, EXEMPLARS, shots=2, keep="all")
    h, b, t, _ = few._pieces(QUERIES[0])
    ids = torch.tensor([h + b + t])
    plain = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    expected = strip_thinking(tok.decode(plain[0, ids.shape[1] :], skip_special_tokens=True))
    assert few.generate(QUERIES[:1], max_new_tokens=6).texts[0] == expected


def test_oracle_keeps_question_rows_only_and_batches(pair) -> None:
    oracle = CacheOracle(pair.receiver, pair.receiver_tokenizer, EXEMPLARS, shots=2)
    out = oracle.generate(QUERIES, max_new_tokens=6)
    zero_lens = [len(encode_chat(pair.receiver_tokenizer, [q.messages()])[0]) for q in QUERIES]
    for extra, n in zip(out.extras, zero_lens):
        assert extra["exemplar_rows"] > 0 and abs(extra["cache_rows"] - n) <= 2  # same length as zero-shot
    assert out.texts == _each(oracle)
    few = CacheOracle(pair.receiver, pair.receiver_tokenizer, EXEMPLARS, shots=2, keep="all").generate(
        QUERIES, max_new_tokens=6
    )
    assert [e["cache_rows"] for e in few.extras] == [e["cache_rows"] + e["exemplar_rows"] for e in out.extras]


def test_oracle_refuses_sliding_window_models(pair) -> None:
    from c2c.testing.models import tiny_model

    gemma = tiny_model("gemma3", vocab_size=len(pair.receiver_tokenizer))
    with pytest.raises(ValueError, match="full-attention"):
        CacheOracle(gemma, pair.receiver_tokenizer, EXEMPLARS, shots=2).generate(QUERIES[:1], max_new_tokens=2)
