"""C2C's KV connector for vLLM: loads externally computed (fused) receiver rows into vLLM's paged KV cache.

This module runs inside vLLM's processes (its scheduler and every worker), in vLLM's own Python environment,
and therefore imports only the standard library, ``torch`` and ``vllm``: never the rest of ``c2c``, whose
``transformers`` requirement differs from vLLM's. vLLM loads it from its kv-transfer config::

    --kv-transfer-config '{"kv_connector": "C2CConnector", "kv_connector_module_path": "c2c_kv_connector",
                           "kv_role": "kv_consumer"}'

with this file's folder on ``PYTHONPATH``.

Contract (one request): the client sends the prompt as token ids and, in ``kv_transfer_params``::

    {"c2c": {"version": 1, "path": "/dev/shm/c2c-....kv", "tokens": P, "layers": L, "kv_heads": H,
             "head_dim": D, "dtype": "float32"}}

``path`` is a raw little-endian tensor ``[L, 2, P, H, D]`` (keys then values of every attention layer, in
layer order, for prompt positions ``0..P-1``; keys after RoPE, exactly what the model's attention would
have cached) and ``P`` is the prompt length minus one. The connector reports those ``P`` tokens as an
external prefix hit, so vLLM computes only the last prompt token, on the loaded rows, and then decodes.
The client owns the file: it creates it before the request and deletes it when the request has ended.

Rows are written through the attention backend's own ``impl.do_kv_cache_update`` (the op vLLM uses for
rows it computes itself), never by indexing the cache tensor: the in-block layout is backend-specific
(the CPU backend stores K transposed within a block).

Failures never fall back to computing the prompt without the loaded rows (that would silently answer
without C2C): a missing or malformed file, or a prefix cache that could mix these rows with other
requests' rows, makes the request fail (``kv_load_failure_policy="fail"``, which this connector requires).
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import AttentionMetadata
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

log = logging.getLogger("vllm.c2c_connector")

PARAMS_KEY = "c2c"
FORMAT_VERSION = 1
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


# -- helpers (pure; unit-tested without an engine) -------------------------------------------------------


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
    """Map the hand-over file as a ``[L, 2, P, H, D]`` tensor (no copy; the file is read-only to us)."""
    shape = [int(c2c["layers"]), 2, int(c2c["tokens"]), int(c2c["kv_heads"]), int(c2c["head_dim"])]
    dtype = getattr(torch, str(c2c["dtype"]))
    numel = math.prod(shape)
    path = str(c2c["path"])
    size = os.path.getsize(path)
    expected = numel * torch.empty((), dtype=dtype).element_size()
    if size != expected:
        raise ValueError(f"{path} has {size} bytes, expected {expected} for {shape} {dtype}")
    # Mapped, not read: a tensor-parallel rank touches only its own heads.
    return torch.from_file(path, shared=True, size=numel, dtype=dtype).view(shape)


# -- metadata ---------------------------------------------------------------------------------------------


@dataclass
class LoadPlan:
    """Rows ``[start, end)`` of one request go to its blocks. ``error``: fail the request instead."""

    req_id: str
    params: dict[str, Any]
    block_ids: list[int]
    start: int
    end: int
    error: str | None = None


@dataclass
class C2CConnectorMetadata(KVConnectorMetadata):
    loads: list[LoadPlan] = field(default_factory=list)


# -- the connector ----------------------------------------------------------------------------------------


class C2CConnector(KVConnectorBase_V1):
    """Loads C2C-fused prefix rows as an external prefix-cache hit (consumer only; saves nothing)."""

    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        policy = getattr(self._kv_transfer_config, "kv_load_failure_policy", "fail")
        if policy != "fail":
            raise ValueError(
                f"C2CConnector needs kv_load_failure_policy='fail' (got {policy!r}): recomputing a prompt whose "
                "fused rows failed to load would silently answer without C2C"
            )
        self._block_size = int(vllm_config.cache_config.block_size)
        self._prefix_caching = bool(vllm_config.cache_config.enable_prefix_caching)
        self._dtype: torch.dtype = vllm_config.model_config.dtype
        self._total_kv_heads = int(vllm_config.model_config.get_total_num_kv_heads())
        self._head_dim = int(vllm_config.model_config.get_head_size())
        # scheduler side
        self._pending: dict[str, LoadPlan] = {}
        # worker side
        self._kv_caches: dict[str, torch.Tensor] = {}
        self._layer_names: list[str] = []
        self._failed_blocks: set[int] = set()
        self._heads: list[int] | None = None
        if role == KVConnectorRole.WORKER:
            log.info("C2C connector (worker): block size %d, model dtype %s", self._block_size, self._dtype)
        else:
            log.info(
                "C2C connector (scheduler): block size %d, prefix caching %s",
                self._block_size,
                "on (fused requests must carry a cache_salt)" if self._prefix_caching else "off",
            )

    # ---------------------------------------------------------------- scheduler side

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int | None, bool]:
        c2c = transfer_params(request)
        if c2c is None:
            return 0, False
        # The rows cover the prompt minus its last token; whatever vLLM already holds (a local prefix hit of
        # the same salted request after a preemption) is not loaded again.
        end = int(request.num_prompt_tokens) - 1
        return max(end - num_computed_tokens, 0), False

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int) -> None:
        c2c = transfer_params(request)
        if c2c is None or num_external_tokens == 0:
            return
        end = int(request.num_prompt_tokens) - 1
        error = check_params(c2c, int(request.num_prompt_tokens))
        if error is None and self._prefix_caching and not getattr(request, "cache_salt", None):
            error = (
                "prefix caching is on and this fused request has no cache_salt: its rows would be shared with "
                "unfused requests of the same prompt; send a unique cache_salt with every fused request"
            )
        block_ids = list(blocks.get_block_ids()[0])
        self._pending[request.request_id] = LoadPlan(
            request.request_id, dict(c2c), block_ids, end - num_external_tokens, end, error
        )

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        meta = C2CConnectorMetadata(loads=list(self._pending.values()))
        self._pending.clear()
        return meta

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        self._pending.pop(request.request_id, None)
        return False, None

    # ---------------------------------------------------------------- worker side

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        self._kv_caches = dict(kv_caches)
        self._layer_names = attention_layer_order(list(kv_caches))

    def _local_heads(self) -> list[int]:
        if self._heads is None:
            from vllm.distributed.parallel_state import (
                get_tensor_model_parallel_rank,
                get_tensor_model_parallel_world_size,
            )

            self._heads = local_kv_heads(
                self._total_kv_heads, get_tensor_model_parallel_world_size(), get_tensor_model_parallel_rank()
            )
        return self._heads

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        meta = self._connector_metadata
        if not isinstance(meta, C2CConnectorMetadata):
            return
        for plan in meta.loads:
            try:
                if plan.error is not None:
                    raise ValueError(plan.error)
                self._load(plan, forward_context)
            except Exception as exc:  # the request fails (policy "fail"); the engine keeps serving
                log.error("C2C: request %s: fused rows not loaded: %s", plan.req_id, exc)
                first, last = plan.start // self._block_size, (max(plan.end, 1) - 1) // self._block_size
                self._failed_blocks.update(plan.block_ids[first : last + 1])

    def _load(self, plan: LoadPlan, forward_context: ForwardContext) -> None:
        c2c = plan.params
        if int(c2c["layers"]) != len(self._layer_names):
            raise ValueError(f"hand-over has {c2c['layers']} layers, this model has {len(self._layer_names)}")
        if int(c2c["kv_heads"]) != self._total_kv_heads or int(c2c["head_dim"]) != self._head_dim:
            raise ValueError(
                f"hand-over rows are {c2c['kv_heads']} heads x {c2c['head_dim']}, this model caches "
                f"{self._total_kv_heads} x {self._head_dim}: fused for another receiver?"
            )
        if plan.end <= plan.start:
            return
        rows = read_rows(c2c)
        heads = self._local_heads()
        layers = forward_context.no_compile_layers
        for i, name in enumerate(self._layer_names):
            kv_cache = self._kv_caches[name]
            layer = layers[name]
            device = kv_cache.device
            slots = slot_mapping(plan.block_ids, self._block_size, plan.start, plan.end).to(device)
            sel = rows[i, :, plan.start : plan.end][:, :, heads]  # [2, N, H_local, D]
            key = sel[0].to(device=device, dtype=self._dtype).contiguous()
            value = sel[1].to(device=device, dtype=self._dtype).contiguous()
            layer.impl.do_kv_cache_update(layer, key, value, kv_cache, slots)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # loads are synchronous, finished in start_load_kv

    def save_kv_layer(
        self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: AttentionMetadata, **kwargs: Any
    ) -> None:
        return  # a consumer: nothing is saved

    def wait_for_save(self) -> None:
        return

    def get_block_ids_with_load_errors(self) -> set[int]:
        failed, self._failed_blocks = self._failed_blocks, set()
        return failed
