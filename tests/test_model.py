"""C2CModel: parity with the receiver, batching, which rows are fused, multi-sharer, include-response."""

from __future__ import annotations

import pytest
import torch
from transformers import TextIteratorStreamer

from c2c import C2CConfig, C2CModel, FuserConfig
from c2c.cache import layer_rows
from c2c.testing.models import tiny_model

FUSER = FuserConfig(hidden_size=32, intermediate_size=32, dropout=0.0)

# (receiver, sharer) pairs that differ in family, depth, KV heads and head dim; sliding and hybrid layers.
PAIRS: dict[str, tuple[tuple[str, dict[str, int]], tuple[str, dict[str, int]]]] = {
    "qwen3<-llama": (("qwen3", dict(num_layers=3)), ("llama", dict(num_layers=2, num_kv_heads=1, head_dim=32))),
    "gemma3<-qwen2": (("gemma3", dict(num_layers=4)), ("qwen2", dict(num_layers=3, num_kv_heads=4, head_dim=8))),
    "qwen3_5<-mistral": (("qwen3_5", dict(num_layers=4)), ("mistral", dict(num_layers=2))),
    "phi3<-gemma3": (("phi3", dict(num_layers=2)), ("gemma3", dict(num_layers=2, num_kv_heads=1))),
}
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [21, 22, 23], [30, 31, 32, 33, 34, 35]]


def make_pair(name: str, *, fuser: FuserConfig = FUSER, config: C2CConfig | None = None, **kw) -> C2CModel:
    """A fresh pair (deterministic weights), so no test sees another test's gates or settings."""
    (r_family, r_kw), (s_family, s_kw) = PAIRS[name]
    r = tiny_model(r_family, seed=1, **r_kw)
    s = tiny_model(s_family, seed=2, **s_kw)
    return C2CModel.from_models(r, s, fuser_config=fuser, config=config, seed=0, **kw)


def open_pair(name: str, **kw) -> C2CModel:
    model = make_pair(name, **kw)
    for f in model.fuser_list:
        f.set_gates(True)
    return model


@pytest.mark.parametrize("name", list(PAIRS))
def test_closed_gates_reproduce_the_receiver_bit_for_bit(name):
    pair = make_pair(name)
    assert all(f.active_layers() == [] for f in pair.fuser_list)
    batch = pair.encode(PROMPTS, responses=[[3, 4], [5], [6, 7, 8]])
    fused = pair(batch).logits
    alone = pair(batch, mode="receiver").logits
    assert torch.equal(fused, alone)
    out = pair.generate(PROMPTS, max_new_tokens=6, return_dict=True)
    ref = pair.generate(PROMPTS, max_new_tokens=6, mode="receiver", return_dict=True)
    assert out.sequences == ref.sequences
    for prompt, seq in zip(PROMPTS, out.sequences):
        single = pair.generate(prompt, max_new_tokens=6)
        hf = pair.receiver.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert single == seq == hf[0, len(prompt) :].tolist()[: len(seq)]


@pytest.mark.parametrize("name", list(PAIRS))
def test_open_gates_batched_generation_matches_one_by_one(name):
    pair = open_pair(name)
    batched = pair.generate(PROMPTS, max_new_tokens=6)
    singles = [pair.generate(p, max_new_tokens=6) for p in PROMPTS]
    assert batched == singles
    batch = pair.encode(PROMPTS, responses=[[3], [4], [5]])
    assert (pair(batch).logits - pair(batch, mode="receiver").logits).abs().max() > 1e-3


