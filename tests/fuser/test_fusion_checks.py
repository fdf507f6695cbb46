"""The fusion path's finiteness check on what the fuser returns: NaN or inf is an error naming its cause;
huge but finite corrections are not."""

from __future__ import annotations

import pytest
import torch

from c2c import C2CModel, FuserConfig
from c2c.testing.models import tiny_model


@pytest.fixture()
def model(tok_chatml):
    receiver = tiny_model("qwen3", vocab_size=len(tok_chatml), num_layers=2)
    sharer = tiny_model("llama", vocab_size=len(tok_chatml), num_layers=2, seed=1)
    m = C2CModel.from_models(
        receiver,
        sharer,
        fuser_config=FuserConfig(family="lowrank", rank=8, dropout=0.0),
        receiver_tokenizer=tok_chatml,
        sharer_tokenizer=tok_chatml,
        seed=0,
    )
    m.fusers[0].set_gates(True)
    return m


def test_nan_weights_are_named(model):
    with torch.no_grad():
        model.fusers[0].value.proj_out.bias[1, 3] = float("nan")
    with pytest.raises(
        FloatingPointError, match=r"receiver layer 1: fuser 0's weights hold NaN or inf \(value\.proj_out\.bias"
    ):
        model.prefill_and_fuse(model.encode(["the cat sat on the mat"]))


def test_huge_finite_corrections_are_not_mistaken_for_inf(model):
    # Each correction is finite, but their sum overflows fp32: the quick check fails, the exact one passes.
    with torch.no_grad():
        model.fusers[0].key.proj_out.bias.fill_(3e37)
    batch = model.encode(["the cat sat on the mat"])
    fused = model.prefill_and_fuse(batch).cache
    keys = fused.layers[0].keys
    assert bool(torch.isfinite(keys).all()) and keys.abs().max() > 1e36
