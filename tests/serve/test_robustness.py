"""The engine never hangs and never fails a request it accepted: per-request admission over the whole batch,
default max_tokens that fit the context, measuring exactly what generation reads, a failing batch, a dead
worker, cancelled rows, tokenization off the event loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from c2c.serve.backend import C2CBackend
from c2c.serve.engine import DoneEvent, Engine, ErrorEvent, RequestHandle, ServeLimits, TextEvent
from c2c.serve.schema import Prompt, batch_fits

Q = [{"role": "user", "content": "What is the capital of France?"}]


def collect(handle: RequestHandle) -> tuple[str, DoneEvent | ErrorEvent]:
    events = list(handle.iter_events())
    assert isinstance(events[-1], (DoneEvent, ErrorEvent))
    return "".join(e.text for e in events if isinstance(e, TextEvent)), events[-1]


@pytest.mark.parametrize("mode", ["c2c", "receiver", "sharer", "t2t"])
@pytest.mark.parametrize("kind", ["chat", "text"])
def test_measured_prompt_is_what_generation_reads(backend: C2CBackend, c2c_model, mode: str, kind: str) -> None:
    """Admission is only as good as its count: the measured length equals generation's own prompt length."""
    prompt: Prompt = Q if kind == "chat" else "The capital of France is"
    cost = backend.measure(prompt, mode, note_tokens=64)
    if mode == "t2t":
        note_prompt = backend.t2t_note_prompt(prompt)
        note_out = c2c_model.generate(note_prompt, mode="sharer", max_new_tokens=4, return_dict=True)
        assert cost.segments[0].tokens == note_out.prompt_tokens[0] + 64
        answer, _, n = backend.t2t_answer_prompt(prompt, "", 10**6)
        out = c2c_model.generate(answer, mode="receiver", max_new_tokens=1, return_dict=True)
        assert n == out.prompt_tokens[0] and cost.tokens == n + 64
        return
    out = c2c_model.generate(prompt, mode=mode, max_new_tokens=1, return_dict=True)
    assert cost.tokens == out.prompt_tokens[0]
    if mode == "c2c":
        batch = c2c_model.encode(prompt)
        assert [s.tokens for s in cost.segments] == [batch.input_ids.shape[1], batch.sharer_input_ids[0].shape[1]]


def test_requests_valid_alone_never_fail_together(short_backend: C2CBackend) -> None:
    """A long prompt with few new tokens and a short prompt with many: each fits the 256 positions alone, not
    in one left-padded batch. They run in separate batches; compatible ones still share theirs."""
    long_q = [{"role": "user", "content": "word " * 80}]
    engine = Engine(short_backend, ServeLimits(max_new_tokens=1000, max_prompt_tokens=1000, batch_window_s=0.5))
    with engine:
        p_short = engine.make_params(max_tokens=200, temperature=0)
        n_long = short_backend.measure(long_q, "c2c", note_tokens=64).tokens
        assert n_long + 200 > 256 and n_long + 4 <= 256
        handles = [
            engine.submit(long_q, engine.make_params(max_tokens=4, temperature=0)),
            engine.submit(Q, p_short),
            engine.submit(Q, p_short),
            engine.submit(long_q, engine.make_params(max_tokens=4, temperature=0)),
        ]
        results = [collect(h) for h in handles]
    for text, done in results:
        assert isinstance(done, DoneEvent), done
    sizes = [d.timings["batch_size"] for _, d in results]  # type: ignore[union-attr]
    assert sizes == [2, 2, 2, 2]  # the two long ones together, the two short ones together
    assert results[1][0] == results[2][0]


def test_t2t_rows_batch_only_within_the_contexts(short_backend: C2CBackend) -> None:
    engine = Engine(short_backend, ServeLimits(max_new_tokens=1000, max_prompt_tokens=1000, batch_window_s=0.5))
    long_q = [{"role": "user", "content": "word " * 50}]
    with engine:
        a = engine.submit(long_q, engine.make_params(mode="t2t", max_tokens=2, temperature=0))
        b = engine.submit(Q, engine.make_params(mode="t2t", max_tokens=100, temperature=0))
        ra, rb = collect(a), collect(b)
        assert not batch_fits([a.cost, b.cost], [2, 100])  # each fits alone, not together
    assert isinstance(ra[1], DoneEvent) and isinstance(rb[1], DoneEvent), (ra, rb)
    assert ra[1].timings["batch_size"] == rb[1].timings["batch_size"] == 1
    assert ra[1].prompt_tokens + 2 <= 256 and rb[1].prompt_tokens + rb[1].completion_tokens <= 256


def test_default_max_tokens_fits_the_context(short_backend: C2CBackend) -> None:
    engine = Engine(short_backend, ServeLimits(max_new_tokens=1000, default_max_tokens=1000, max_prompt_tokens=1000))
    with engine:
        for mode in ("c2c", "receiver", "sharer", "t2t"):
            h = engine.submit(Q, engine.make_params(mode=mode, temperature=0))
            budget = h.cost.budget()
            assert budget is not None and h.params.max_new_tokens == budget < 256
            _, done = collect(h)
            assert isinstance(done, DoneEvent) and done.completion_tokens <= budget
    engine = Engine(short_backend, ServeLimits(default_max_tokens=16))
    with engine:
        h = engine.submit(Q, engine.make_params())
        assert h.params.max_new_tokens == 16  # the server's default when the context leaves more