@pytest.mark.parametrize("name", list(PAIRS))
def test_every_layer_changes_exactly_the_fused_prompt_rows(name):
    pair = open_pair(name)
    batch = pair.encode(PROMPTS)
    p = batch.prefix_len
    assert p == max(len(x) for x in PROMPTS) - 1  # the last prompt token is never prefilled
    fused = pair.prefill_and_fuse(batch).cache
    clean = pair.prefill_and_fuse(batch, fuse=False).cache
    spec = pair.receiver_spec
    for layer in spec.kv_layers:
        fk, fv = layer_rows(fused, layer)
        ck, cv = layer_rows(clean, layer)
        held = ck.shape[2]
        assert held == (p if layer not in spec.sliding_layers else min(p, spec.sliding_window - 1))
        mask = batch.fuse_mask[:, p - held :]  # [B, held]
        changed = (fk != ck).any(-1).any(1)  # [B, held]
        changed_v = (fv != cv).any(-1).any(1)
        assert torch.equal(changed, mask), f"layer {layer} keys"
        assert torch.equal(changed_v, mask), f"layer {layer} values"
    # padding rows are never fused
    assert not batch.fuse_mask[batch.attention_mask[:, :p] == 0].any()


def test_hybrid_receiver_fuses_only_attention_layers():
    model = make_pair("qwen3_5<-mistral")
    assert model.receiver_spec.kv_layers == [1, 3]
    assert sorted(int(k) for k in model.fusers[0].layers) == [1, 3]


def test_training_forward_reaches_only_the_fuser():
    model = make_pair("qwen3<-llama")
    model.train()
    assert not model.receiver.training and not model.sharers[0].training and model.fusers[0].training
    batch = model.encode(PROMPTS, responses=[[3, 4], [5], [6, 7, 8]])
    out = model(batch)
    assert out.num_tokens == 6 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is None for p in model.receiver.parameters())
    assert all(p.grad is None for p in model.sharers[0].parameters())
    grads = [p.grad for p in model.trainable_parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    model.eval()


def test_labels_cover_exactly_the_response_tokens():
    model = make_pair("qwen3<-llama")
    batch = model.encode(PROMPTS, responses=[[3, 4], [5], [6, 7, 8]])
    for i, (prompt, resp) in enumerate(zip(PROMPTS, [[3, 4], [5], [6, 7, 8]])):
        row = batch.labels[i][batch.labels[i] != -100].tolist()
        assert row == resp
        assert batch.input_ids[i, batch.prefix_len].item() == prompt[-1]


def _two_sharer_model(multi: str) -> C2CModel:
    r = tiny_model("qwen3", num_layers=3, seed=1)
    s1 = tiny_model("llama", num_layers=2, num_kv_heads=1, head_dim=32, seed=2)
    s2 = tiny_model("qwen2", num_layers=4, seed=3)
    return C2CModel.from_models(r, [s1, s2], fuser_config=FUSER, config=C2CConfig(multi_sharer=multi), seed=0)


def test_multiple_sharers_parallel_and_sequential():
    par, seq = _two_sharer_model("parallel"), _two_sharer_model("sequential")
    seq.fusers.load_state_dict(par.fusers.state_dict())
    single = C2CModel.from_models(par.receiver, par.sharers[0], fuser_config=FUSER, seed=0)
    single.fusers[0].load_state_dict(par.fusers[0].state_dict())
    for m in (par, seq, single):
        m.fuser_list[0].set_gates(True)
    # second sharer closed: both modes equal the single-sharer model
    assert par.generate(PROMPTS, max_new_tokens=4) == single.generate(PROMPTS, max_new_tokens=4)
    assert seq.generate(PROMPTS, max_new_tokens=4) == single.generate(PROMPTS, max_new_tokens=4)
    for m in (par, seq):
        m.fuser_list[1].set_gates(True)
    b = par.encode(PROMPTS)
    k_par, k_seq, k_one = (layer_rows(m.prefill_and_fuse(b).cache, 2)[0] for m in (par, seq, single))
    assert not torch.equal(k_par, k_one) and not torch.equal(k_par, k_seq)
    # parallel: the two corrections are computed from the clean rows and summed
    clean = layer_rows(par.prefill_and_fuse(b, fuse=False).cache, 2)[0]
    only_second = _two_sharer_model("parallel")
    only_second.fusers.load_state_dict(par.fusers.state_dict())
    only_second.fuser_list[0].set_gates(False)
    k_two = layer_rows(only_second.prefill_and_fuse(b).cache, 2)[0]
    torch.testing.assert_close(k_par, k_one + k_two - clean, rtol=1e-5, atol=1e-5)


def test_include_response_fuses_generated_tokens():
    base = open_pair("qwen3<-llama")
    inc = C2CModel(base.receiver, base.sharers[0], base.fusers[0], config=C2CConfig(include_response=True))
    closed = make_pair("qwen3<-llama", config=C2CConfig(include_response=True))
    # closed gates: still the receiver
    assert closed.generate(PROMPTS, max_new_tokens=5) == closed.generate(PROMPTS, max_new_tokens=5, mode="receiver")
    a = base.generate(PROMPTS, max_new_tokens=8, return_dict=True)
    b = inc.generate(PROMPTS, max_new_tokens=8, return_dict=True)
    # the last prompt token's rows are fused too, then every generated token's: the answers differ
    assert a.sequences != b.sequences
    assert inc.generate(PROMPTS, max_new_tokens=8) == [inc.generate(p, max_new_tokens=8) for p in PROMPTS]


@pytest.mark.parametrize("name", ["qwen3<-llama", "gemma3<-qwen2"])
def test_include_response_trains_exactly_as_it_decodes(name):
    """The training forward on (prompt, generated answer) gives the logits decoding computed for it."""
    model = open_pair(name, config=C2CConfig(include_response=True))
    prompt = PROMPTS[0]
    answer = model.generate(prompt, max_new_tokens=6, min_new_tokens=6)
    assert len(answer) == 6
    batch = model.encode([prompt], responses=[answer])
    with torch.no_grad():
        logits = model(batch).logits[0]  # [1 + len(answer), V]: last prompt token, then the answer
    # decoding picked each answer token as the argmax of these very logits
    assert logits[:-1].argmax(-1).tolist() == answer
    # and step by step the same numbers: decode again, reading the logits of every step
    from c2c.fusion import prefill_and_fuse, response_step

    with torch.inference_mode():
        dec = model.encode([prompt])
        prefix = prefill_and_fuse(model, dec)
        p = dec.prefix_len
        mask = dec.attention_mask
        first = [ix[:, p : p + 1] for ix in dec.sharer_index]
        steps, cur = [], dec.input_ids[:, p:]
        for tok in answer + [None]:
            steps.append(response_step(model, prefix, cur, mask, first_index=first)[0])
            first = None
            if tok is None:
                break
            cur = torch.tensor([[tok]])
            mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], dim=1)
    assert torch.equal(torch.stack(steps), logits)


