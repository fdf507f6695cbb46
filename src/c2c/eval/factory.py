"""Build answering modes by name (what ``c2c eval --modes ...`` does; usable from Python too)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from c2c.config import PromptFormat
from c2c.eval.modes import C2CMode, HFMode, Mode, ReceiverOnly, Routing, SharerOnly, SubjectRule, TextToText
from c2c.eval.oracle import CacheOracle, Exemplar
from c2c.eval.prompts import NOTE_CONTEXT_TEMPLATE, NOTE_TEMPLATE

__all__ = ["MODE_NAMES", "ModeOptions", "build_modes", "routing_table"]

MODE_NAMES: tuple[str, ...] = ("receiver", "sharer", "t2t", "routing", "c2c", "oracle", "few_shot")
"""receiver / sharer: one model alone; t2t: sharer note + receiver; routing: one model per query;
c2c: fused caches; oracle: exemplar-enriched cache of zero-shot length; few_shot: exemplars kept."""


@dataclass
class ModeOptions:
    """Settings of the modes that have any."""

    note_template: str = NOTE_TEMPLATE
    note_context_template: str = NOTE_CONTEXT_TEMPLATE
    note_max_new_tokens: int = 64
    routing: dict[str, int] | None = None  # subject -> 0 receiver / 1 sharer; None = perplexity rule
    oracle_model: str = "receiver"
    oracle_shots: int = 5
    exemplars: list[Exemplar] = field(default_factory=list)
    enable_thinking: bool = False
    # None: the fuser's recorded prompt_format when a C2C model is given (every mode prompted alike), else chat
    prompt_format: PromptFormat | None = None

    def __post_init__(self) -> None:
        if self.oracle_model not in ("receiver", "sharer"):
            raise ValueError(f"oracle_model must be 'receiver' or 'sharer', got {self.oracle_model!r}")
        if self.note_max_new_tokens < 1 or self.oracle_shots < 0:
            raise ValueError("note_max_new_tokens must be >= 1 and oracle_shots >= 0")


def routing_table(path: str | Path) -> dict[str, int]:
    """A subject routing table from JSON: ``{subject: "receiver" | "sharer" | 0 | 1}`` or a previous run
    document (the better of receiver / sharer per subject, see ``fit_subject_routing``)."""
    from c2c.eval.report import fit_subject_routing

    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(doc, dict) and "metrics" in doc:
        return fit_subject_routing(doc)
    names = {"receiver": 0, "sharer": 1, 0: 0, 1: 1}
    try:
        return {str(k): names[v] for k, v in doc.items()}
    except (AttributeError, KeyError) as exc:
        raise ValueError(
            f"{path}: a routing table maps subjects to 'receiver' or 'sharer' (or is a run JSON); got {exc}"
        ) from exc


def build_modes(
    names: Sequence[str],
    *,
    receiver: Any = None,
    receiver_tokenizer: Any = None,
    sharer: Any = None,
    sharer_tokenizer: Any = None,
    c2c_model: Any = None,
    options: ModeOptions | None = None,
) -> list[Mode]:
    """Modes named in ``names`` (see :data:`MODE_NAMES`) over the given models.

    With a ``c2c_model`` its receiver, sharer and tokenizers are used unless given explicitly.
    """
    opts = options or ModeOptions()
    if c2c_model is not None:
        receiver = receiver or c2c_model.receiver
        receiver_tokenizer = receiver_tokenizer or c2c_model.receiver_tokenizer
        sharer = sharer or c2c_model.sharers[0]
        sharer_tokenizer = sharer_tokenizer or c2c_model.sharer_tokenizers[0]
    unknown = [n for n in names if n not in MODE_NAMES]
    if unknown:
        raise ValueError(f"unknown modes {unknown}; choose from {', '.join(MODE_NAMES)}")

    def need(what: str, *objs: Any) -> None:
        if any(o is None for o in objs):
            hint = (
                "a C2C model (--fuser DIR; c2c_model= in Python)"
                if what == "c2c"
                else "its models and tokenizers (--receiver / --sharer, or --fuser which records both)"
            )
            raise ValueError(f"mode {what!r} needs {hint}")

    think = opts.enable_thinking
    fmt: PromptFormat = opts.prompt_format or (c2c_model.config.prompt_format if c2c_model is not None else "chat")
    if c2c_model is not None and fmt != c2c_model.config.prompt_format:
        raise ValueError(
            f"prompt_format {fmt!r} differs from the fuser's ({c2c_model.config.prompt_format!r}, how it was trained); "
            "leave prompt_format unset to use the fuser's"
        )
    modes: list[Mode] = []
    for name in names:
        if name == "receiver":
            need(name, receiver, receiver_tokenizer)
            modes.append(ReceiverOnly(receiver, receiver_tokenizer, enable_thinking=think, prompt_format=fmt))
        elif name == "sharer":
            need(name, sharer, sharer_tokenizer)
            modes.append(SharerOnly(sharer, sharer_tokenizer, enable_thinking=think, prompt_format=fmt))
        elif name == "t2t":
            need(name, receiver, receiver_tokenizer, sharer, sharer_tokenizer)
            modes.append(
                TextToText(
                    receiver,
                    receiver_tokenizer,
                    sharer,
                    sharer_tokenizer,
                    note_template=opts.note_template,
                    note_context_template=opts.note_context_template,
                    note_max_new_tokens=opts.note_max_new_tokens,
                    enable_thinking=think,
                    prompt_format=fmt,
                )
            )
        elif name == "routing":
            need(name, receiver, receiver_tokenizer, sharer, sharer_tokenizer)
            candidates: list[HFMode] = [
                ReceiverOnly(receiver, receiver_tokenizer, enable_thinking=think, prompt_format=fmt),
                SharerOnly(sharer, sharer_tokenizer, enable_thinking=think, prompt_format=fmt),
            ]
            rule = SubjectRule(opts.routing) if opts.routing is not None else None
            modes.append(Routing(candidates, rule))
        elif name == "c2c":
            need(name, c2c_model)
            modes.append(C2CMode(c2c_model, enable_thinking=think))
        else:  # oracle / few_shot
            use_receiver = opts.oracle_model == "receiver"
            model, tok = (receiver, receiver_tokenizer) if use_receiver else (sharer, sharer_tokenizer)
            need(name, model, tok)
            keep: Literal["question", "all"] = "question" if name == "oracle" else "all"
            modes.append(
                CacheOracle(
                    model,
                    tok,
                    opts.exemplars,
                    shots=opts.oracle_shots,
                    keep=keep,
                    name=name,
                    enable_thinking=think,
                    prompt_format=fmt,
                )
            )
    return modes
