"""The cache-enrichment oracle (paper, section 3.1): can a cache of the *same length* carry more knowledge?

One model prefills solved exemplars followed by the question, inside its chat template. With
``keep="question"`` (the oracle) the exemplars' cache rows are then dropped: the model answers from a cache
exactly as long as the zero-shot prompt's, whose rows were computed while attending to the exemplars.
``keep="all"`` keeps every row (ordinary few-shot) through the same code, so the paper's three-way
comparison (zero-shot / oracle / few-shot) is: ``ReceiverOnly`` vs ``CacheOracle(keep="question")`` vs
``CacheOracle(keep="all")``.

Positions: the kept rows hold keys rotated at their positions in the long (exemplar) sequence, so decoding
continues from the long sequence's positions; the relative distances between cached keys and new queries
are then the ones the rows were computed with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache

from c2c.cache import keep_columns, new_cache
from c2c.config import PromptFormat
from c2c.eval.generation import plain_text
from c2c.eval.modes import Mode, ModeOutput, Query, _model_name
from c2c.eval.parsing import strip_thinking
from c2c.eval.prompts import EXEMPLAR_INTRO
from c2c.hf import (
    StageTimer,
    chat_text,
    cut_at_eos,
    eos_token_ids,
    left_pad,
    model_device,
    pad_token_id,
    position_ids_from_mask,
)

__all__ = ["CacheOracle", "Exemplar", "select_exemplars"]

EXEMPLAR_OUTRO = "Now answer this question.\n\n"


@dataclass(frozen=True)
class Exemplar:
    """A solved example: ``text`` holds the question, its options and the answer sentence."""

    uid: str
    text: str
    subject: str | None = None


def select_exemplars(pool: Sequence[Exemplar], query: Query, shots: int) -> list[Exemplar]:
    """The first ``shots`` exemplars of ``pool`` other than the query itself, same subject first."""
    others = [e for e in pool if e.uid != query.uid]
    same = [e for e in others if query.subject is not None and e.subject == query.subject]
    rest = [e for e in others if e not in same]
    return (same + rest)[:shots]


class CacheOracle(Mode):
    """One model answers from an exemplar-enriched cache (see the module docstring).

    Args:
        model, tokenizer: the model under test and its tokenizer (chat template required).
        exemplars: pool of solved examples; each query uses :func:`select_exemplars`.
        shots: exemplars per query.
        keep: "question" (the oracle: exemplar rows dropped) or "all" (few-shot).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        exemplars: Sequence[Exemplar],
        *,
        shots: int = 5,
        keep: Literal["question", "all"] = "question",
        name: str | None = None,
        enable_thinking: bool = False,
        prompt_format: PromptFormat = "chat",
    ) -> None:
        if keep not in ("question", "all"):
            raise ValueError(f"keep must be 'question' (oracle) or 'all' (few-shot), got {keep!r}")
        if shots < 0:
            raise ValueError(f"shots must be >= 0, got {shots}")
        self.model, self.tokenizer = model, tokenizer
        self.exemplars, self.shots, self.keep = list(exemplars), shots, keep
        self.name = name or ("oracle" if keep == "question" else "few_shot")
        self.enable_thinking = enable_thinking
        self.prompt_format = prompt_format

    def _pieces(self, query: Query) -> tuple[list[int], list[int], list[int], list[str]]:
        """(template head, exemplar block, prompt + template tail) ids and the exemplar uids."""
        if self.prompt_format == "text":
            rendered = plain_text(query.messages())
        else:
            rendered = chat_text(self.tokenizer, query.messages(), enable_thinking=self.enable_thinking)
        at = rendered.find(query.prompt)
        if at < 0:
            raise ValueError(
                "the chat template altered the user message (e.g. trimmed it), so the exemplar block cannot be "
                "inserted before it; strip leading/trailing whitespace from the prompt template"
            )
        chosen = select_exemplars(self.exemplars, query, self.shots)
        block = (EXEMPLAR_INTRO + "\n\n".join(e.text for e in chosen) + "\n\n" + EXEMPLAR_OUTRO) if chosen else ""

        def enc(text: str) -> list[int]:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

        # Plain text gets the tokenizer's own leading specials (BOS) in front; a chat template holds them.
        bos = [] if self.prompt_format == "chat" else _leading_specials(self.tokenizer)
        return bos + enc(rendered[:at]), enc(block), enc(rendered[at:]), [e.uid for e in chosen]

    @torch.no_grad()
    def generate(self, queries: Sequence[Query], *, max_new_tokens: int, min_new_tokens: int = 0) -> ModeOutput:
        model = self.model
        device = model_device(model)
        timer = StageTimer(device)
        pieces = [self._pieces(q) for q in queries]
        seqs = [h + b + t for h, b, t, _ in pieces]
        keeps = [[1] * len(h) + [int(self.keep == "all")] * len(b) + [1] * len(t) for h, b, t, _ in pieces]
        pad = pad_token_id(model, self.tokenizer)
        ids, mask = left_pad(seqs, pad, device)
        keep, _ = left_pad(keeps, 0, device)
        pos = position_ids_from_mask(mask)
        width = ids.shape[1]
        cache = new_cache(model)

        with timer.stage("receiver_prefill"):
            if width > 1:
                model(
                    input_ids=ids[:, :-1],
                    attention_mask=mask[:, :-1],
                    position_ids=pos[:, :-1],
                    cache=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
            kept_mask = self._drop_rows(cache, (mask * keep)[:, :-1], width - 1)

        eos = torch.tensor(eos_token_ids(model, self.tokenizer) or [-1], device=device)
        tokens: list[torch.Tensor] = []
        with timer.stage("decode"):
            step_ids, attn, step_pos = ids[:, -1:], torch.cat([kept_mask, mask[:, -1:]], dim=1), pos[:, -1:]
            done = torch.zeros(len(queries), dtype=torch.bool, device=device)
            for step in range(max_new_tokens):
                logits = (
                    model(input_ids=step_ids, attention_mask=attn, position_ids=step_pos, cache=cache, use_cache=True)
                    .logits[:, -1]
                    .float()
                )
                if step < min_new_tokens:
                    logits[:, eos[eos >= 0]] = float("-inf")
                nxt = torch.where(done, torch.full_like(done, pad, dtype=torch.long), logits.argmax(-1))
                tokens.append(nxt)
                done |= torch.isin(nxt, eos)
                if bool(done.all()):
                    break
                step_ids = nxt[:, None]
                attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
                step_pos = step_pos + 1
        out = torch.stack(tokens, dim=1) if tokens else ids.new_zeros((len(queries), 0))
        new = cut_at_eos(out, eos.tolist())
        texts = [strip_thinking(t) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        n_new = [len(n) for n in new]
        extras = [
            {
                "exemplars": uids,
                "exemplar_rows": len(b),
                "cache_rows": len(h) + len(t) + (len(b) if self.keep == "all" else 0),
                "new_tokens": n,
            }
            for (h, b, t, uids), n in zip(pieces, n_new)
        ]
        return ModeOutput(texts, timer.seconds, extras)

    @staticmethod
    def _drop_rows(cache: Cache, keep: torch.Tensor, length: int) -> torch.Tensor:
        """Keep, per row, only the cache columns where ``keep`` ``[B, L]`` is 1, left-packed.

        Returns the new ``[B, K]`` attention mask of the cache (0 on the left padding).
        """
        counts = keep.sum(-1)
        width = int(counts.max().item()) if keep.numel() else 0
        if width == length and bool((keep == 1).all()):
            return keep  # nothing to drop (few-shot, or a prompt without exemplars and without padding)
        # Column j of a row with n kept rows gets that row's kept column j - (width - n), left-padded.
        order = torch.argsort(keep * torch.arange(1, length + 1, device=keep.device), dim=-1, stable=True)
        keep_columns(cache, order[:, length - width :])  # kept columns are the largest scores, in order
        return (torch.arange(width, device=keep.device)[None] >= (width - counts)[:, None]).long()

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "model": _model_name(self.model),
            "shots": self.shots,
            "keep": self.keep,
            "exemplar_pool": len(self.exemplars),
        }


def _leading_specials(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special ids the tokenizer puts in front of plain text (BOS for most; none for some)."""
    probe = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    return list(probe[: len(probe) - len(plain)]) if probe[len(probe) - len(plain) :] == plain else []