class FaultyBackend(C2CBackend):
    """Fault injection: no real request can make generation fail any more (that is the point of admission),
    so this backend fails for prompts that contain a marker, like a model error would."""

    fail_with: type[BaseException] = RuntimeError

    def generate(self, prompts: list[Prompt], **kwargs: Any):
        if any("FAIL" in str(p) for p in prompts):
            raise self.fail_with("injected model failure")
        return super().generate(prompts, **kwargs)


def test_a_failing_batch_fails_only_its_own_request_and_the_worker_goes_on(c2c_model) -> None:
    backend = FaultyBackend(c2c_model, model_id="faulty")
    with Engine(backend, ServeLimits(batch_window_s=0.5)) as engine:
        params = engine.make_params(max_tokens=3, temperature=0)
        bad = engine.submit([{"role": "user", "content": "FAIL please"}], params)
        mates = [engine.submit(Q, params) for _ in range(2)]  # batched with the bad one
        text, err = collect(bad)
        assert isinstance(err, ErrorEvent) and err.status == 500 and "injected model failure" in err.message
        for h in mates:  # rerun alone: the batch-mates of a failing row still get their answers
            text, done = collect(h)
            assert isinstance(done, DoneEvent) and text == c2c_model.generate(Q, max_new_tokens=3)
        assert engine.health()["status"] == "ok"
        _, done = collect(engine.submit(Q, params))
        assert isinstance(done, DoneEvent)


def test_a_dead_worker_fails_open_requests_and_health_says_so(c2c_model) -> None:
    class Fatal(BaseException):
        pass

    backend = FaultyBackend(c2c_model, model_id="faulty")
    backend.fail_with = Fatal
    engine = Engine(backend, ServeLimits(batch_window_s=0.3, max_batch_size=1))
    engine.start()
    try:
        params = engine.make_params(max_tokens=3, temperature=0)
        fatal = engine.submit([{"role": "user", "content": "FAIL"}], params)
        queued = engine.submit(Q, params)
        for h in (fatal, queued):
            _, ev = collect(h)
            assert isinstance(ev, ErrorEvent) and "worker" in ev.message
        assert engine.health()["status"] == "unhealthy" and "Fatal" in engine.health()["error"]
    finally:
        engine.close(timeout=5)


def test_cancelled_row_leaves_its_batch_at_once(make_engine) -> None:
    engine = make_engine(batch_window_s=0.3, max_new_tokens=4000)
    params = engine.make_params(max_tokens=4000, temperature=0)
    a, b = engine.submit(Q, params), engine.submit(Q, params)
    first = next(iter(a.iter_events()))  # a is decoding
    assert isinstance(first, TextEvent)
    a.cancel()
    _, done = collect(a)  # answered while b still decodes, not when the batch ends
    assert isinstance(done, DoneEvent) and done.finish_reason == "cancelled"
    assert not b.finished and engine.active == 2
    b.cancel()
    _, done_b = collect(b)
    assert done_b.finish_reason == "cancelled" and done_b.completion_tokens < 4000  # type: ignore[union-attr]
    deadline = threading.Event()
    for _ in range(200):  # the batch ends once every row is cancelled
        if engine.active == 0:
            break
        deadline.wait(0.05)
    assert engine.active == 0


def test_t2t_row_cancelled_during_its_note_skips_the_answer(make_engine, backend: C2CBackend) -> None:
    engine = make_engine(batch_window_s=0)
    h = engine.submit(Q, engine.make_params(mode="t2t", max_tokens=8, temperature=0))
    h.cancel()
    events = list(h.iter_events())
    assert isinstance(events[-1], DoneEvent) and events[-1].finish_reason == "cancelled"
    assert not any(isinstance(e, TextEvent) for e in events)


class LoopSpy(C2CBackend):
    """Records whether an event loop was running in the thread that measured (tokenized) each prompt."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_loop: list[bool] = []

    def measure(self, prompt: Prompt, mode: str, *, note_tokens: int):
        try:
            asyncio.get_running_loop()
            self.on_loop.append(True)
        except RuntimeError:
            self.on_loop.append(False)
        return super().measure(prompt, mode, note_tokens=note_tokens)


def test_tokenization_runs_off_the_event_loop(c2c_model) -> None:
    spy = LoopSpy(c2c_model, model_id="spy")
    with Engine(spy, ServeLimits()) as engine:

        async def main() -> list[str]:
            handles = await engine.asubmit([Q, "plain text"], engine.make_params(max_tokens=2, temperature=0))
            out = []
            for h in handles:
                async for ev in h.events():
                    if isinstance(ev, DoneEvent):
                        out.append(ev.finish_reason)
            return out

        reasons = asyncio.run(main())
        assert len(reasons) == 2 and set(reasons) <= {"stop", "length"}
    assert spy.on_loop == [False, False]
