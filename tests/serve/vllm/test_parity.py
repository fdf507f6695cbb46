"""vLLM engine vs c2c's HF path: same fuser, same prompts, greedy; two receiver families.

Parity claim: greedy tokens are equal, and vLLM's log-probability of every generated token is within
``LOGPROB_ATOL`` of the HF receiver's on the same (fused) cache, in float32. Prompts of exact lengths put
the hand-over's end (the prompt minus its last token) on both sides of vLLM's block boundaries.
"""

from __future__ import annotations

import dataclasses
import glob
import threading
from typing import Any

import pytest
import torch

from c2c.hf import position_ids_from_mask
from c2c.model import C2CModel
from c2c.serve.engine import DoneEvent, ErrorEvent, TextEvent
from c2c.serve.vllm.client import VLLMClient, VLLMError

LOGPROB_ATOL = 1e-4
"""float32 on CPU: vLLM's kernels and HF's eager attention agree to about 1e-5."""

BLOCK = 32  # conftest's vLLM block size
# Prompt lengths: hand-over of 0 rows, 1 row, one row short of a block, exactly a block, one row into the
# next block, two blocks and a partial third.
LENGTHS = (1, 2, BLOCK, BLOCK + 1, BLOCK + 2, 2 * BLOCK + 7)

pytestmark = pytest.mark.slow


def _ids(model: C2CModel, n: int, seed: int) -> list[int]:
    """``n`` receiver ids that are no special token (what a text prompt is made of)."""
    tok = model.receiver_tokenizer
    special = set(tok.all_special_ids)
    pool = [i for i in range(len(tok)) if i not in special]
    g = torch.Generator().manual_seed(seed)
    return [pool[int(j)] for j in torch.randint(len(pool), (n,), generator=g)]


@torch.no_grad()
def _hf_reference(model: C2CModel, prompt: Any, mode: str, max_tokens: int) -> tuple[list[int], list[float]]:
    """Greedy tokens of c2c's HF path and the HF receiver's log-probability of each, on the same fused cache."""
    tokens = model.generate(prompt, mode=mode, max_new_tokens=max_tokens, return_dict=True).sequences[0]
    batch = model.encode(prompt)
    cache = model.prefill_and_fuse(batch, fuse=(mode == "c2c")).cache
    p = batch.prefix_len
    ids = (
        torch.cat([batch.input_ids, torch.tensor([tokens[:-1]], dtype=torch.long)], dim=1)
        if tokens
        else batch.input_ids
    )
    mask = torch.ones_like(ids)
    logits = model.receiver(
        input_ids=ids[:, p:], attention_mask=mask, position_ids=position_ids_from_mask(mask)[:, p:], cache=cache,
        use_cache=True,
    ).logits[0]  # fmt: skip
    logp = torch.log_softmax(logits.float(), -1)
    return tokens, [float(logp[i, t]) for i, t in enumerate(tokens)]


def _vllm(engine: Any, prompt: Any, mode: str, max_tokens: int) -> tuple[list[int], list[float]]:
    out = engine.generate_ids(prompt, mode=mode, max_tokens=max_tokens, logprobs=True)
    eos = engine.backend.eos_token_ids(mode)
    toks = out.token_ids
    cut = next((i for i, t in enumerate(toks) if t in eos), len(toks))  # HF's sequences stop before the eos
    return toks[:cut], out.logprobs[:cut]


