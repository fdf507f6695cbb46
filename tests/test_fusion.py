"""The one fusion path: numerics of the combine, batching invariance, and which rows change."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from c2c import C2CConfig, C2CModel, FuserConfig
from c2c.cache import backbone, layer_rows
from c2c.fuser import LayerRows
from c2c.fusion import sharer_tokens_for
from c2c.testing.models import tiny_model
from c2c.testing.tokenizers import build_tokenizer

FUSER = FuserConfig(hidden_size=32, intermediate_size=32, dropout=0.0)


def _pair(dtype: torch.dtype = torch.float32, *, receiver: str = "qwen3") -> C2CModel:
    r = tiny_model(receiver, num_layers=2, seed=1, dtype=dtype)
    s = tiny_model("llama", num_layers=3, num_kv_heads=1, head_dim=32, seed=2, dtype=dtype)
    model = C2CModel.from_models(r, s, fuser_config=FUSER, seed=0, dtype=dtype)
    for f in model.fuser_list:
        f.set_gates(True)
    return model


def test_bf16_corrections_are_combined_in_fp32_and_rounded_once():
    """The reference adds the correction to the receiver rows in fp32 and rounds once to bf16; rounding the
    correction first and adding in bf16 differs by one bf16 step on many elements."""
    model = _pair(torch.bfloat16)
    batch = model.encode([[5, 6, 7, 8, 9, 10, 11]])
    fused = model.prefill_and_fuse(batch).cache
    clean = model.prefill_and_fuse(batch, fuse=False).cache
    fuser = model.fuser_list[0]
    p = batch.prefix_len
    index = batch.sharer_index[0][0, :p]
    scache = model.prefill_and_fuse(batch).sharer_caches[0]
    for rl, sl in fuser.layer_map.items():
        ck, cv = layer_rows(clean, rl)
        sk, sv = layer_rows(scache, sl)
        rows = LayerRows(sk[:, :, index], sv[:, :, index], ck, cv)
        with torch.no_grad():
            dk, dv = fuser.layers[str(rl)](rows, gates=(True, True))
        assert dk is not None and dv is not None and dk.dtype == torch.float32
        want_k = (ck.float() + dk).to(torch.bfloat16)
        want_v = (cv.float() + dv).to(torch.bfloat16)
        fk, fv = layer_rows(fused, rl)
        assert torch.equal(fk, want_k) and torch.equal(fv, want_v)
        twice = ck + dk.to(torch.bfloat16)  # what rounding the correction first gives
        assert not torch.equal(twice, want_k)


PROMPTS = st.lists(st.lists(st.integers(3, 500), min_size=1, max_size=12), min_size=1, max_size=4)


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(prompts=PROMPTS)
def test_fused_rows_of_a_batch_equal_those_of_each_prompt_alone(prompts):
    """Left padding, packing and batching never change which rows a prompt's fusion reads or writes."""
    model = _pair(receiver="gemma3")  # sliding-window layers: a layer may hold fewer rows than the prefix
    batch = model.encode(prompts)
    cache = model.prefill_and_fuse(batch).cache
    assert batch.prefix_len == max(len(x) for x in prompts) - 1
    for i, prompt in enumerate(prompts):
        n = len(prompt) - 1  # rows of this prompt in the prefix
        if n == 0:
            continue  # a one-token prompt has no prefix: nothing is prefilled or fused
        alone = model.prefill_and_fuse(model.encode([prompt])).cache
        for layer in model.receiver_spec.kv_layers:
            for x, y in zip(layer_rows(alone, layer), layer_rows(cache, layer)):
                held = x.shape[2]  # a sliding layer holds only its window
                torch.testing.assert_close(y[i, :, y.shape[2] - held :], x[0], rtol=1e-4, atol=1e-5)


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(prompts=PROMPTS, family=st.sampled_from(["full", "lowrank", "shared", "linear"]))
def test_inference_fusion_equals_the_training_forward(prompts, family):
    """Inference fuses through its own fast paths (feature-major GEMMs on rows padded to 16, in-place writes,
    a view for one consecutive prompt); training through autograd's out-of-place ones. Same rows."""
    r = tiny_model("qwen3", num_layers=2, seed=1)
    s = tiny_model("llama", num_layers=3, num_kv_heads=1, head_dim=32, seed=2)
    size = {
        "full": {"hidden_size": 32, "intermediate_size": 32},
        "lowrank": {"rank": 8},
        "shared": {"shared_hidden_size": 16},
        "linear": {},
    }[family]
    model = C2CModel.from_models(r, s, fuser_config=FuserConfig(family=family, dropout=0.0, **size), seed=0)
    model.eval()
    for f in model.fuser_list:
        f.set_gates(True)
        with torch.no_grad():
            for prm in f.parameters():
                prm.add_(0.05 * torch.randn_like(prm))
        f.set_gates(True)
    batch = model.encode(prompts)
    if batch.prefix_len == 0:
        return
    with torch.enable_grad():
        trained = model.prefill_and_fuse(batch).cache
    with torch.inference_mode():
        fast = model.prefill_and_fuse(batch).cache
        clean = model.prefill_and_fuse(batch, fuse=False).cache
    changed = False
    for layer in model.receiver_spec.kv_layers:
        for a, b, c in zip(layer_rows(fast, layer), layer_rows(trained, layer), layer_rows(clean, layer)):
            torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-5)
            changed |= not torch.equal(a, c)
    assert changed  # the fusion did write rows


