"""The fusion side of the vLLM engine (no vLLM needed): per-request fused rows cut out of a batched fusion."""

from __future__ import annotations

import pytest
import torch

from c2c.cache import layer_rows
from c2c.fuser import FuserConfig
from c2c.model import C2CConfig, C2CModel
from c2c.serve.vllm.prefill import check_receiver, fused_prefixes
from c2c.testing.models import tiny_model


def _model(receiver_family: str = "qwen3", **receiver_kw: object) -> C2CModel:
    receiver = tiny_model(receiver_family, num_layers=2, seed=0, **receiver_kw)
    sharer = tiny_model("llama", num_layers=3, seed=1)
    return C2CModel.from_models(
        receiver, sharer, fuser_config=FuserConfig(hidden_size=32, intermediate_size=32, gate_init=2.0, dropout=0.0),
        seed=0,
    )  # fmt: skip


def test_each_row_of_a_batch_hands_over_its_own_fused_prefix():
    """Left-padded batch fusion gives every request the rows it would get alone (float rounding aside)."""
    model = _model()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [20, 21, 22], [30]]
    batched, timings = fused_prefixes(model, model.encode(prompts))
    assert set(timings) >= {"receiver_prefill", "sharer_prefill", "fusion"}
    for prompt, got in zip(prompts, batched):
        assert got.prompt_ids == prompt and got.length == len(prompt) - 1
        if got.length == 0:
            continue
        alone_cache = model.prefill_and_fuse(model.encode(prompt)).cache
        rows = got.rows()
        assert rows.shape == got.shape == (2, 2, len(prompt) - 1, 2, 16)  # [L, 2, P, H, D]
        for layer in range(2):
            keys, values = layer_rows(alone_cache, layer)
            torch.testing.assert_close(rows[layer, 0], keys[0].transpose(0, 1), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(rows[layer, 1], values[0].transpose(0, 1), atol=1e-5, rtol=1e-5)


def test_the_rows_are_the_fused_ones():
    model = _model()
    prompt = [5, 6, 7, 8, 9]
    fused = fused_prefixes(model, model.encode(prompt))[0][0].rows()
    plain = model.prefill_and_fuse(model.encode(prompt), fuse=False).cache
    assert not torch.allclose(fused[0, 0], layer_rows(plain, 0)[0][0].transpose(0, 1))


def test_rows_go_straight_into_the_hand_over_file(tmp_path):
    from c2c.serve.vllm.handover import HandoverStore
    from c2c.serve.vllm.kv_connector.c2c_kv_rows import read_rows

    model = _model()
    pre = fused_prefixes(model, model.encode([[5, 6, 7, 8], [9, 10]]))[0][0]
    hand = HandoverStore(str(tmp_path)).write_with(pre.shape, pre.dtype, pre.copy_into)
    assert torch.equal(read_rows(hand.params), pre.rows())


@pytest.mark.parametrize(
    "family, config, error",
    [
        ("gemma3", C2CConfig(), "sliding-window or linear-attention"),
        ("qwen3_5", C2CConfig(), "sliding-window or linear-attention"),
        ("qwen3", C2CConfig(include_response=True), "include_response"),
    ],
)
def test_pairs_the_vllm_engine_cannot_serve_are_refused(family, config, error):
    base = _model(family)
    model = C2CModel(base.receiver, base.sharers[0], base.fusers[0], config=config)
    with pytest.raises(ValueError, match=error) as info:
        check_receiver(model)
    assert "--engine builtin" in str(info.value)
