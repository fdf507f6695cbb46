"""Engine internals: per-row detokenizing and stop logic (real tokenizer), batching rules, limits, shutdown."""

from __future__ import annotations

import threading
import time

import pytest
from transformers import AutoTokenizer

from c2c.serve.engine import DoneEvent, ErrorEvent, PromptTooLong, RequestError, TextEvent
from c2c.serve.streaming import RowText

Q = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tok(saved_pair):
    return AutoTokenizer.from_pretrained(str(saved_pair.receiver_dir))


def feed_all(row: RowText, ids: list[int]) -> list[str]:
    return [row.feed(i) for i in ids]


def test_plain_text_streams_token_by_token(tok) -> None:
    ids = tok("hello world", add_special_tokens=False)["input_ids"]
    row = RowText(tok, eos_token_ids={tok.eos_token_id}, max_new_tokens=100)
    pieces = feed_all(row, ids)
    assert "".join(pieces) == "hello world" and sum(1 for p in pieces if p) >= 3
    assert not row.done
    assert row.feed(tok.eos_token_id) == "" and row.finish_reason == "stop"
    assert row.n_tokens == len(ids)  # the end token is not counted
    assert row.feed(ids[0]) == ""  # nothing after the end


def test_stop_string_across_tokens_is_cut_and_never_leaked(tok) -> None:
    ids = tok("hello world", add_special_tokens=False)["input_ids"]
    row = RowText(tok, eos_token_ids={tok.eos_token_id}, stop=("lo w",), max_new_tokens=100)
    pieces = feed_all(row, ids)
    # Released text is append-only, so this also shows no part of the stop string was ever sent.
    assert "".join(pieces) == "hel"
    assert row.finish_reason == "stop" and row.finish() == ""


def test_held_back_prefix_is_released_when_it_is_not_a_stop(tok) -> None:
    ids = tok("hello world", add_special_tokens=False)["input_ids"]
    row = RowText(tok, eos_token_ids=set(), stop=("lox",), max_new_tokens=100)
    pieces = feed_all(row, ids)
    k = next(k for k in range(1, len(ids) + 1) if tok.decode(ids[:k]) == "hello")
    assert "".join(pieces[:k]) == "hel"  # "lo" may still become "lox": held back
    assert "".join(pieces) + row.finish() == "hello world"


def test_incomplete_utf8_is_held_until_complete(tok) -> None:
    ids = tok("é漢字 ok", add_special_tokens=False)["input_ids"]
    row = RowText(tok, eos_token_ids=set(), max_new_tokens=100)
    pieces = feed_all(row, ids)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == "é漢字 ok"


def test_token_budget_and_cancellation(tok) -> None:
    ids = tok("the capital of France", add_special_tokens=False)["input_ids"]
    row = RowText(tok, eos_token_ids=set(), max_new_tokens=3)
    text = "".join(feed_all(row, ids))
    assert row.finish_reason == "length" and row.n_tokens == 3 and text == tok.decode(ids[:3])
    flag = threading.Event()
    row = RowText(tok, eos_token_ids=set(), max_new_tokens=50, cancelled=flag)
    row.feed(ids[0])
    flag.set()
    assert row.done and row.feed(ids[1]) == "" and row.finish() == "" and row.finish_reason == "cancelled"


def _collect(handle) -> tuple[str, DoneEvent]:
    events = list(handle.iter_events())
    assert isinstance(events[-1], DoneEvent), events[-1]
    return "".join(e.text for e in events if isinstance(e, TextEvent)), events[-1]


def test_batching_groups_compatible_requests_only(make_engine, c2c_model) -> None:
    engine = make_engine(batch_window_s=0.5, max_batch_size=8)
    greedy = engine.make_params(max_tokens=5, temperature=0)
    handles = [engine.submit(Q, greedy) for _ in range(3)]
    other_prompt = engine.submit([{"role": "user", "content": "Name a river."}], greedy)
    receiver = engine.submit(Q, engine.make_params(mode="receiver", max_tokens=5, temperature=0))
    seeded = [engine.submit(Q, engine.make_params(max_tokens=5, temperature=1.0, seed=s)) for s in (1, 1)]
    results = [_collect(h) for h in [*handles, other_prompt, receiver, *seeded]]
    sizes = [d.timings["batch_size"] for _, d in results]
    assert sizes[:4] == [4, 4, 4, 4]  # same mode + sampling: one batch, whatever the prompt
    assert sizes[4:] == [1, 1, 1]  # another mode; seeded requests run alone
    expected = c2c_model.generate(Q, max_new_tokens=5)
    assert [t for t, _ in results[:3]] == [expected] * 3
    assert results[5][0] == results[6][0]  # same seed, same sample
    assert results[4][0] == c2c_model.generate(Q, mode="receiver", max_new_tokens=5)


def test_limits(make_engine) -> None:
    engine = make_engine(max_prompt_tokens=20, max_new_tokens=8)
    with pytest.raises(PromptTooLong, match="limit of 20"):
        engine.submit(Q, engine.make_params(max_tokens=4))
    with pytest.raises(RequestError, match="limit of 8"):
        engine.make_params(max_tokens=9)
    with pytest.raises(RequestError, match="not available"):
        engine.make_params(mode="telepathy")
    engine = make_engine(max_new_tokens=5000)
    with pytest.raises(RequestError, match="context of 4096"):  # prompt + max_tokens beyond the receiver
        engine.submit(Q, engine.make_params(max_tokens=4090))


def test_close_fails_queued_and_stops_running(make_engine) -> None:
    engine = make_engine(max_batch_size=1, max_new_tokens=4000, batch_window_s=0)
    params = engine.make_params(max_tokens=4000, temperature=0)
    running = engine.submit(Q, params)
    deadline = time.monotonic() + 20
    while engine.active == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    queued = engine.submit(Q, params)
    t0 = time.monotonic()
    engine.close()
    assert time.monotonic() - t0 < 10  # not the 4000 tokens
    last = list(queued.iter_events())[-1]
    assert isinstance(last, ErrorEvent) and last.status == 503 and last.code == "shutting_down"
    # The running request ends with the same error (a stream gets an error event, not a silent "cancelled").
    last = list(running.iter_events())[-1]
    assert isinstance(last, ErrorEvent) and last.code == "shutting_down" and "shutting down" in last.message


def test_a_row_that_finishes_early_is_answered_before_its_batch_ends(make_engine) -> None:
    engine = make_engine(batch_window_s=0.3, max_new_tokens=4000)
    long = engine.submit(Q, engine.make_params(max_tokens=4000, temperature=0))
    short = engine.submit(Q, engine.make_params(max_tokens=2, temperature=0))
    text, done = _collect(short)
    try:
        assert not long.finished  # its batch-mate is still decoding
        assert done.finish_reason == "length" and done.completion_tokens == 2
        assert done.timings["batch_size"] == 2 and "decode" not in done.timings  # stage split not known yet
    finally:
        long.cancel()
    _, long_done = _collect(long)
    assert long_done.finish_reason == "cancelled" and long_done.timings["decode"] > 0
