"""A real tiny C2C model (random receiver and sharer of different families and tokenizers, saved to disk and
loaded back through ``C2CModel.from_pretrained``) behind the server; garbage answers, real code paths."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from c2c.fuser import FuserConfig
from c2c.model import C2CModel
from c2c.serve.backend import C2CBackend
from c2c.serve.engine import Engine, ServeLimits
from c2c.testing.models import tiny_model
from c2c.testing.tokenizers import build_tokenizer

from serve_support import MODEL_ID


@dataclass
class SavedPair:
    fuser_dir: Path
    receiver_dir: Path
    sharer_dir: Path


@pytest.fixture(scope="session")
def saved_pair(tmp_path_factory: pytest.TempPathFactory) -> SavedPair:
    root = tmp_path_factory.mktemp("serve_pair")
    torch.manual_seed(0)
    dirs = {}
    for role, family, template, vocab, seed in (
        ("receiver", "qwen3", "chatml", 400, 0),
        ("sharer", "llama", "llama3", 380, 1),
    ):
        tok = build_tokenizer(None, vocab, chat_template=template)
        model = tiny_model(
            family,
            vocab_size=len(tok),
            seed=seed,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        d = root / role
        model.save_pretrained(d)
        tok.save_pretrained(d)
        dirs[role] = d
    receiver = AutoModelForCausalLM.from_pretrained(str(dirs["receiver"])).eval()
    sharer = AutoModelForCausalLM.from_pretrained(str(dirs["sharer"])).eval()
    from transformers import AutoTokenizer

    model = C2CModel.from_models(
        receiver,
        sharer,
        # gate_init > 0 opens every gate, so C2C answers differ from the receiver's.
        fuser_config=FuserConfig(hidden_size=32, intermediate_size=32, gate_init=2.0, dropout=0.0),
        receiver_tokenizer=AutoTokenizer.from_pretrained(str(dirs["receiver"])),
        sharer_tokenizer=AutoTokenizer.from_pretrained(str(dirs["sharer"])),
        seed=0,
    )
    fuser_dir = root / "fuser"
    model.save_pretrained(str(fuser_dir))
    return SavedPair(fuser_dir, dirs["receiver"], dirs["sharer"])


@pytest.fixture(scope="session")
def c2c_model(saved_pair: SavedPair) -> C2CModel:
    return C2CModel.from_pretrained(str(saved_pair.fuser_dir))


@pytest.fixture(scope="session")
def backend(c2c_model: C2CModel) -> C2CBackend:
    return C2CBackend(c2c_model, model_id=MODEL_ID)


@pytest.fixture
def make_engine(backend: C2CBackend) -> Iterator:
    """``make_engine(**limits)``: a started engine, closed after the test."""
    engines: list[Engine] = []

    def make(**limits: object) -> Engine:
        e = Engine(backend, ServeLimits(**limits)).start()  # type: ignore[arg-type]
        engines.append(e)
        return e

    yield make
    for e in engines:
        e.close()
