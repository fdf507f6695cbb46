"""The hand-over format and the connector's pure helpers (torch only: run without vLLM), and the store that
writes hand-overs. The same ``c2c_kv_rows`` module is what the connector imports inside vLLM."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from c2c.serve.vllm.handover import HandoverStore
from c2c.serve.vllm.kv_connector import c2c_kv_rows as rows


@settings(max_examples=200, deadline=None)
@given(
    block_size=st.sampled_from([16, 32, 64, 128]),
    n_blocks=st.integers(1, 6),
    data=st.data(),
)
def test_slot_mapping_addresses_each_position_in_its_own_block(block_size, n_blocks, data):
    block_ids = data.draw(st.lists(st.integers(0, 1000), min_size=n_blocks, max_size=n_blocks, unique=True))
    end = data.draw(st.integers(0, n_blocks * block_size))
    start = data.draw(st.integers(0, end))
    slots = rows.slot_mapping(block_ids, block_size, start, end)
    assert slots.tolist() == [block_ids[p // block_size] * block_size + p % block_size for p in range(start, end)]


def test_slot_mapping_refuses_positions_beyond_the_blocks():
    with pytest.raises(ValueError, match="cannot hold"):
        rows.slot_mapping([3, 4], 32, 0, 65)


@given(total=st.sampled_from([1, 2, 4, 8, 16]), tp=st.sampled_from([1, 2, 4, 8]))
def test_tensor_parallel_ranks_hold_vllms_kv_heads(total, tp):
    shards = [rows.local_kv_heads(total, tp, r) for r in range(tp)]
    if total >= tp:  # contiguous, disjoint shards covering every head once
        assert [h for s in shards for h in s] == list(range(total))
    else:  # one replicated head per rank, each head on tp // total ranks
        assert all(len(s) == 1 for s in shards)
        assert [s[0] for s in shards] == [r // (tp // total) for r in range(tp)]


def test_kv_heads_that_do_not_split_are_refused():
    with pytest.raises(ValueError, match="do not split"):
        rows.local_kv_heads(6, 4, 0)


def test_attention_layers_sort_by_decoder_layer():
    names = [f"model.layers.{i}.self_attn.attn" for i in (10, 2, 0, 1)]
    assert rows.attention_layer_order(names) == [f"model.layers.{i}.self_attn.attn" for i in (0, 1, 2, 10)]
    assert rows.attention_layer_order(["language_model.model.layers.0.attn"]) == ["language_model.model.layers.0.attn"]


@pytest.mark.parametrize(
    "names, error",
    [
        (["model.embed_tokens"], "cannot tell the decoder layer"),
        (["model.layers.0.self_attn.attn", "model.layers.0.cross_attn.attn"], "several KV caches"),
    ],
)
def test_attention_layer_order_refuses(names, error):
    with pytest.raises(ValueError, match=error):
        rows.attention_layer_order(names)


GOOD = {"version": 1, "path": "/dev/shm/x.kv", "tokens": 9, "layers": 2, "kv_heads": 1, "head_dim": 32,
        "dtype": "float32"}  # fmt: skip


@pytest.mark.parametrize(
    "change, error",
    [
        ({"version": 2}, "format version"),
        ({"path": None}, "lacks 'path'"),
        ({"tokens": 10}, "prompt minus its last token"),
        ({"tokens": "9"}, "prompt minus its last token"),
        ({"dtype": "float128"}, "unknown dtype"),
        ({"dtype": "Tensor"}, "unknown dtype"),
    ],
)
def test_bad_hand_over_descriptions_are_named(change, error):
    params = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    assert error in (rows.check_params(params, 10) or "")


def test_a_good_description_passes():
    assert rows.check_params(GOOD, 10) is None


def test_transfer_params_only_reads_c2c_requests():
    class Req:
        kv_transfer_params = None

    r = Req()
    assert rows.transfer_params(r) is None
    r.kv_transfer_params = {"do_remote_prefill": True}
    assert rows.transfer_params(r) is None
    r.kv_transfer_params = {"c2c": GOOD}
    assert rows.transfer_params(r) == GOOD


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_written_rows_read_back_bit_exact(tmp_path, dtype):
    store = HandoverStore(str(tmp_path))
    data = torch.randn(3, 2, 7, 2, 32).to(dtype)
    hand = store.write(data)
    assert hand.params == rows.describe(hand.path, tuple(data.shape), dtype)
    assert rows.check_params(hand.params, 8) is None
    back = rows.read_rows(hand.params)
    assert back.dtype == dtype and torch.equal(back, data)
    assert hand.nbytes == data.numel() * data.element_size()
    store.release(hand.path)
    assert not os.path.exists(hand.path) and store.live == 0


def test_a_truncated_file_is_refused(tmp_path):
    store = HandoverStore(str(tmp_path))
    hand = store.write(torch.zeros(2, 2, 4, 1, 32))
    with open(hand.path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="expected"):
        rows.read_rows(hand.params)


def test_store_cleans_up_everything_it_owns(tmp_path):
    store = HandoverStore(str(tmp_path))
    hands = [store.write(torch.zeros(1, 2, 3, 1, 32)) for _ in range(3)]
    store.release(hands[0].path)
    store.release(hands[0].path)  # idempotent
    assert store.live == 2
    store.close()
    assert os.listdir(tmp_path) == []


def test_store_never_leaves_a_half_written_file(tmp_path):
    store = HandoverStore(str(tmp_path))
    with pytest.raises(ValueError, match=r"\[L, 2, P, H, D\]"):
        store.write(torch.zeros(2, 3, 4, 1, 32))

    def fail(dst: torch.Tensor) -> None:
        dst[0].fill_(1.0)
        raise RuntimeError("device lost")

    with pytest.raises(RuntimeError, match="device lost"):
        store.write_with((2, 2, 4, 1, 32), torch.float32, fail)
    assert os.listdir(tmp_path) == [] and store.live == 0


def test_store_refuses_a_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        HandoverStore(str(tmp_path / "missing"))


def test_reading_a_deleted_hand_over_fails_and_never_recreates_it(tmp_path):
    """A cancelled request's file may be gone when vLLM gets to it: an error, and no file left behind."""
    store = HandoverStore(str(tmp_path))
    hand = store.write(torch.ones(1, 2, 3, 1, 32))
    store.release(hand.path)
    with pytest.raises(FileNotFoundError):
        rows.read_rows(hand.params)
    assert os.listdir(tmp_path) == []
