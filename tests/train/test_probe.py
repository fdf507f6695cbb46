"""The continued-prefill probe: attention caches continue a prefill exactly, the recurrent caches of Jamba and
RecurrentGemma do not (measured on tiny models built from transformers' own configs), and the trainer refuses
such a receiver before anything is written."""

from __future__ import annotations

import pytest
import torch
from train_support import chat_rows, tiny_recurrent_model, tokenizer

from c2c import C2CConfig, C2CModel, FuserConfig
from c2c.testing.models import FAMILIES, tiny_model
from c2c.train import TrainConfig, UnsupportedModelError, train
from c2c.train.probe import check_continued_prefill, continuation_gap

RECURRENT = ("jamba", "recurrent_gemma")


def pair_with(receiver=None, sharer=None, **c2c) -> C2CModel:
    rt, st = tokenizer("qwen3"), tokenizer("llama3")
    receiver = receiver or tiny_model("qwen3", vocab_size=len(rt), seed=0)
    sharer = sharer or tiny_model("llama", vocab_size=len(st), seed=1)
    return C2CModel.from_models(
        receiver,
        sharer,
        fuser_config=FuserConfig(hidden_size=16, intermediate_size=16, dropout=0.0),
        receiver_tokenizer=rt,
        sharer_tokenizer=st,
        config=C2CConfig(**c2c),
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_families_continue_a_prefill_exactly(family):
    model = tiny_model(family, vocab_size=300)
    for step in (0, 1):
        gap = continuation_gap(model, step=step)
        assert gap.ok and gap.relative < 1e-4, (family, step, gap)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", RECURRENT)
def test_recurrent_caches_differ_only_when_continuing_several_tokens(kind, dtype):
    model = tiny_recurrent_model(kind, 300).to(dtype)
    chunk = continuation_gap(model, step=0)
    assert chunk.dtype == dtype and not chunk.ok and chunk.relative > 2 * chunk.tolerance, chunk
    assert continuation_gap(model, step=1).ok  # decoding token by token is right


@pytest.mark.parametrize("kind", RECURRENT)
def test_a_recurrent_receiver_is_refused_with_the_measured_reason(kind):
    rt = tokenizer("qwen3")
    model = pair_with(tiny_recurrent_model(kind, len(rt)))
    with pytest.raises(
        UnsupportedModelError,
        match=r"(?s)the receiver \(\w+ForCausalLM\) cannot be trained.*"
        r"differs from one plain forward by .* of the mean logit \(tolerance 0.001 for float32\).*"
        "Reading one token at a time \\(decoding\\) matches",
    ):
        check_continued_prefill(model)


def test_include_response_reads_token_by_token_and_passes():
    # With include_response the training forward reads the response one token at a time (receiver and sharers),
    # which these caches do right; a recurrent sharer is read that way too.
    rt, st = tokenizer("qwen3"), tokenizer("llama3")
    check_continued_prefill(pair_with(tiny_recurrent_model("jamba", len(rt)), include_response=True))
    check_continued_prefill(pair_with(sharer=tiny_recurrent_model("recurrent_gemma", len(st)), include_response=True))
    # without include_response a sharer only ever runs one prefill: nothing to continue
    check_continued_prefill(pair_with(sharer=tiny_recurrent_model("jamba", len(st))))


def test_the_trainer_refuses_before_writing_anything(tmp_path):
    model = pair_with(tiny_recurrent_model("jamba", len(tokenizer("qwen3"))))
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=1, batch_size=2, progress=False)
    with pytest.raises(UnsupportedModelError, match="receiver .* cannot be trained"):
        train(model, chat_rows(4), cfg)
    assert not (tmp_path / "run").exists()


def test_the_probe_leaves_the_global_rng_alone():
    model = pair_with(include_response=True)  # receiver and sharer probed
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    check_continued_prefill(model)
    assert torch.equal(torch.rand(3), expected)
