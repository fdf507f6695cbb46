"""Shared pieces of the training tests: local tokenizers, tiny pairs, chat rows, and a runnable script.

As a script (used by the SIGKILL-resume and torchrun tests) it trains a tiny pair and writes the final
fuser weights of every process to ``<out>/weights_rank<r>.safetensors``::

    python train_support.py --out DIR [--steps 6] [--batch-size 2] [--kill-at N] [--resume]
    torchrun --nproc_per_node 2 train_support.py --out DIR --batch-size 1 [--also-sharded]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

QWEN25_LIKE_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
"""Plain ChatML without thinking (Qwen2.5). Not ``chat_template="qwen25"`` of :mod:`c2c.testing.chat_styles`,
which also writes Qwen2.5's default system prompt into every conversation without a system turn."""


@functools.cache
def tokenizer(kind: str) -> Any:
    """``qwen3`` / ``qwen25`` (prefix-safe ChatML), ``chatml`` (breaks the prefix with thinking off),
    ``llama3`` (another vocabulary and template), ``plain`` (no chat template)."""
    from c2c.testing.tokenizers import build_tokenizer, default_special_tokens

    if kind == "qwen3":
        # Qwen3's convention: the final assistant turn carries an empty think block, so the instruction rendered
        # with enable_thinking=False is a prefix of the rendered conversation.
        return build_tokenizer(None, 400, chat_template="qwen3")
    if kind == "qwen25":
        return build_tokenizer(
            None, 400, chat_template=QWEN25_LIKE_TEMPLATE, special_tokens=default_special_tokens("chatml")
        )
    if kind == "chatml":
        return build_tokenizer(None, 400, chat_template="chatml")
    if kind == "llama3":
        return build_tokenizer(None, 360, chat_template="llama3")
    if kind == "plain":
        return build_tokenizer(None, 380, chat_template=None)
    raise ValueError(kind)


def make_pair(
    receiver_tok: str = "qwen3",
    sharer_tok: str = "llama3",
    *,
    receiver_family: str = "qwen3",
    sharer_family: str = "llama",
    seed: int = 0,
    **fuser_overrides: Any,
) -> Any:
    """A tiny C2CModel (random 2-layer LLMs, small fp32 fuser without dropout unless overridden)."""
    from c2c import C2CModel, FuserConfig
    from c2c.testing.models import tiny_model

    rt, st = tokenizer(receiver_tok), tokenizer(sharer_tok)
    receiver = tiny_model(receiver_family, vocab_size=len(rt), seed=seed)
    sharer = tiny_model(sharer_family, vocab_size=len(st), seed=seed + 1)
    fuser = FuserConfig(**{"hidden_size": 32, "intermediate_size": 32, "dropout": 0.0, **fuser_overrides})
    return C2CModel.from_models(
        receiver, sharer, fuser_config=fuser, receiver_tokenizer=rt, sharer_tokenizer=st, seed=seed
    )


