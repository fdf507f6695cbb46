"""A real tiny C2C model (random receiver and sharer of different families and tokenizers, saved to disk and
loaded back through ``C2CModel.from_pretrained``) behind the server; garbage answers, real code paths."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import uvicorn
from fastapi import FastAPI
from transformers import AutoModelForCausalLM

from c2c.fuser import FuserConfig
from c2c.model import C2CModel
from c2c.serve.backend import C2CBackend
from c2c.serve.engine import Engine, ServeLimits
from c2c.testing.models import tiny_model
from c2c.testing.tokenizers import build_tokenizer

MODEL_ID = "tiny-c2c"


@dataclass
class SavedPair:
    fuser_dir: Path
    receiver_dir: Path
    sharer_dir: Path


def _save_pair(root: Path, context: int) -> SavedPair:
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
            max_position_embeddings=context,
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
def saved_pair(tmp_path_factory: pytest.TempPathFactory) -> SavedPair:
    # A long context lets cancellation tests ask for thousands of tokens: generation that cannot finish
    # before the client leaves, however fast the machine.
    return _save_pair(tmp_path_factory.mktemp("serve_pair"), 4096)


@pytest.fixture(scope="session")
def short_pair(tmp_path_factory: pytest.TempPathFactory) -> SavedPair:
    """The same pair with a 256-position context (receiver and sharer): admission and defaults bite."""
    return _save_pair(tmp_path_factory.mktemp("serve_pair_256"), 256)


@pytest.fixture(scope="session")
def short_backend(short_pair: SavedPair) -> C2CBackend:
    return C2CBackend(C2CModel.from_pretrained(str(short_pair.fuser_dir)), model_id=MODEL_ID)


def _text_model(saved_pair: SavedPair) -> C2CModel:
    """The pair's fuser as a plain-text fuser (trained on plain text: ``prompt_format == "text"``)."""
    from dataclasses import replace

    model = C2CModel.from_pretrained(str(saved_pair.fuser_dir))
    model.config = replace(model.config, prompt_format="text")
    return model


@pytest.fixture(scope="session")
def text_backend(saved_pair: SavedPair) -> C2CBackend:
    return C2CBackend(_text_model(saved_pair), model_id=MODEL_ID)


@pytest.fixture(scope="session")
def no_template_backend(saved_pair: SavedPair) -> C2CBackend:
    """A chat fuser whose tokenizers have no chat template (as many base models ship)."""
    from transformers import AutoTokenizer

    toks = []
    for d in (saved_pair.receiver_dir, saved_pair.sharer_dir):
        tok = AutoTokenizer.from_pretrained(str(d))
        tok.chat_template = None
        toks.append(tok)
    with warnings.catch_warnings():  # "the tokenizer differs from the one this fuser was trained with": it does
        warnings.simplefilter("ignore", UserWarning)
        model = C2CModel.from_pretrained(
            str(saved_pair.fuser_dir), receiver_tokenizer=toks[0], sharer_tokenizer=toks[1]
        )
    return C2CBackend(model, model_id=MODEL_ID)


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _live_server(app: FastAPI) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port in a thread; yields the base URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def _wait_until(cond: Callable[[], object], timeout: float = 20.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return bool(cond())


# Helpers as fixtures: with --import-mode=importlib test modules cannot import from this folder.
@pytest.fixture(scope="session")
def model_id() -> str:
    return MODEL_ID


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    return _free_port


@pytest.fixture(scope="session")
def live_server() -> Callable[[FastAPI], contextlib.AbstractContextManager[str]]:
    """``with live_server(app) as url:`` runs ``app`` with uvicorn on a free loopback port in a thread."""
    return _live_server


@pytest.fixture(scope="session")
def wait_until() -> Callable[..., bool]:
    return _wait_until
