"""A routing baseline that can win: send each question to the model more confident in its first answer token,
with the margin fitted on the validation entities.

The perplexity rule of ``c2c.eval`` scores a question's *wording*; the demo's tiny LMs were trained with loss
on answers only, so neither ever learned to predict question text and that rule is noise here. Confidence
in the first answer token is what each model was trained to produce, and it costs the same single prefill.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from c2c.demo.quality import prompt_ids
from c2c.hf import left_pad, position_ids_from_mask


@torch.no_grad()
def confidence(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *, batch_size: int = 256
) -> list[float]:
    """Probability of each prompt's most likely next token (the first answer token under greedy decoding)."""
    out: list[float] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for i in range(0, len(prompts), batch_size):
        ids, mask = left_pad([prompt_ids(tokenizer, p) for p in prompts[i : i + batch_size]], pad, model.device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
        out += torch.softmax(logits[:, -1].float(), dim=-1).max(-1).values.tolist()
    return out


@dataclass(frozen=True)
class ConfidenceRouter:
    """Route to the sharer when ``sharer confidence - receiver confidence > margin``.

    ``margin`` is fitted on validation questions by :meth:`fit`; nothing about the test entities is read."""

    margin: float
    val_accuracy: float
    val_share_to_sharer: float

    @classmethod
    def fit(cls, conf_r: list[float], conf_s: list[float], ok_r: list[bool], ok_s: list[bool]) -> ConfidenceRouter:
        """The margin with the best routed accuracy on the given (validation) questions; among equals, the
        one closest to 0 (no preference between the models)."""
        if not conf_r or not (len(conf_r) == len(conf_s) == len(ok_r) == len(ok_s)):
            raise ValueError("fit needs one confidence and one correctness flag per model and question, same lengths")
        diffs = sorted({s - r for r, s in zip(conf_r, conf_s)})
        # Every distinct decision lies between consecutive differences (and beyond both ends).
        candidates = [diffs[0] - 1.0] + [(a + b) / 2 for a, b in pairwise(diffs)] + [diffs[-1] + 1.0]
        best: tuple[float, float, float] | None = None  # (accuracy, -|margin|, margin)
        for m in candidates:
            acc = sum(os if s - r > m else orr for r, s, orr, os in zip(conf_r, conf_s, ok_r, ok_s)) / len(ok_r)
            key = (acc, -abs(m), m)
            if best is None or key > best:
                best = key
        assert best is not None
        margin = best[2]
        share = sum(s - r > margin for r, s in zip(conf_r, conf_s)) / len(conf_r)
        return cls(margin=margin, val_accuracy=best[0], val_share_to_sharer=share)

    def choose(self, conf_r: list[float], conf_s: list[float]) -> list[int]:
        """0 = receiver, 1 = sharer, per question."""
        return [int(s - r > self.margin) for r, s in zip(conf_r, conf_s)]
