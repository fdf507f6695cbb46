"""Batch helpers: the padding id every collate call uses."""

from __future__ import annotations

from types import SimpleNamespace

from c2c.hf import pad_token_id


def test_pad_id_prefers_the_tokenizer_pad_then_eos_then_the_configs() -> None:
    model = SimpleNamespace(
        generation_config=SimpleNamespace(pad_token_id=None, eos_token_id=[7, 8]),
        config=SimpleNamespace(pad_token_id=9),
    )
    assert pad_token_id(model, SimpleNamespace(pad_token_id=3, eos_token_id=4)) == 3
    assert pad_token_id(model, SimpleNamespace(pad_token_id=None, eos_token_id=4)) == 4
    assert pad_token_id(model, None) == 7  # first id of a list
    assert pad_token_id(SimpleNamespace(config=SimpleNamespace(pad_token_id=None, eos_token_id=None)), None) == 0