def test_hard_gates_are_read_once_per_generate_call():
    model = open_pair("qwen3<-llama", config=C2CConfig(include_response=True))
    fuser = model.fuser_list[0]
    calls = []
    real = fuser.hard_gates
    fuser.hard_gates = lambda: calls.append(1) or real()  # type: ignore[method-assign]
    model.generate(PROMPTS, max_new_tokens=5)
    assert len(calls) == 1


def test_sampling_is_seeded_and_streamer_sees_the_tokens(tok_chatml):
    r = tiny_model("qwen3", num_layers=2, seed=1, vocab_size=tok_chatml.vocab_size + 8)
    s = tiny_model("llama", num_layers=2, seed=2, vocab_size=tok_chatml.vocab_size + 8)
    model = C2CModel.from_models(
        r, s, fuser_config=FUSER, receiver_tokenizer=tok_chatml, sharer_tokenizer=tok_chatml, seed=0
    )
    model.fusers[0].set_gates(True)
    torch.manual_seed(3)
    a = model.generate("The capital of", max_new_tokens=8, do_sample=True, temperature=0.8, top_p=0.9)
    torch.manual_seed(3)
    b = model.generate("The capital of", max_new_tokens=8, do_sample=True, temperature=0.8, top_p=0.9)
    assert a == b and isinstance(a, str)
    streamer = TextIteratorStreamer(tok_chatml, skip_prompt=True, skip_special_tokens=True)
    greedy = model.generate("The capital of", max_new_tokens=8, streamer=streamer)
    assert "".join(streamer).strip() == greedy.strip()


