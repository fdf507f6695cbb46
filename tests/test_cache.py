"""KV geometry and row access through the Cache API."""

from __future__ import annotations

import pytest
import torch

from c2c.cache import ModelSpec, keep_columns, layer_rows, new_cache
from c2c.hf import position_ids_from_mask
from c2c.testing.models import FAMILIES, tiny_config, tiny_model


@pytest.mark.parametrize("family", FAMILIES)
def test_model_spec_of_every_family(family):
    spec = ModelSpec.from_config(tiny_config(family, num_layers=4))
    assert spec.num_layers == 4 and spec.num_kv_heads == 2 and spec.head_dim == 16
    if family == "qwen3_5":
        assert spec.kv_layers == [1, 3]  # linear-attention layers hold no per-token KV
    else:
        assert spec.kv_layers == [0, 1, 2, 3]
    if family == "gemma3":
        assert spec.sliding_layers == [0, 2] and spec.sliding_window == 8
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_sliding_layers_hold_only_the_window_and_the_sharer_cache_keeps_all_rows():
    model = tiny_model("gemma3", num_layers=2)
    ids = torch.randint(3, 500, (1, 12))
    normal, full = new_cache(model), new_cache(model, keep_all_rows=True)
    with torch.no_grad():
        a = model(input_ids=ids, cache=normal, use_cache=True).logits
        b = model(input_ids=ids, cache=full, use_cache=True).logits
    torch.testing.assert_close(a, b)  # attention is unchanged
    assert layer_rows(normal, 0)[0].shape[2] == 7 and layer_rows(full, 0)[0].shape[2] == 12
    torch.testing.assert_close(layer_rows(normal, 0)[0], layer_rows(full, 0)[0][:, :, -7:])


def test_layer_rows_refuses_linear_attention_layers():
    model = tiny_model("qwen3_5", num_layers=2)
    cache = new_cache(model)
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6, 7]]), cache=cache, use_cache=True)
    assert layer_rows(cache, 1)[0].shape == (1, 2, 3, 16)
    with pytest.raises(ValueError, match="holds no per-token"):
        layer_rows(cache, 0)


def test_keep_columns_and_positions():
    model = tiny_model("qwen3", num_layers=2)
    cache = new_cache(model)
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]]), cache=cache, use_cache=True)
    before = layer_rows(cache, 1)[0].clone()
    keep_columns(cache, torch.tensor([[3, 0], [1, 2]]))
    after = layer_rows(cache, 1)[0]
    assert after.shape[2] == 2
    assert torch.equal(after[0, :, 0], before[0, :, 3]) and torch.equal(after[1, :, 1], before[1, :, 2])
    sliding = tiny_model("gemma3", num_layers=2)
    s_cache = new_cache(sliding)
    with torch.no_grad():
        sliding(input_ids=torch.tensor([[5, 6, 7]]), cache=s_cache, use_cache=True)
    with pytest.raises(ValueError, match="full-attention"):
        keep_columns(s_cache, torch.tensor([[0]]))
    assert position_ids_from_mask(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_layers", "4"), ("kv_layers", [0, "1"]), ("head_dim", 16.0), ("num_kv_heads", None), ("name_or_path", 3)],
)
def test_recorded_spec_fields_of_the_wrong_type_are_named(field, value):
    spec = ModelSpec.from_config(tiny_config("qwen3", num_layers=2)).to_dict()
    with pytest.raises(TypeError, match=field):
        ModelSpec.from_dict({**spec, field: value})
    del spec[field]
    with pytest.raises((ValueError, TypeError), match=field):
        ModelSpec.from_dict(spec)
