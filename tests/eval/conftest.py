"""Tiny random receiver / sharer pairs with real local tokenizers (garbage answers, real code paths)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from c2c.testing.models import tiny_model
from c2c.testing.tokenizers import build_tokenizer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@dataclass
class Pair:
    receiver: PreTrainedModel
    receiver_tokenizer: PreTrainedTokenizerFast
    sharer: PreTrainedModel
    sharer_tokenizer: PreTrainedTokenizerFast


def _model(family: str, tok: PreTrainedTokenizerFast, seed: int) -> PreTrainedModel:
    return tiny_model(
        family,
        vocab_size=len(tok),
        seed=seed,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


@pytest.fixture(scope="session")
def pair() -> Pair:
    torch.manual_seed(0)
    r_tok = build_tokenizer(None, 400, chat_template="chatml")
    s_tok = build_tokenizer(None, 360, chat_template="llama3")
    return Pair(_model("qwen3", r_tok, 0), r_tok, _model("qwen2", s_tok, 1), s_tok)


@pytest.fixture(scope="session")
def make_c2c(pair: Pair):
    """``make_c2c()``: a new C2C model over the tiny pair with a small, untrained fuser (gates closed: the
    receiver unchanged)."""
    from c2c.fuser import FuserConfig
    from c2c.model import C2CModel

    def make() -> C2CModel:
        return C2CModel.from_models(
            pair.receiver,
            pair.sharer,
            fuser_config=FuserConfig(hidden_size=32, intermediate_size=32, dropout=0.0),
            receiver_tokenizer=pair.receiver_tokenizer,
            sharer_tokenizer=pair.sharer_tokenizer,
            seed=0,
        )

    return make


@pytest.fixture
def c2c_model(make_c2c):
    """A fresh C2C model per test, so a test that opens its gates affects no other."""
    return make_c2c()
