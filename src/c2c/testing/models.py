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
    vocab_size=151936,
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    tie_word_embeddings=True,
)
"""``Qwen3Config`` fields of the paper's receiver, Qwen3-0.6B (benchmarks build it with random weights)."""
QWEN2_5_0_5B_SHAPES: dict[str, Any] = dict(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    tie_word_embeddings=True,
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
        kw["layer_types"] = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(num_layers)]
        kw["query_pre_attn_scalar"] = head_dim
    if family == "qwen3_5":
        # Linear-attention layers first, full attention last, as in the released hybrids.
        kw["layer_types"] = ["full_attention" if (i + 1) % 2 == 0 else "linear_attention" for i in range(num_layers)]
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


_EXOTIC_BASE: dict[str, Any] = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
EXOTIC_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "falcon_multi_query": ("falcon", dict(_EXOTIC_BASE, multi_query=True, new_decoder_architecture=False)),
    "deepseek_v3": (
        "deepseek_v3",
        dict(
            _EXOTIC_BASE,
            num_key_value_heads=4,
            q_lora_rank=16,
            kv_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=8,
            n_routed_experts=4,
            num_experts_per_tok=2,
            first_k_dense_replace=1,
            moe_intermediate_size=32,
            n_group=1,
            topk_group=1,
        ),
    ),
    "llama4_text": (
        "llama4_text",
        dict(
            _EXOTIC_BASE,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size_mlp=128,
            num_local_experts=2,
        ),
    ),
    "falcon_h1": (
        "falcon_h1",
        dict(
            _EXOTIC_BASE,
            num_key_value_heads=2,
            head_dim=16,
            mamba_d_ssm=64,
            mamba_n_heads=4,
            mamba_d_head=16,
            mamba_d_state=8,
            mamba_chunk_size=16,
        ),
    ),
    "jamba": (
        "jamba",
        dict(
            _EXOTIC_BASE,
            num_key_value_heads=2,
            num_experts=2,
            attn_layer_period=2,
            attn_layer_offset=1,
            expert_layer_period=2,
            expert_layer_offset=1,
            mamba_d_state=8,
        ),
    ),
    "recurrent_gemma": (
        "recurrent_gemma",
        dict(
            _EXOTIC_BASE,
            num_hidden_layers=3,
            num_key_value_heads=1,
            head_dim=16,
            lru_width=64,
            attention_window_size=16,
        ),
    ),
    "mamba": ("mamba", dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, state_size=8)),
    "minimax": (
        "minimax",
        dict(
            _EXOTIC_BASE,
            num_key_value_heads=2,
            head_dim=16,
            num_local_experts=2,
            num_experts_per_tok=1,
        ),
    ),
}
"""Tiny configs of families whose caches differ from what their configs say (multi-query Falcon, MLA
DeepSeek-V3 with K and V of different widths), hybrid or chunked ones (Llama 4, Falcon-H1, Jamba,
RecurrentGemma) and ones c2c must refuse (Mamba: no attention cache; MiniMax: a cache class of its own)."""


def exotic_model(name: str, *, seed: int = 0) -> PreTrainedModel:
    """A random tiny model of one of :data:`EXOTIC_CONFIGS`, in eval mode."""
    model_type, kw = EXOTIC_CONFIGS[name]
    config = AutoConfig.for_model(model_type, **kw)
    if getattr(config, "initializer_range", None) is not None:
        config.initializer_range = 0.2
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()
