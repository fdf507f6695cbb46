"""Real vLLM (the CPU build, from ``scripts/setup_vllm.sh``) behind c2c's vLLM engine, on tiny random models.

Two receiver families, each with its own fuser and a sharer of another family and tokenizer:

- pair "qwen3": Qwen3 receiver (q/k norms, GQA 2:1) <- Llama sharer; served with its sharer (all modes);
- pair "llama": Llama receiver <- Qwen2 sharer (qkv biases); receiver server only.

vLLM's CPU attention takes head sizes 32, 64, 80, ... (not 16), so these models use head_dim 32. Servers
start once per session (about a minute each on two cores, started in parallel) and are shared read-only:
tests send independent requests, never reconfigure them. Without vLLM the tests skip, except under CI
(``$CI`` set), where a missing vLLM is a failure: CI must run them.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from c2c.fuser import FuserConfig
from c2c.model import C2CModel
from c2c.serve.backend import C2CBackend
from c2c.serve.engine import ServeLimits
from c2c.testing.models import tiny_model
from c2c.testing.tokenizers import build_tokenizer

BLOCK_SIZE = 32
MAX_LEN = 512


@dataclass
class Pair:
    name: str
    fuser_dir: Path
    receiver_dir: Path
    sharer_dir: Path


def _require_vllm() -> str:
    from c2c.serve.vllm.server import VLLMUnavailable, check_vllm, find_vllm_python

    try:
        python = find_vllm_python()
        check_vllm(python)
    except VLLMUnavailable as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the vLLM tests, but: {e}")
        pytest.skip(f"vLLM not available ({e})")
    return python


def _save_model(root: Path, role: str, family: str, template: str, vocab: int, seed: int, **shape: Any) -> Path:
    tok = build_tokenizer(None, vocab, chat_template=template)
    model = tiny_model(
        family, vocab_size=len(tok), seed=seed, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, max_position_embeddings=MAX_LEN, head_dim=32, **shape,
    )  # fmt: skip
    d = root / role
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _make_pair(root: Path, name: str, receiver: tuple[str, str, int], sharer: tuple[str, str, int]) -> Pair:
    r_dir = _save_model(root / name, "receiver", *receiver, seed=0, num_layers=3, hidden_size=64, num_heads=2,
                        num_kv_heads=1 if receiver[0] == "qwen3" else 2)  # fmt: skip
    s_dir = _save_model(root / name, "sharer", *sharer, seed=1, num_layers=2, hidden_size=64, num_heads=2,
                        num_kv_heads=2)  # fmt: skip
    torch.manual_seed(0)
    model = C2CModel.from_models(
        AutoModelForCausalLM.from_pretrained(str(r_dir)),
        AutoModelForCausalLM.from_pretrained(str(s_dir)),
        # gate_init > 0 opens every gate, so fused answers differ from the receiver's.
        fuser_config=FuserConfig(hidden_size=32, intermediate_size=32, gate_init=2.0, dropout=0.0),
        receiver_tokenizer=AutoTokenizer.from_pretrained(str(r_dir)),
        sharer_tokenizer=AutoTokenizer.from_pretrained(str(s_dir)),
        seed=0,
    )
    fuser_dir = root / name / "fuser"
    model.save_pretrained(str(fuser_dir))
    return Pair(name, fuser_dir, r_dir, s_dir)


@pytest.fixture(scope="session")
def vllm_pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    root = tmp_path_factory.mktemp("vllm_pairs")
    return {
        "qwen3": _make_pair(root, "qwen3", ("qwen3", "chatml", 400), ("llama", "llama3", 380)),
        "llama": _make_pair(root, "llama", ("llama", "llama3", 420), ("qwen2", "chatml", 360)),
    }


@pytest.fixture(scope="session")
def vllm_engines(vllm_pairs: dict[str, Pair]) -> Any:
    """Started :class:`VLLMEngine` per pair (servers owned by the engines, stopped at the end)."""
    _require_vllm()
    from c2c.serve.vllm import VLLMOptions, launch_engine

    # A long batching window lets the mixed-batch test fuse its C2C requests together, deterministically.
    limits = ServeLimits(max_batch_size=8, batch_window_s=0.3, max_prompt_tokens=MAX_LEN - 64)

    def launch(name: str) -> Any:
        backend = C2CBackend(C2CModel.from_pretrained(str(vllm_pairs[name].fuser_dir)), model_id=f"tiny-{name}")
        opts = VLLMOptions(block_size=BLOCK_SIZE, max_model_len=MAX_LEN, cpu_kv_cache_gib=1, sharer=name == "qwen3")
        return launch_engine(backend, limits, opts)

    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(launch, name) for name in vllm_pairs}
        pool.shutdown(wait=True)
    engines = {name: f.result() for name, f in futures.items() if f.exception() is None}
    failed = [f.exception() for f in futures.values() if f.exception() is not None]
    if failed:  # stop what did start before failing
        for e in engines.values():
            e.close()
        raise failed[0]  # type: ignore[misc]
    for e in engines.values():
        e.start()
    yield engines
    for e in engines.values():
        e.close()


@pytest.fixture(scope="session")
def hf_models(vllm_pairs: dict[str, Pair]) -> dict[str, C2CModel]:
    """The HF path of each pair: the same fusers loaded separately (the reference the engine must match)."""
    return {name: C2CModel.from_pretrained(str(p.fuser_dir)) for name, p in vllm_pairs.items()}
