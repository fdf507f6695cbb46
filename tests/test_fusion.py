"""The one fusion path: numerics of the combine, batching invariance, and which rows change."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from c2c import C2CModel, FuserConfig
from c2c.cache import layer_rows
from c2c.fuser import LayerRows
from c2c.testing.models import tiny_model

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