def test_chat_messages_with_different_tokenizers_fuse_content_only(tok_chatml, tok_llama3):
    r = tiny_model("qwen3", num_layers=2, seed=1, vocab_size=len(tok_chatml) + 8)
    s = tiny_model("llama", num_layers=3, num_kv_heads=1, head_dim=32, seed=2, vocab_size=len(tok_llama3) + 8)
    model = C2CModel.from_models(
        r, s, fuser_config=FUSER, receiver_tokenizer=tok_chatml, sharer_tokenizer=tok_llama3, seed=0
    )
    model.fusers[0].set_gates(True)
    convs = [
        [{"role": "user", "content": "Where is the old mill? 🌍"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count: 1 2 3"}],
    ]
    batch = model.encode(convs)
    for i, conv in enumerate(convs):
        aligned = model.aligners[0].align_messages(conv)
        ids = batch.input_ids[i][batch.attention_mask[i] == 1].tolist()
        assert ids == aligned.receiver_ids
        n_fused = int(batch.fuse_mask[i].sum())
        assert 0 < n_fused < len(ids) - 1  # template rows are not fused
    texts = model.generate(convs, max_new_tokens=5)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert texts == [model.generate(c, max_new_tokens=5) for c in convs]
    assert isinstance(model.generate(convs[0], mode="sharer", max_new_tokens=3), str)


def test_alignment_shift_one_reads_the_final_prompt_token():
    model = make_pair("qwen3<-llama", config=C2CConfig(alignment_shift=1))
    b = model.encode([[5, 6, 7, 8]])
    assert b.sharer_index[0][0].tolist() == [1, 2, 3, -1]  # column P (the last token) has nothing after it
    assert b.fuse_mask[0].tolist() == [True, True, True]
    b0 = make_pair("qwen3<-llama").encode([[5, 6, 7, 8]])
    assert b0.sharer_index[0][0].tolist() == [0, 1, 2, 3]
    assert b0.fuse_mask[0].tolist() == [True, True, True]
    with pytest.raises(ValueError, match="include_response"):
        C2CConfig(alignment_shift=1, include_response=True)


def test_bad_inputs_get_clear_errors():
    model = make_pair("qwen3<-llama")
    with pytest.raises(ValueError, match="empty"):
        model.generate([], max_new_tokens=2)
    with pytest.raises((ValueError, TypeError), match="empty|expected"):
        model.generate([[]], max_new_tokens=2)
    with pytest.raises(ValueError, match="context"):
        model.generate(list(range(3, 500)) * 2, max_new_tokens=4)
    with pytest.raises(TypeError, match="integer"):
        model.generate(torch.ones(1, 4), max_new_tokens=2)
    with pytest.raises(ValueError, match="text prompts need a receiver tokenizer"):
        model.generate("hello", max_new_tokens=2)
    with pytest.raises(ValueError, match="unknown mode"):
        model.generate([5, 6], mode="both")
    model.fusers.to("meta")
    with pytest.raises(ValueError, match="fuser 0 is on meta"):
        model.generate([5, 6, 7], max_new_tokens=2)


def test_identical_tokenizers_copy_ids_but_fuse_only_message_content(tok_chatml):
    r = tiny_model("qwen3", num_layers=2, seed=1, vocab_size=len(tok_chatml) + 8)
    s = tiny_model("qwen2", num_layers=2, seed=2, vocab_size=len(tok_chatml) + 8)
    model = C2CModel.from_models(r, s, fuser_config=FUSER, receiver_tokenizer=tok_chatml, sharer_tokenizer=tok_chatml)
    assert model.aligners[0].identical
    batch = model.encode([{"role": "user", "content": "the river runs north"}])
    ids = batch.input_ids[0].tolist()
    assert batch.sharer_input_ids[0][0].tolist() == ids  # same vocabulary, same template: same ids
    fused = [tok_chatml.decode([t]) for t, m in zip(ids, batch.fuse_mask[0].tolist()) if m]
    assert "".join(fused).strip() == "the river runs north"
    assert model.generate([5, 6, 7], mode="sharer", max_new_tokens=2)  # ids are valid for the sharer too


@pytest.mark.parametrize("include_response", [False, True])
def test_min_new_tokens_holds_back_end_of_sequence(include_response):
    model = open_pair("qwen3<-llama", config=C2CConfig(include_response=include_response))
    first = model.generate([5, 6, 7, 8], max_new_tokens=1)[0]
    model.receiver.generation_config.eos_token_id = first  # the greedy first token now ends the answer
    model.receiver.config.eos_token_id = first
    assert model.generate([5, 6, 7, 8], max_new_tokens=6) == []
    out = model.generate([5, 6, 7, 8], max_new_tokens=6, min_new_tokens=4)
    assert len(out) >= 4 and first not in out[:4]
    with pytest.raises(ValueError, match="min_new_tokens"):
        model.generate([5, 6], max_new_tokens=2, min_new_tokens=3)


def test_reference_row_layout_fuses_every_prompt_row_but_the_last(tok_chatml):
    """A fuser converted from the reference implementation reads its rows: one rendering with the receiver's
    template shared by both models, every row fused but the last (template rows included)."""
    r = tiny_model("qwen3", num_layers=2, seed=1, vocab_size=len(tok_chatml) + 8)
    s = tiny_model("qwen2", num_layers=2, seed=2, vocab_size=len(tok_chatml) + 8)
    model = C2CModel.from_models(
        r,
        s,
        fuser_config=FUSER,
        receiver_tokenizer=tok_chatml,
        sharer_tokenizer=tok_chatml,
        config=C2CConfig(chat_rows="reference"),
    )
    conv = [{"role": "user", "content": "the river runs north"}]
    batch = model.encode(conv)
    n = batch.input_ids.shape[1]
    assert batch.sharer_input_ids[0][0].tolist() == batch.input_ids[0].tolist()
    assert batch.sharer_index[0][0].tolist() == list(range(n - 1)) + [-1]
    assert batch.fuse_mask[0].all()
    content = C2CModel.from_models(r, s, fuser_config=FUSER, receiver_tokenizer=tok_chatml, sharer_tokenizer=tok_chatml)
    assert not content.encode(conv).fuse_mask[0].all()  # c2c's own layout leaves template rows alone


@pytest.mark.parametrize("include_response", [False, True])
def test_a_stopped_row_leaves_the_batch(include_response):
    """A row stopped by a stopping criterion (a cancelled request) is dropped from the caches: later steps
    compute only the others, whose answers are those they give alone."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopRow(StoppingCriteria):
        def __init__(self, row: int, after: int) -> None:
            self.row, self.after, self.calls = row, after, 0

        def __call__(self, input_ids, scores, **kw):
            self.calls += 1
            flags = torch.zeros(input_ids.shape[0], dtype=torch.bool)
            flags[self.row] = self.calls >= self.after
            return flags

    model = open_pair("qwen3<-llama", config=C2CConfig(include_response=include_response))
    sizes: list[int] = []
    model.receiver.register_forward_pre_hook(
        lambda m, a, kw: sizes.append(int(kw["input_ids"].shape[0])), with_kwargs=True
    )
    out = model.generate(
        PROMPTS,
        max_new_tokens=6,
        min_new_tokens=6,
        stopping_criteria=StoppingCriteriaList([StopRow(1, 2)]),
        return_dict=True,
    )
    assert sizes[:2] == [3, 3] and set(sizes[2:]) == {2}  # row 1 stopped after two tokens and left the batch
    assert len(out.sequences[1]) == 2
    alone = [model.generate(p, max_new_tokens=6, min_new_tokens=6) for p in PROMPTS]
    assert out.sequences[0] == alone[0] and out.sequences[2] == alone[2]
    assert out.sequences[1] == alone[1][:2]