@pytest.mark.parametrize("sharer_style", ["chatml", None])  # a sharer that adds no BOS itself, one that does
def test_a_generated_receiver_bos_is_read_by_the_sharer_as_one_token(sharer_style):
    """Include-response: a receiver with its own BOS that generates BOS mid-answer gives the sharer exactly one
    token for it, the sharer's BOS by role, read as a piece (never the sharer's whole-prompt frame, which for
    a sharer without a BOS of its own is empty and would be read as pad)."""
    rt = build_tokenizer(None, 360, chat_template="llama3")  # adds <|begin_of_text|> on encode
    st = build_tokenizer(None, 320, chat_template=sharer_style)
    bos, s_bos = rt.bos_token_id, st.bos_token_id
    assert rt.encode("the cat")[0] == bos and s_bos is not None and s_bos != st.pad_token_id
    r = tiny_model("qwen3", num_layers=2, seed=1, vocab_size=len(rt))
    s = tiny_model("llama", num_layers=2, seed=2, vocab_size=len(st))
    model = C2CModel.from_models(
        r,
        s,
        fuser_config=FUSER,
        config=C2CConfig(include_response=True),
        receiver_tokenizer=rt,
        sharer_tokenizer=st,
        seed=0,
    )
    model.fuser_list[0].set_gates(True)
    piece = model.aligners[0].align_ids([bos], sharer_specials=False)
    assert piece.sharer_ids == [s_bos] and piece.sharer_index == [0]
    assert sharer_tokens_for(model, 0, torch.tensor([bos, bos])).tolist() == [s_bos, s_bos]

    # the receiver generates BOS at every step; the sharer reads one column per generated token, its BOS
    model.receiver.get_output_embeddings().register_forward_hook(
        lambda _m, _i, out: out + 1e4 * torch.nn.functional.one_hot(torch.tensor(bos), out.shape[-1])
    )
    reads: list[list[list[int]]] = []
    backbone(model.sharer_models[0]).register_forward_pre_hook(
        lambda _m, _a, kw: reads.append(kw["input_ids"].tolist()), with_kwargs=True
    )
    prompt = rt.encode("the cat sat on the mat")
    out = model.generate(prompt, max_new_tokens=4, min_new_tokens=4, return_dict=True)
    assert out.sequences == [[bos] * 4]
    decode_reads = reads[1:]  # reads[0] is the sharer's prefill of its aligned prompt
    assert len(decode_reads) >= 3 and all(ids == [[s_bos]] for ids in decode_reads)


def test_include_response_reads_the_sharer_token_the_offsets_alignment_picks():
    """ "offsets" reads the sharer token covering a receiver token's last character; a generated token whose
    text the sharer splits (a SentencePiece sharer's bare "▁" first) gives the sharer that token, not the
    first piece."""
    rt = build_tokenizer(None, 360, chat_template="llama3")
    st = build_tokenizer(None, 300, chat_template="chatml", model="unigram", byte_level=False)
    r = tiny_model("qwen3", num_layers=2, seed=1, vocab_size=len(rt))
    s = tiny_model("llama", num_layers=2, seed=2, vocab_size=len(st))
    config = C2CConfig(include_response=True, token_alignment="offsets")
    model = C2CModel.from_models(
        r, s, fuser_config=FUSER, config=config, receiver_tokenizer=rt, sharer_tokenizer=st, seed=0
    )
    pieces = [model.aligners[0].align_ids([t], sharer_specials=False) for t in range(len(rt))]
    split = [t for t, p in enumerate(pieces) if len(p.sharer_ids) > 1]
    assert split, "the pair must have receiver tokens the sharer splits for this test to mean anything"
    got = sharer_tokens_for(model, 0, torch.tensor(split)).tolist()
    assert got == [pieces[t].sharer_ids[pieces[t].sharer_index[0]] for t in split]
    assert got != [pieces[t].sharer_ids[0] for t in split]
