"""Small Hugging Face helpers with one rule each, shared by every part of c2c.

Chat rendering, end-of-sequence and padding ids, position ids of left-padded rows, left padding, loading
models and tokenizers with one error style, and wall-clock timing that waits for the accelerator. Before
this module existed each of these had two or three copies with different rules (a chat renderer that
raised and one that silently fell back to a made-up template; eos ids from the first source found in one
place and the union in another); the rest of the package imports them from here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal, overload

import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "Message",
    "ModelLoadError",
    "StageTimer",
    "chat_text",
    "check_messages",
    "cut_at_eos",
    "encode_text",
    "eos_token_ids",
    "has_chat_template",
    "left_pad",
    "load_causal_lm",
    "load_tokenizer",
    "model_device",
    "name_of",
    "pad_token_id",
    "position_ids_from_mask",
    "render_chat",
    "synchronize",
]

Message = dict[str, Any]


class ModelLoadError(OSError):
    """A model or tokenizer could not be loaded; the message names the role, the id or path and the fix."""


# ---------------------------------------------------------------------- prompts


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def check_messages(messages: Sequence[Any]) -> None:
    """Raise a ValueError unless ``messages`` is a non-empty list of ``{"role", "content"}`` dicts."""
    if len(messages) == 0:
        raise ValueError("empty conversation: give at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r:.80}")


def chat_text(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    enable_thinking: bool = False,
    role: str = "",
) -> str:
    """The chat-template text of ``messages`` (with the generation prompt by default).

    A tokenizer without a chat template is an error, never a silent fallback to an invented rendering: a
    fuser only works on prompts laid out the way it was trained.
    """
    if not has_chat_template(tokenizer):
        who = f"the {role} tokenizer" if role else "this tokenizer"
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"{who} ({name!r}) has no chat template, so chat messages cannot be rendered; pass plain text "
            "(a string: the prompt_format='text' route) or set tokenizer.chat_template"
        )
    check_messages(messages)
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking
    )
    return str(text)


def render_chat(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], *, enable_thinking: bool = False, role: str = ""
) -> list[int]:
    """Token ids of ``messages`` in the tokenizer's chat template with the generation prompt (the template
    itself holds any BOS, so no special tokens are added)."""
    return encode_text(
        tokenizer, chat_text(tokenizer, messages, enable_thinking=enable_thinking, role=role), add_special_tokens=False
    )


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str, *, add_special_tokens: bool = True) -> list[int]:
    """Token ids of plain ``text`` (BOS and whatever the tokenizer adds when ``add_special_tokens``)."""
    return [int(i) for i in tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]]


# ---------------------------------------------------------------------- special ids


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, set)):
        return [int(v) for v in value if v is not None]
    return [int(value)]


def eos_token_ids(model: Any, tokenizer: Any | None) -> list[int]:
    """Every end-of-sequence id the model or its tokenizer declares (generation config, tokenizer and
    model config, in that order, without repeats). A chat model often ends turns with a token that only
    one of them names, so generation stops at any of them."""
    out: list[int] = []
    for src in (getattr(model, "generation_config", None), tokenizer, getattr(model, "config", None)):
        for tid in _ids(getattr(src, "eos_token_id", None) if src is not None else None):
            if tid not in out:
                out.append(tid)
    return out


def pad_token_id(model: Any, tokenizer: Any | None) -> int:
    """Padding id: the tokenizer's pad, else its eos, else the generation config's, else the model config's.
    Padding columns are masked, so any real id will do; 0 when nothing declares one."""
    for src in (tokenizer, getattr(model, "generation_config", None), getattr(model, "config", None)):
        for name in ("pad_token_id", "eos_token_id"):
            ids = _ids(getattr(src, name, None) if src is not None else None)
            if ids:
                return ids[0]
    return 0


# ---------------------------------------------------------------------- tensors


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids of left-padded rows: ``[B, T]`` mask -> ``[B, T]`` ids (padding gets 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def left_pad(
    seqs: Sequence[Sequence[int]], pad: int, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask``, both ``[B, T]``."""
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("empty prompt: every prompt needs at least one token")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def cut_at_eos(rows: Tensor | Sequence[Sequence[int]], eos: Sequence[int]) -> list[list[int]]:
    """Each row up to (excluding) its first end-of-sequence id; what follows it is padding."""
    eos_set = {int(e) for e in eos}
    out = []
    for row in rows.tolist() if isinstance(rows, Tensor) else rows:
        cut = next((i for i, t in enumerate(row) if t in eos_set), len(row))
        out.append([int(t) for t in row[:cut]])
    return out


def model_device(model: torch.nn.Module) -> torch.device:
    """Device of a model's input embeddings (where its inputs must go)."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if isinstance(emb, torch.nn.Module):
        weight = getattr(emb, "weight", None)
        if isinstance(weight, Tensor):
            return weight.device
    return next(model.parameters()).device


def name_of(model: Any) -> str:
    """The id or path a model was loaded from, else its class name."""
    path = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(path) if path else type(model).__name__


# ---------------------------------------------------------------------- loading


def load_causal_lm(
    name_or_path: str | os.PathLike[str],
    *,
    role: str,
    dtype: torch.dtype | str | None = None,
    device_map: Any = None,
    revision: str | None = None,
) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` with one error style for every entry point.

    Raises:
        ModelLoadError: naming the role, the id or path, the cause and what to check.
    """
    kw: dict[str, Any] = {}
    if revision:
        kw["revision"] = revision
    if dtype is not None:
        kw["dtype"] = dtype
    if device_map is not None:
        kw["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kw)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(
            f"could not load the {role} model {str(name_or_path)!r}: {exc}. Check the id or path (a local "
            "folder written by save_pretrained, or a hub id reachable from this machine)"
        ) from exc
    model.eval()
    return model


@overload
def load_tokenizer(
    name_or_path: str | os.PathLike[str] | None, *, role: str, required: Literal[True] = ...
) -> PreTrainedTokenizerBase: ...


@overload
def load_tokenizer(
    name_or_path: str | os.PathLike[str] | None, *, role: str, required: bool
) -> PreTrainedTokenizerBase | None: ...


def load_tokenizer(
    name_or_path: str | os.PathLike[str] | None, *, role: str, required: bool = True
) -> PreTrainedTokenizerBase | None:
    """``AutoTokenizer.from_pretrained``; with ``required=False`` a folder without tokenizer gives None
    (token ids still work), with ``required=True`` it is a :class:`ModelLoadError`."""
    if not name_or_path:
        if required:
            raise ModelLoadError(f"no {role} tokenizer: pass {role}_tokenizer= or give the {role} as an id or path")
        return None
    try:
        return AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError, KeyError) as exc:
        if not required:
            return None
        raise ModelLoadError(
            f"could not load the {role} tokenizer {str(name_or_path)!r}: {exc}. Pass {role}_tokenizer= or a "
            "folder that holds tokenizer files"
        ) from exc


# ---------------------------------------------------------------------- timing


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued accelerator work (a no-op on CPU), so wall-clock time is charged to the right stage."""
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev is None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class StageTimer:
    """Accumulates seconds per named stage: ``with timer.stage("decode"): ...``.

    The device is synchronised at every stage boundary, so a stage is charged with its own kernels and not
    with the ones it happened to wait for.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def add(self, timings: Mapping[str, float]) -> None:
        """Add stage seconds measured elsewhere."""
        for k, v in timings.items():
            self.seconds[k] = self.seconds.get(k, 0.0) + float(v)
