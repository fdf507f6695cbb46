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
class RequestRows:
    """One request's fused prefix: ``prompt_ids`` (the whole prompt, ``P + 1`` ids) and its rows, still in
    the batch's cache (``layers[l] = (keys, values)``, each ``[B, H_kv, T, D]``; this request is row ``row``,
    columns ``[start, start + P)``)."""

    prompt_ids: list[int]
    layers: list[tuple[Tensor, Tensor]]
    row: int
    start: int

    @property
    def length(self) -> int:
        """``P``: rows handed over (the prompt minus its last token)."""
        return len(self.prompt_ids) - 1

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """``[L, 2, P, H_kv, D]``, the hand-over's layout (token-major, as the attention op takes rows)."""
        keys = self.layers[0][0] if self.layers else None
        heads, dim = (keys.shape[1], keys.shape[3]) if keys is not None else (0, 0)
        return (len(self.layers), 2, self.length, heads, dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0][0].dtype

    def copy_into(self, dst: Tensor) -> None:
        """Write the rows into ``dst`` ``[L, 2, P, H_kv, D]`` (e.g. a mapped hand-over file): one copy per layer."""
        cols = slice(self.start, self.start + self.length)
        for i, (keys, values) in enumerate(self.layers):
            dst[i, 0].copy_(keys[self.row, :, cols].transpose(0, 1))
            dst[i, 1].copy_(values[self.row, :, cols].transpose(0, 1))

    def rows(self) -> Tensor:
        """The rows as a new CPU tensor ``[L, 2, P, H_kv, D]``."""
        out = torch.empty(self.shape, dtype=self.dtype)
        self.copy_into(out)
        return out


def check_receiver(model: Any) -> None:
    """Refuse what the vLLM engine cannot serve faithfully, with the reason and the way out."""
    spec: ModelSpec = model.receiver_spec
    if spec.value_head_dim not in (None, spec.head_dim):
        raise ValueError(
            f"the receiver ({spec.model_type}) caches keys and values of different widths (latent attention); "
            "the vLLM engine hands over standard attention rows only. Serve this pair with --engine builtin"
        )
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
def fused_prefixes(model: Any, batch: C2CBatch) -> tuple[list[RequestRows], dict[str, float]]:
    """Run C2C's prefill and fusion on ``batch`` and cut each row's fused prefix out of the shared cache.

    ``batch`` is left-padded: row ``b``'s prefix of ``p_b`` real tokens sits in columns ``[P - p_b, P)``.
    Returns one :class:`RequestRows` per row and the stage timings (seconds, for the whole batch).
    """
    fused = model.prefill_and_fuse(batch)  # c2c.fusion.FusedPrefix: .cache holds the fused rows of [0, P)
    cache, timings = fused.cache, fused.timings
    p = batch.prefix_len
    mask = batch.attention_mask
    per_layer = [layer_rows(cache, i) for i in range(model.receiver_spec.num_layers)] if p > 0 else []
    out = []
    for b in range(batch.batch_size):
        real = mask[b].bool()
        prompt = batch.input_ids[b][real].tolist()
        p_b = int(real[:p].sum())
        if p_b != len(prompt) - 1:
            raise ValueError(f"row {b}: {p_b} prefix tokens for a prompt of {len(prompt)}; expected prompt - 1")
        out.append(RequestRows(prompt, per_layer if p_b > 0 else [], b, p - p_b))
    return out, {k: float(v) for k, v in timings.items()}
