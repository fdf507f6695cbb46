"""C2CModel: parity with the receiver, batching, which rows are fused, multi-sharer, include-response."""

from __future__ import annotations

import pytest
import torch
from transformers import TextIteratorStreamer

from c2c import C2CConfig, C2CModel, FuserConfig
from c2c.cache import ModelSpec, layer_rows
from c2c.testing.models import tiny_model

FUSER = FuserConfig(hidden_size=32, intermediate_size=32, dropout=0.0)

# (receiver, sharer) pairs that differ in family, depth, KV heads and head dim; sliding and hybrid layers.
PAIRS = {
    "qwen3<-llama": (dict(family="qwen3", num_layers=3), dict(family="llama", num_layers=2, num_kv_heads=1, head_dim=32)),
    "gemma3<-qwen2": (dict(family="gemma3", num_layers=4), dict(family="qwen2", num_layers=3, num_kv_heads=4, head_dim=8)),
    "qwen3_5<-mistral": (dict(family="qwen3_5", num_layers=4), dict(family="mistral", num_layers=2)),
    "phi3<-gemma3": (dict(family="phi3", num_layers=2), dict(family="gemma3", num_layers=2, num_kv_heads=1)),
}
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [21, 22, 23], [30, 31, 32, 33, 34, 35]]


def make_pair(name: str, *, fuser: FuserConfig = FUSER, config: C2CConfig | None = None, **kw) -> C2CModel:
    r_kw, s_kw = PAIRS[name]
    r = tiny_model(r_kw.pop("family"), seed=1, **r_kw)
    s = tiny_model(s_kw.pop("family"), seed=2, **s_kw)
    PAIRS[name] = ({**r_kw, "family": r.config.model_type.replace("_text", "")}, {**s_kw, "family": s.config.model_type.replace("_text", "")})
    return C2CModel.from_models(r, s, fuser_config=fuser, config=config, seed=0, **kw)


@pytest.fixture(scope="module", params=list(PAIRS))
def pair(request) -> C2CModel:
    return make_pair(request.param)


def test_closed_gates_reproduce_the_receiver_bit_for_bit(pair):
    assert all(f.active_layers() == [] for f in pair.fusers)
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
        assert single == seq == hf[0, len(prompt):].tolist()[: len(seq)]


def test_open_gates_batched_generation_matches_one_by_one(pair):
    for f in pair.fusers:
        f.set_gates(True)
    try:
        batched = pair.generate(PROMPTS, max_new_tokens=6)
        singles = [pair.generate(p, max_new_tokens=6) for p in PROMPTS]
        assert batched == singles
        batch = pair.encode(PROMPTS, responses=[[3], [4], [5]])
        assert (pair(batch).logits - pair(batch, mode="receiver").logits).abs().max() > 1e-3
    finally:
        for f in pair.fusers:
            f.set_gates(False)


def test_every_layer_changes_exactly_the_fused_prompt_rows(pair):
    for f in pair.fusers:
        f.set_gates(True)
    try:
        batch = pair.encode(PROMPTS)
        p = batch.prefix_len
        assert p == max(len(x) for x in PROMPTS) - 1  # the last prompt token is never prefilled
        fused, _, _ = pair.prefill_and_fuse(batch)
        clean, _, _ = pair.prefill_and_fuse(batch, fuse=False)
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
    finally:
        for f in pair.fusers:
            f.set_gates(False)


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
        m.fusers[0].set_gates(True)
    # second sharer closed: both modes equal the single-sharer model
    assert par.generate(PROMPTS, max_new_tokens=4) == single.generate(PROMPTS, max_new_tokens=4)
    assert seq.generate(PROMPTS, max_new_tokens=4) == single.generate(PROMPTS, max_new_tokens=4)
    for m in (par, seq):
        m.fusers[1].set_gates(True)
    b = par.encode(PROMPTS)
    par_cache, _, _ = par.prefill_and_fuse(b)
    seq_cache, _, _ = seq.prefill_and_fuse(b)
    one_cache, _, _ = single.prefill_and_fuse(b)
    k_par, k_seq, k_one = (layer_rows(c, 2)[0] for c in (par_cache, seq_cache, one_cache))
    assert not torch.equal(k_par, k_one) and not torch.equal(k_par, k_seq)


def test_include_response_fuses_generated_tokens():
    base = make_pair("qwen3<-llama")
    inc = C2CModel(base.receiver, base.sharers[0], base.fusers[0], config=C2CConfig(include_response=True))
    # closed gates: still the receiver
    assert inc.generate(PROMPTS, max_new_tokens=5) == base.generate(PROMPTS, max_new_tokens=5, mode="receiver")
    base.fusers[0].set_gates(True)
    try:
        a = base.generate(PROMPTS, max_new_tokens=8, return_dict=True)
        b = inc.generate(PROMPTS, max_new_tokens=8, return_dict=True)
        # the first token comes from the same fused prompt; later ones see fused response rows
        assert [s[:1] for s in a.sequences] == [s[:1] for s in b.sequences]
        assert a.sequences != b.sequences
        assert inc.generate(PROMPTS, max_new_tokens=8) == [inc.generate(p, max_new_tokens=8) for p in PROMPTS]
    finally:
        base.fusers[0].set_gates(False)


def test_sampling_is_seeded_and_streamer_sees_the_tokens(tok_chatml):
    r = tiny_model("qwen3", num_layers=2, seed=1, vocab_size=tok_chatml.vocab_size + 8)
    s = tiny_model("llama", num_layers=2, seed=2, vocab_size=tok_chatml.vocab_size + 8)
    model = C2CModel.from_models(r, s, fuser_config=FUSER, receiver_tokenizer=tok_chatml, sharer_tokenizer=tok_chatml, seed=0)
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
    model = C2CModel.from_models(r, s, fuser_config=FUSER, receiver_tokenizer=tok_chatml, sharer_tokenizer=tok_llama3, seed=0)
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
    assert b.sharer_index[0][0].tolist() == [1, 2, 3]
    b0 = make_pair("qwen3<-llama").encode([[5, 6, 7, 8]])
    assert b0.sharer_index[0][0].tolist() == [0, 1, 2]


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
    model = make_pair("qwen3<-llama", config=C2CConfig(include_response=include_response))
    model.fusers[0].set_gates(True)
    first = model.generate([5, 6, 7, 8], max_new_tokens=1)[0]
    model.receiver.generation_config.eos_token_id = first  # the greedy first token now ends the answer
    try:
        assert model.generate([5, 6, 7, 8], max_new_tokens=6) == []
        out = model.generate([5, 6, 7, 8], max_new_tokens=6, min_new_tokens=4)
        assert len(out) >= 4 and first not in out[:4]
        with pytest.raises(ValueError, match="min_new_tokens"):
            model.generate([5, 6], max_new_tokens=2, min_new_tokens=3)
    finally:
        model.receiver.generation_config.eos_token_id = 2