@pytest.mark.parametrize("family", ["qwen3", "llama"])
@pytest.mark.parametrize("mode", ["c2c", "receiver"])
def test_greedy_parity_across_block_boundaries(vllm_engines, hf_models, family, mode):
    engine, model = vllm_engines[family], hf_models[family]
    for n in LENGTHS:
        prompt = _ids(model, n, seed=n)
        want, want_lp = _hf_reference(model, prompt, mode, 10)
        got, got_lp = _vllm(engine, prompt, mode, 10)
        assert got == want, f"{family} {mode}: prompt of {n} tokens"
        assert got_lp == pytest.approx(want_lp, abs=LOGPROB_ATOL), f"{family} {mode}: prompt of {n} tokens"


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_fusion_changes_the_answer(vllm_engines, hf_models, family):
    """Without this the parity above could hold with the hand-over ignored."""
    engine, model = vllm_engines[family], hf_models[family]
    for n in (20, 40, 70):
        prompt = _ids(model, n, seed=100 + n)
        fused, fused_lp = _vllm(engine, prompt, "c2c", 8)
        plain, plain_lp = _vllm(engine, prompt, "receiver", 8)
        assert fused != plain or max(abs(a - b) for a, b in zip(fused_lp, plain_lp)) > 1e-2


def test_sharer_mode_parity(vllm_engines, hf_models):
    engine, model = vllm_engines["qwen3"], hf_models["qwen3"]
    for text in ("Why is the sky blue?", "Name three rivers in Europe and say which is longest."):
        messages = [{"role": "user", "content": text}]
        want = model.generate(messages, mode="sharer", max_new_tokens=12, return_dict=True).sequences[0]
        got, _ = _vllm(engine, messages, "sharer", 12)
        assert got == want


def test_closed_gates_equal_vllm_alone(vllm_engines, vllm_pairs):
    """A fuser whose gates are all closed hands over the receiver's own rows: the answer is vLLM's receiver's."""
    from c2c.serve.backend import C2CBackend
    from c2c.serve.vllm import VLLMEngine

    base = vllm_engines["qwen3"]
    closed = C2CModel.from_pretrained(str(vllm_pairs["qwen3"].fuser_dir))
    closed.fusers[0].set_gates(False)
    assert not any(o for gates in closed.gate_states()[0].values() for o in gates)
    attached = VLLMEngine(
        C2CBackend(closed, model_id="closed"),
        base.limits,
        receiver=VLLMClient(base.receiver.base_url, base.receiver.model),
    ).start()
    try:
        for n in (2, BLOCK + 1, 2 * BLOCK + 7):
            prompt = _ids(closed, n, seed=7 * n)
            fused, fused_lp = _vllm(attached, prompt, "c2c", 10)
            alone, alone_lp = _vllm(base, prompt, "receiver", 10)
            assert fused == alone
            assert fused_lp == pytest.approx(alone_lp, abs=LOGPROB_ATOL)
    finally:
        attached.close()


def _collect(handle) -> tuple[str, DoneEvent]:
    parts, done = [], None
    for ev in handle.iter_events():
        if isinstance(ev, TextEvent):
            parts.append(ev.text)
        elif isinstance(ev, ErrorEvent):
            pytest.fail(ev.message)
        elif isinstance(ev, DoneEvent):
            done = ev
    assert done is not None
    return "".join(parts), done


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_mixed_batch_each_gets_its_own_answer(vllm_engines, hf_models, family):
    """Fused and unfused requests at once, through the queue: C2C ones are fused together (left-padded batch),
    all decode together in vLLM, and each answer equals c2c's HF answer to that request alone."""
    engine, model = vllm_engines[family], hf_models[family]
    questions = ["Where is the castle?", "Tell me a story about a dragon and a knight who meet at the river.",
                 "Hi", "What is two plus two, and why?"]  # fmt: skip
    jobs = [([{"role": "user", "content": q}], mode) for q in questions for mode in ("c2c", "receiver")]
    handles = [engine.submit(m, engine.make_params(mode=mode, max_tokens=12, temperature=0.0)) for m, mode in jobs]
    results = [_collect(h) for h in handles]
    for (messages, mode), (text, done) in zip(jobs, results):
        assert text == model.generate(messages, mode=mode, max_new_tokens=12), f"{mode}: {messages[0]['content']}"
        assert done.finish_reason in ("stop", "length")
    fused_batches = [done.timings["batch_size"] for (_, mode), (_, done) in zip(jobs, results) if mode == "c2c"]
    assert max(fused_batches) > 1  # the C2C requests really were fused as one batch
    assert all(done.timings["handover"] is not None for (_, m), (_, done) in zip(jobs, results) if m == "c2c")


