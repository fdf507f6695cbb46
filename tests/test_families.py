"""Model families whose caches are not what their configs say, hybrids, and families c2c must refuse.

Each family either works (closed gates reproduce the receiver bit for bit, as receiver and as sharer, with
open gates changing the answer path) or is refused when the model is built, with the true reason.
"""

from __future__ import annotations

import pytest
import torch

from c2c import C2CModel, FuserConfig, ModelSpec
from c2c.cache import UnsupportedModelError
from c2c.testing.models import exotic_model, tiny_model

FUSER = FuserConfig(hidden_size=16, intermediate_size=16, dropout=0.0)
PROMPT = [5, 6, 7, 8, 9, 10]

# family -> (KV layers, KV heads, key head dim, value head dim) as the cache really holds them
WORKING = {
    "falcon_multi_query": ([0, 1], 1, 16, None),  # the config says 4 KV heads; the cache holds 1
    "deepseek_v3": ([0, 1], 1, 16, 8),  # keys 16 wide, values 8
    "llama4_text": ([0, 1], 2, 16, None),
    "falcon_h1": ([0, 1], 2, 16, None),  # attention and SSM in every layer
    "jamba": ([1], 2, 16, None),  # attention in layer 1 only
    "recurrent_gemma": ([2], 1, 16, None),  # recurrent layers 0-1, local attention in layer 2
}
REFUSED = {
    "mamba": "keeps no per-token keys and values",
    "minimax": "could not run a prefill into a transformers DynamicCache",
}


@pytest.mark.parametrize("family", sorted(WORKING))
def test_geometry_is_read_from_a_real_cache_and_fusion_works(family):
    model = exotic_model(family, seed=1)
    spec = ModelSpec.from_model(model)
    assert (spec.kv_layers, spec.num_kv_heads, spec.head_dim, spec.value_head_dim) == WORKING[family]
    other = tiny_model("llama", num_layers=2, vocab_size=256, seed=2)
    for receiver, sharer in ((model, other), (other, model)):
        c2c = C2CModel.from_models(receiver, sharer, fuser_config=FUSER, seed=0)
        closed = c2c.generate(PROMPT, max_new_tokens=4)
        hf = receiver.generate(torch.tensor([PROMPT]), max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert closed == hf[0, len(PROMPT) :].tolist()[: len(closed)]
        c2c.fuser_list[0].set_gates(True)
        batch = c2c.encode([PROMPT])
        fused = c2c.prefill_and_fuse(batch).cache
        clean = c2c.prefill_and_fuse(batch, fuse=False).cache
        layer = c2c.receiver_spec.kv_layers[-1]
        assert not torch.equal(fused.layers[layer].keys, clean.layers[layer].keys)
        assert not torch.equal(fused.layers[layer].values, clean.layers[layer].values)
        assert len(c2c.generate(PROMPT, max_new_tokens=4)) <= 4


@pytest.mark.parametrize("family", sorted(REFUSED))
def test_unsupported_families_are_refused_at_build_with_the_reason(family):
    model = exotic_model(family)
    other = tiny_model("llama", num_layers=2, vocab_size=256)
    with pytest.raises(UnsupportedModelError, match=REFUSED[family]):
        C2CModel.from_models(model, other, fuser_config=FUSER)
    with pytest.raises(UnsupportedModelError, match=REFUSED[family]):
        C2CModel.from_models(other, model, fuser_config=FUSER)
