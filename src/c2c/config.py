"""How fusion is applied (``C2CConfig``), independent of the fuser weights, and the one check that a
receiver/sharer pair is the one a fuser was built for."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

from c2c.cache import ModelSpec

__all__ = ["C2CConfig", "ChatRows", "MultiSharer", "PromptFormat", "TokenAlignment", "check_pair", "pair_differences"]

MultiSharer = Literal["parallel", "sequential"]
TokenAlignment = Literal["longest", "first", "offsets"]
PromptFormat = Literal["chat", "text"]
ChatRows = Literal["content", "reference"]


def _choice(name: str, value: Any, kind: Any) -> None:
    allowed = get_args(kind)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


@dataclass
class C2CConfig:
    """How fusion is applied (recorded in ``fuser_config.json``; every entry point obeys it).

    Attributes:
        multi_sharer: "parallel" sums corrections each computed from the clean receiver cache;
            "sequential" lets each fuser read the rows the previous one wrote.
        alignment_shift: receiver slot ``j`` reads the sharer rows aligned to receiver token ``j + shift``.
            0 is the paper. 1 lets the last fused slot carry the sharer's rows of the final prompt token,
            which tiny models need (see docs/method.md, "Which rows carry a fact").
        include_response: the sharer also reads the last prompt token and every generated token, and each
            of their receiver rows is fused before the next token reads it (in training and decoding alike).
        token_alignment: "longest" or "first" (each receiver token re-encoded by the sharer, the paper) or
            "offsets" (the sharer reads its natural tokenization; tokens are matched by character offsets).
        prompt_format: "chat" (prompts are chat messages rendered with each model's chat template) or
            "text" (plain text). Records how the fuser was trained; servers and CLIs follow it.
        chat_rows: which rows of a chat prompt are fused. "content": each model renders its own template
            and only message content is fused (c2c's default). "reference": the reference implementation's
            layout for same-vocabulary pairs (one rendering with the receiver's template, every instruction
            row but the last fused, template rows included), which converted reference fusers need.
    """

    multi_sharer: MultiSharer = "parallel"
    alignment_shift: int = 0
    include_response: bool = False
    token_alignment: TokenAlignment = "longest"
    prompt_format: PromptFormat = "chat"
    chat_rows: ChatRows = "content"

    def __post_init__(self) -> None:
        _choice("multi_sharer", self.multi_sharer, MultiSharer)
        _choice("token_alignment", self.token_alignment, TokenAlignment)
        _choice("prompt_format", self.prompt_format, PromptFormat)
        _choice("chat_rows", self.chat_rows, ChatRows)
        if not isinstance(self.alignment_shift, int) or isinstance(self.alignment_shift, bool):
            raise TypeError(f"alignment_shift must be an integer, got {self.alignment_shift!r}")
        if self.alignment_shift < 0:
            raise ValueError("alignment_shift must be >= 0 (a slot may only read rows at or after it)")
        if not isinstance(self.include_response, bool):
            raise TypeError(f"include_response must be true or false, got {self.include_response!r}")
        if self.include_response and self.alignment_shift:
            raise ValueError(
                "include_response fuses each generated token's rows as soon as it is read, but alignment_shift="
                f"{self.alignment_shift} would make it read the sharer's rows of a token not generated yet; "
                "use alignment_shift=0 with include_response"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "c2c_config") -> C2CConfig:
        """Build from a mapping (a YAML section or ``fuser_config.json``); unknown keys are an error."""
        if not isinstance(data, dict):
            raise TypeError(f"{source} must be a mapping of C2CConfig fields, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{source}: unknown C2CConfig fields {unknown} (known: {', '.join(sorted(known))}); "
                "was it written by a newer c2c?"
            )
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{source}: {exc}") from exc


_PAIR_KEYS = ("model_type", "num_layers", "kv_layers", "num_kv_heads", "head_dim", "value_head_dim", "vocab_size")


def pair_differences(recorded: ModelSpec, live: ModelSpec) -> list[str]:
    """Fields that decide whether a fuser fits a model (cache shapes and vocabulary), where they differ."""
    out = []
    for name in _PAIR_KEYS:
        a, b = getattr(recorded, name), getattr(live, name)
        if name == "value_head_dim":
            a, b = a or recorded.head_dim, b or live.head_dim
        if a is not None and b is not None and a != b:
            out.append(f"{name}: recorded {a!r}, got {b!r}")
    return out


def check_pair(
    recorded_receiver: ModelSpec,
    recorded_sharers: list[ModelSpec],
    receiver: ModelSpec,
    sharers: list[ModelSpec],
    *,
    where: str = "this fuser",
) -> None:
    """Refuse a receiver/sharer pair that is not the one ``where`` was built for.

    Cache shapes and vocabulary sizes are compared (a same-shaped model with another vocabulary reads other
    tokens, which would be a silent wrong answer). A swapped pair is named as such.
    """
    if len(recorded_sharers) != len(sharers):
        raise ValueError(f"{where} has {len(recorded_sharers)} sharer(s), got {len(sharers)}")
    lines = [f"receiver {d}" for d in pair_differences(recorded_receiver, receiver)]
    for k, (rec, live) in enumerate(zip(recorded_sharers, sharers)):
        lines += [f"sharer {k} {d}" for d in pair_differences(rec, live)]
    if not lines:
        return
    if (
        len(sharers) == 1
        and not pair_differences(recorded_receiver, sharers[0])
        and not pair_differences(recorded_sharers[0], receiver)
    ):
        raise ValueError(
            f"receiver and sharer look swapped: the given receiver matches the sharer {where} was built for and "
            "vice versa; pass receiver=<the model that answers> and sharer=<the model whose cache is read>"
        )
    raise ValueError(
        f"{where} was built for a different model pair:\n  "
        + "\n  ".join(lines)
        + "\nload the models it was trained with (see fuser_config.json) or train a new fuser for this pair"
    )