def tiny_recurrent_model(kind: str, vocab_size: int, *, seed: int = 0) -> Any:
    """A tiny random model whose cache holds recurrent state: ``jamba`` (attention + Mamba layers) or
    ``recurrent_gemma`` (recurrent + local-attention blocks), built from transformers' own configs."""
    from transformers import AutoModelForCausalLM, JambaConfig, RecurrentGemmaConfig

    common = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "initializer_range": 0.2,
    }
    if kind == "jamba":
        config = JambaConfig(
            **common,
            num_hidden_layers=4,
            num_key_value_heads=2,
            attn_layer_period=2,
            attn_layer_offset=1,
            expert_layer_period=2,
            expert_layer_offset=1,
            num_experts=2,
            num_experts_per_tok=1,
            mamba_d_state=8,
            mamba_d_conv=4,
            mamba_expand=2,
            mamba_dt_rank=8,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    elif kind == "recurrent_gemma":
        config = RecurrentGemmaConfig(
            **common,
            num_hidden_layers=3,
            num_key_value_heads=1,
            head_dim=16,
            lru_width=64,
            attention_window_size=16,
            conv1d_width=4,
            block_types=["recurrent", "recurrent", "attention"],
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    else:
        raise ValueError(kind)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


_NAMES = ["Ada", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal", "Ivy", "Jo", "Kai", "Lu"]
_THINGS = ["cat", "tree", "house", "river", "bird", "stone", "cloud", "boat"]


def chat_rows(n: int, layout: str = "messages", *, system: bool = False) -> list[dict[str, Any]]:
    """``n`` short, distinct conversations in the given layout."""
    rows = []
    for i in range(n):
        q = f"where is the {_THINGS[i % len(_THINGS)]} of {_NAMES[i % len(_NAMES)]} number {i}?"
        a = f"the {_THINGS[(i * 3) % len(_THINGS)]} is near the {_THINGS[(i + 1) % len(_THINGS)]}."
        if layout == "messages":
            msgs = ([{"role": "system", "content": "answer briefly"}] if system else []) + [
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ]
            rows.append({"messages": msgs})
        elif layout == "conversations":
            conv = ([{"from": "system", "value": "answer briefly"}] if system else []) + [
                {"from": "human", "value": q},
                {"from": "gpt", "value": a},
            ]
            rows.append({"conversations": conv})
        elif layout == "prompt_response":
            rows.append({"prompt": q, "response": a})
        else:
            raise ValueError(layout)
    return rows


def fuser_state(model: Any) -> dict[str, torch.Tensor]:
    return {f"{k}.{n}": t.detach().cpu().clone() for k, f in enumerate(model.fusers) for n, t in f.state_dict().items()}


def script_config(
    out: str,
    *,
    steps: int,
    batch_size: int,
    accum: int = 1,
    save_steps: int = 2,
    resume: bool = False,
    shard_llms: bool = False,
) -> Any:
    from c2c.train import TrainConfig

    return TrainConfig(
        output_dir=out,
        max_steps=steps,
        batch_size=batch_size,
        gradient_accumulation_steps=accum,
        save_steps=save_steps,
        save_total_limit=2,
        logging_steps=1,
        learning_rate=3e-3,
        warmup_ratio=0.2,
        seed=7,
        resume=resume,
        progress=False,
        shard_llms=shard_llms,
    )


def run_training(
    out: str,
    *,
    steps: int = 6,
    batch_size: int = 2,
    accum: int = 1,
    rows: int = 16,
    variant: str = "full",
    dropout: float = 0.0,
    resume: bool = False,
    kill_at: int = 0,
    shard_llms: bool = False,
) -> Any:
    """Train a tiny pair into ``<out>/run`` and write this process's final fuser weights to
    ``<out>/weights_rank<r>.safetensors`` (what the script does; tests also call it in-process)."""
    from safetensors.torch import save_file

    from c2c.train import train

    model = make_pair(variant=variant, dropout=dropout)
    callbacks = []
    if kill_at:

        def kill(info: Any) -> None:
            if info.step == kill_at:
                os.kill(os.getpid(), 9)  # SIGKILL: no cleanup, no flush, like an OOM kill

        callbacks.append(kill)
    cfg = script_config(
        os.path.join(out, "run"), steps=steps, batch_size=batch_size, accum=accum, resume=resume, shard_llms=shard_llms
    )
    result = train(model, chat_rows(rows), cfg, callbacks=callbacks)
    rank = int(os.environ.get("RANK", "0"))
    save_file(fuser_state(result.model), os.path.join(out, f"weights_rank{rank}.safetensors"))
    layer_weight = next(result.model.receiver.model.layers[0].parameters())
    done = {
        "global_step": result.global_step,
        "resumed_from": str(result.resumed_from or ""),
        "loss": result.train_loss,
        "llm_layers_sharded": type(layer_weight).__name__ == "DTensor",
    }
    Path(out, f"done_rank{rank}").write_text(json.dumps(done))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--kill-at", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--variant", default="full")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--also-sharded", action="store_true", help="then train again with shard_llms into OUT/sharded")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    kw = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "accum": args.accum,
        "rows": args.rows,
        "variant": args.variant,
        "dropout": args.dropout,
    }
    run_training(args.out, resume=args.resume, kill_at=args.kill_at, **kw)
    if args.also_sharded:
        run_training(os.path.join(args.out, "sharded"), shard_llms=True, **kw)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