def test_prefix_cache_keeps_fused_and_plain_rows_apart(vllm_engines, hf_models):
    """The receiver's server runs with prefix caching on. The same long prompt, plain then fused then plain
    again: each request must get its own rows, never the other kind's cached blocks."""
    engine, model = vllm_engines["qwen3"], hf_models["qwen3"]
    prompt = _ids(model, 3 * BLOCK + 5, seed=42)
    plain_hf, _ = _hf_reference(model, prompt, "receiver", 10)
    fused_hf, _ = _hf_reference(model, prompt, "c2c", 10)
    assert plain_hf != fused_hf
    runs = [(mode, _vllm(engine, prompt, mode, 10)[0]) for mode in ("receiver", "c2c", "receiver", "c2c")]
    for mode, got in runs:
        assert got == (fused_hf if mode == "c2c" else plain_hf), mode


@pytest.mark.parametrize(
    "case",
    ["no cache salt", "missing file", "rows for another length", "another receiver's shapes", "unknown version"],
)
def test_a_fused_request_that_cannot_load_fails_never_answers_unfused(vllm_engines, hf_models, case):
    engine, model = vllm_engines["qwen3"], hf_models["qwen3"]
    prompt = _ids(model, 40, seed=3)

    def change(req, prep):
        c2c = dict(prep.handover.params)
        if case == "no cache salt":
            return {"cache_salt": None}
        if case == "missing file":
            c2c["path"] = c2c["path"] + ".gone"
        elif case == "rows for another length":
            c2c["tokens"] = 10
        elif case == "another receiver's shapes":
            c2c["kv_heads"] = 4
        else:
            c2c["version"] = 99
        return {"kv_transfer_params": {"c2c": c2c}}

    with pytest.raises(VLLMError):
        _raw_fused(engine, prompt, change)
    # the server keeps serving, fused requests included
    want, _ = _hf_reference(model, prompt, "c2c", 6)
    assert _vllm(engine, prompt, "c2c", 6)[0] == want


def _raw_fused(engine: Any, prompt: list[int], change: Any) -> Any:
    """A fused request sent straight to vLLM with its request changed by ``change(req, prep)``."""
    prep = engine.prepare([prompt], "c2c")[0]
    req = engine.request_for(prep, "c2c", max_tokens=4, temperature=0.0, top_p=1.0, seed=None)
    try:
        return engine.call(lambda: engine.receiver.complete(dataclasses.replace(req, **change(req, prep))))
    finally:
        engine.handover.release(prep.handover.path)


def test_cancel_mid_stream_aborts_and_cleans_up(vllm_engines, hf_models):
    engine = vllm_engines["qwen3"]
    messages = [{"role": "user", "content": "Tell me everything."}]
    # this prompt's greedy answer runs on for a while, so the cancellation lands mid-stream
    assert len(hf_models["qwen3"].generate(messages, max_new_tokens=20, return_dict=True).sequences[0]) == 20
    handle = engine.submit(messages, engine.make_params(mode="c2c", max_tokens=400, temperature=0.0))
    seen = threading.Event()
    events = []
    for ev in handle.iter_events():
        events.append(ev)
        if isinstance(ev, TextEvent) and not seen.is_set():
            seen.set()
            handle.cancel()
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.finish_reason == "cancelled"
    assert done.completion_tokens < 400


def test_no_hand_over_outlives_its_request(vllm_engines):
    for engine in vllm_engines.values():
        assert engine.handover.live == 0
        assert glob.glob(f"{engine.handover.directory}/{engine.handover.prefix}*") == []
