"""C2C's KV connector for vLLM: loads externally computed (fused) receiver rows into vLLM's paged KV cache.

This module runs inside vLLM's processes (its scheduler and every worker), in vLLM's own Python environment,
and therefore imports only the standard library, ``torch`` and ``vllm``: never the rest of ``c2c``, whose
``transformers`` requirement differs from vLLM's. vLLM loads it from its kv-transfer config::

    --kv-transfer-config '{"kv_connector": "C2CConnector", "kv_connector_module_path": "c2c_kv_connector",
                           "kv_role": "kv_consumer"}'

with this file's folder on ``PYTHONPATH``.

Contract (one request): the client sends the prompt as token ids and, in ``kv_transfer_params["c2c"]``, the
description of a file holding the fused rows of prompt positions ``0..P-1`` (``P`` = prompt length - 1); the
format and its pure helpers live in ``c2c_kv_rows.py`` beside this file (shared with c2c, which writes it).
The connector reports those ``P`` tokens as an external prefix hit, so vLLM computes only the last prompt
token, on the loaded rows, and then decodes. The client owns the file: it creates it before the request and
deletes it when the request has ended.

Rows are written through the attention backend's own ``impl.do_kv_cache_update`` (the op vLLM uses for
rows it computes itself), never by indexing the cache tensor: the in-block layout is backend-specific
(the CPU backend stores K transposed within a block).

Failures never fall back to computing the prompt without the loaded rows (that would silently answer
without C2C): a missing or malformed file, or a prefix cache that could mix these rows with other
requests' rows, makes the request fail (``kv_load_failure_policy="fail"``, which this connector requires).
"""

from __future__ import annotations

import logging
import os
import time
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

from c2c_kv_rows import (  # this folder is on vLLM's PYTHONPATH
    attention_layer_order,
    check_params,
    local_kv_heads,
    read_rows,
    slot_mapping,
    transfer_params,
)

log = logging.getLogger("vllm.c2c_connector")


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
        # One log line per load (rows, milliseconds): the benchmark's measure of the hand-over's vLLM side.
        self._log_loads = os.environ.get("C2C_VLLM_LOG_LOADS") == "1"
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
                t0 = time.perf_counter()
                self._load(plan, forward_context)
                if self._log_loads:
                    if torch.cuda.is_available():  # the copies are asynchronous there
                        torch.cuda.synchronize()
                    ms = (time.perf_counter() - t0) * 1e3
                    log.info("C2C load: request %s rows %d ms %.3f", plan.req_id, plan.end - plan.start, ms)
            except Exception as exc:  # the request fails (policy "fail"); the engine keeps serving
                log.error("C2C: request %s: fused rows not loaded: %s", plan.req_id, exc, exc_info=plan.error is None)
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
        rows = read_rows(c2c)  # mapped, not read
        heads = self._local_heads()
        # Contiguous heads (always, but with replicated heads) are a view: no copy until the cache write.
        contiguous = heads == list(range(heads[0], heads[-1] + 1))
        picked: slice | list[int] = slice(heads[0], heads[-1] + 1) if contiguous else heads
        layers = forward_context.no_compile_layers
        slots: torch.Tensor | None = None
        for i, name in enumerate(self._layer_names):
            kv_cache = self._kv_caches[name]
            layer = layers[name]
            device = kv_cache.device
            if slots is None:
                slots = slot_mapping(plan.block_ids, self._block_size, plan.start, plan.end).to(device)
            key = _as_input(rows[i, 0, plan.start : plan.end, picked], device, self._dtype)  # [N, H_local, D]
            value = _as_input(rows[i, 1, plan.start : plan.end, picked], device, self._dtype)
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


def _as_input(rows: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Rows as the attention op takes them: on its device, in the model's dtype, contiguous (copies only
    what differs)."""
    if rows.device != device or rows.dtype != dtype:
        rows = rows.to(device=device, dtype=dtype)
    return rows.contiguous()
