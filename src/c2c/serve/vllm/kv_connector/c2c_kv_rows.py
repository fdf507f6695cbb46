"""The hand-over format between c2c and its vLLM connector, and the pure helpers of loading it.

Imports only the standard library and ``torch``, so that both sides can use it: c2c (as
``c2c.serve.vllm.kv_connector.c2c_kv_rows``) writes the rows, and the connector, inside vLLM's environment
(as the top-level module ``c2c_kv_rows``, this folder being on vLLM's ``PYTHONPATH``), reads them.

A hand-over is a raw little-endian tensor file ``[L, 2, P, H, D]`` (keys then values of every attention
layer, in layer order, prompt positions ``0..P-1``, keys after RoPE) described by a small dict that travels
in the request's ``kv_transfer_params["c2c"]``::

    {"version": 1, "path": "/dev/shm/c2c-....kv", "tokens": P, "layers": L, "kv_heads": H,
     "head_dim": D, "dtype": "float32"}
"""

from __future__ import annotations

import math
import mmap
import os
import re
from typing import Any

import torch

PARAMS_KEY = "c2c"
"""Key of the hand-over description in ``kv_transfer_params``."""
FORMAT_VERSION = 1
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def describe(path: str, rows_shape: tuple[int, ...], dtype: torch.dtype) -> dict[str, Any]:
    """The description of a hand-over file holding a tensor of ``rows_shape`` ``[L, 2, P, H, D]``."""
    layers, two, tokens, heads, dim = rows_shape
    if two != 2:
        raise ValueError(f"rows must be [L, 2, P, H, D], got {tuple(rows_shape)}")
    return {
        "version": FORMAT_VERSION,
        "path": path,
        "tokens": int(tokens),
        "layers": int(layers),
        "kv_heads": int(heads),
        "head_dim": int(dim),
        "dtype": str(dtype).removeprefix("torch."),
    }


def transfer_params(request: Any) -> dict[str, Any] | None:
    """The request's C2C hand-over description, or None for an ordinary request."""
    params = getattr(request, "kv_transfer_params", None)
    if not isinstance(params, dict):
        return None
    c2c = params.get(PARAMS_KEY)
    return c2c if isinstance(c2c, dict) else None


def check_params(c2c: dict[str, Any], num_prompt_tokens: int) -> str | None:
    """Why this hand-over cannot be loaded for a prompt of ``num_prompt_tokens`` tokens (None: it can)."""
    if c2c.get("version") != FORMAT_VERSION:
        return f"hand-over format version {c2c.get('version')!r}, this connector reads {FORMAT_VERSION}"
    for key in ("path", "tokens", "layers", "kv_heads", "head_dim", "dtype"):
        if key not in c2c:
            return f"hand-over lacks {key!r}"
    if not isinstance(c2c["tokens"], int) or c2c["tokens"] != num_prompt_tokens - 1:
        return (
            f"hand-over holds {c2c['tokens']!r} rows for a prompt of {num_prompt_tokens} tokens; "
            "C2C hands over exactly the prompt minus its last token"
        )
    if not isinstance(getattr(torch, str(c2c["dtype"]), None), torch.dtype):
        return f"unknown dtype {c2c['dtype']!r}"
    return None


def local_kv_heads(total: int, tp_size: int, tp_rank: int) -> list[int]:
    """KV heads held by tensor-parallel rank ``tp_rank`` (vLLM's QKV partitioning: contiguous shards, or
    one replicated head per rank when there are fewer KV heads than ranks)."""
    if total >= tp_size:
        if total % tp_size:
            raise ValueError(f"{total} KV heads do not split over {tp_size} ranks")
        per = total // tp_size
        return list(range(tp_rank * per, (tp_rank + 1) * per))
    replicas = tp_size // total
    return [tp_rank // replicas]


def slot_mapping(block_ids: list[int], block_size: int, start: int, end: int) -> torch.Tensor:
    """Flat cache slots of token positions ``[start, end)`` for a request holding ``block_ids`` (in order).

    ``block_id * block_size + offset`` addresses the same slot whatever kernel block size the backend
    splits a block into, so one formula serves every backend.
    """
    pos = torch.arange(start, end, dtype=torch.long)
    blocks = torch.tensor(block_ids, dtype=torch.long)
    if end > 0 and (end - 1) // block_size >= len(block_ids):
        raise ValueError(f"{len(block_ids)} blocks of {block_size} cannot hold positions up to {end - 1}")
    return blocks[pos // block_size] * block_size + pos % block_size


def attention_layer_order(names: list[str]) -> list[str]:
    """Attention layer names sorted by their decoder layer index (``...layers.<i>...``)."""
    indexed = []
    for name in names:
        m = _LAYER_INDEX.search(name)
        if m is None:
            raise ValueError(f"cannot tell the decoder layer of KV cache {name!r}")
        indexed.append((int(m.group(1)), name))
    indexed.sort()
    if len({i for i, _ in indexed}) != len(indexed):
        raise ValueError(f"several KV caches per decoder layer ({names}); C2C needs one per layer")
    return [name for _, name in indexed]


def read_rows(c2c: dict[str, Any]) -> torch.Tensor:
    """Map the hand-over file as a ``[L, 2, P, H, D]`` tensor (no copy).

    The file is opened read-only and mapped copy-on-write: a file the client has already deleted (its request
    was cancelled) is an error here, never re-created (``torch.from_file(shared=True)`` would create it)."""
    shape = [int(c2c["layers"]), 2, int(c2c["tokens"]), int(c2c["kv_heads"]), int(c2c["head_dim"])]
    dtype = getattr(torch, str(c2c["dtype"]))
    expected = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    path = str(c2c["path"])
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size != expected or size == 0:
            raise ValueError(f"{path} has {size} bytes, expected {expected} for {shape} {dtype}")
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    # frombuffer keeps the mapping alive as long as the tensor; the mapping outlives the closed descriptor.
    return torch.frombuffer(mapped, dtype=dtype).view(shape)
