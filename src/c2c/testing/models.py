"""Tiny random models of real transformers architectures, built in-process.

No weights are ever downloaded: every test, benchmark and the demo build their models from configs of the
real families, so the code paths (attention variants, GQA, sliding windows, hybrid layers, chat
templates) are the ones a user hits with a checkpoint from the hub.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)

FAMILIES: tuple[str, ...] = ("qwen3", "qwen2", "llama", "gemma3", "qwen3_5", "phi3", "mistral")
"""Families whose tiny variants the test-suite exercises."""

QWEN3_0_6B_SHAPES: dict[str, Any] = dict(
    vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, tie_word_embeddings=True,
)
"""``Qwen3Config`` fields of the paper's receiver, Qwen3-0.6B (benchmarks build it with random weights)."""
QWEN2_5_0_5B_SHAPES: dict[str, Any] = dict(
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True,
)
"""``Qwen2Config`` fields of the paper's sharer, Qwen2.5-0.5B-Instruct."""


def tiny_config(
    family: str,
    *,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 16,
    intermediate_size: int | None = None,
    vocab_size: int = 512,
    max_position_embeddings: int = 512,
    **overrides: Any,
) -> PretrainedConfig:
    """Config of a tiny model of ``family`` (one of :data:`FAMILIES`).

    Families differ the way the real ones do: Qwen3 has q/k norms, Qwen2 has qkv biases, Gemma 3 mixes
    sliding-window and full attention layers (``sliding_window`` defaults to 8 here so short prompts
    overflow it), Qwen3.5 mixes linear-attention (no per-token KV) and full-attention layers.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    kw: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if family in ("qwen3", "qwen2", "llama", "mistral", "gemma3", "qwen3_5"):
        kw["head_dim"] = head_dim
    elif head_dim != hidden_size // num_heads:
        raise ValueError(f"{family} derives head_dim from hidden_size / num_heads; got head_dim={head_dim}")
    if family == "gemma3":
        kw.update(sliding_window=8, model_type="gemma3_text")
        kw["layer_types"] = [
            "sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(num_layers)
        ]
        kw["query_pre_attn_scalar"] = head_dim
    if family == "qwen3_5":
        # Linear-attention layers first, full attention last, as in the released hybrids.
        kw["layer_types"] = [
            "full_attention" if (i + 1) % 2 == 0 else "linear_attention" for i in range(num_layers)
        ]
        kw.update(
            linear_num_key_heads=2,
            linear_num_value_heads=2,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
            model_type="qwen3_5_text",
        )
    if family == "mistral":
        kw["sliding_window"] = None
    kw.update(overrides)
    model_type = kw.pop("model_type", family)
    return AutoConfig.for_model(model_type, **kw)


def tiny_model(
    family: str,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **config_kwargs: Any,
) -> PreTrainedModel:
    """A randomly initialised tiny causal LM of ``family`` in eval mode.

    Weights are drawn with ``initializer_range`` raised to 0.2 so that random models produce peaked,
    prompt-dependent logits (with the default 0.02 every token is equally likely and greedy decoding
    tests become vacuous).
    """
    config = tiny_config(family, **config_kwargs)
    if getattr(config, "initializer_range", None) is not None and "initializer_range" not in config_kwargs:
        config.initializer_range = 0.2
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()
