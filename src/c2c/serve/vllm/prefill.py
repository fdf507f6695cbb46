"""The fusion side of the vLLM engine: fused receiver rows of each prompt minus its last token.

C2C's prefill (receiver prefill, sharer prefill, fusion) runs in c2c's own process on the HF models; what
vLLM needs from it is, per request, the receiver's fused keys and values of prompt positions ``0..P-1``
(``P`` = prompt length - 1) in every attention layer. :func:`fused_prefixes` is the one place that calls
c2c's fusion; everything vLLM-specific lives in :mod:`c2c.serve.vllm.handover` and the connector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from c2c.batch import C2CBatch
from c2c.cache import ModelSpec, layer_rows


@dataclass
class FusedPrefix:
    """One request's hand-over: ``prompt_ids`` (the whole prompt, ``P + 1`` ids) and ``rows``
    ``[L, 2, P, H_kv, D]`` (keys then values of every layer, positions ``0..P-1``, keys after RoPE)."""

    prompt_ids: list[int]
    rows: Tensor


def check_receiver(model: Any) -> None:
    """Refuse what the vLLM engine cannot serve faithfully, with the reason and the way out."""
    spec: ModelSpec = model.receiver_spec
    if spec.sliding_layers or len(spec.kv_layers) != spec.num_layers:
        raise ValueError(
            f"the receiver ({spec.model_type}) has sliding-window or linear-attention layers; the vLLM engine "
            "hands over full-attention rows only. Serve this pair with --engine builtin"
        )
    if getattr(model.config, "include_response", False):
        raise ValueError(
            "this fuser fuses generated tokens too (include_response): the sharer must run inside every decoding "
            "step, which vLLM's decoder cannot do. Serve it with --engine builtin"
        )


@torch.no_grad()
def fused_prefixes(model: Any, batch: C2CBatch) -> tuple[list[FusedPrefix], dict[str, float]]:
    """Run C2C's prefill and fusion on ``batch`` and cut each row's fused prefix out of the shared cache.

    ``batch`` is left-padded: row ``b``'s prefix of ``p_b`` real tokens sits in columns ``[P - p_b, P)``.
    Returns one :class:`FusedPrefix` per row and the stage timings (seconds, for the whole batch).
    """
    cache, _sharer_caches, timings = model.prefill_and_fuse(batch)
    p = batch.prefix_len
    mask = batch.attention_mask
    n_layers = model.receiver_spec.num_layers
    per_layer = [layer_rows(cache, i) for i in range(n_layers)] if p > 0 else []
    out = []
    for b in range(batch.batch_size):
        real = mask[b].bool()
        prompt = batch.input_ids[b][real].tolist()
        p_b = int(real[:p].sum())
        if p_b != len(prompt) - 1:
            raise ValueError(f"row {b}: {p_b} prefix tokens for a prompt of {len(prompt)}; expected prompt - 1")
        if p_b == 0:
            spec = model.receiver_spec
            rows = torch.empty((n_layers, 2, 0, spec.num_kv_heads, spec.head_dim))
        else:
            # [B, H, P, D] per layer -> [L, 2, p_b, H, D] (token-major, as the attention op takes rows)
            keys = torch.stack([k[b, :, p - p_b : p] for k, _ in per_layer])
            values = torch.stack([v[b, :, p - p_b : p] for _, v in per_layer])
            rows = torch.stack([keys, values], dim=1).transpose(2, 3).contiguous()
        out.append(FusedPrefix(prompt, rows))
    return out, {k: float(v) for k, v in timings.items()}
