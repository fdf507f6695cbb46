"""Quality bars of the demo's tiny LMs: what each model must be able to do before the experiment means
anything, measured on entities the test never uses.

- The **sharer** must answer the questions about the entities it was taught and write a correct note for
  them (checked on the ``fuser`` and ``val`` entities; the ``test`` entities are never looked at here).
- The **receiver** must read a correct note about an entity it never saw (``val`` entities, reference
  notes). How well it answers about its own ``receiver`` entities is reported but not part of its bar: it
  reads them only to learn the question format and the answer words, and memorising them takes a tiny
  receiver far longer than reading does (41 % after 28 epochs, 82 % after 48, while it read notes at 96 %).

A model's score is the lowest of its checks; pretraining (:func:`c2c.demo.lms.pretrain`) runs in rounds
until the score reaches the model's bar, within a bounded budget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from c2c.demo.world import Question, World, note, note_request, questions, read_prompt
from c2c.eval.parsing import exact_match
from c2c.hf import left_pad

Check = Callable[[PreTrainedModel], dict[str, Any]]


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Ids of a plain-text prompt exactly as the library encodes it at inference (``C2CModel.generate(text)``)
    and in training (the trainer's ``prompt_response`` layout): the text with the tokenizer's special tokens."""
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


@torch.no_grad()
def greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int = 256,
) -> list[str]:
    """Greedy replies of one plain LM to ``prompts`` (left padding, batched): what a pretrained model
    knows, outside any C2C machinery."""
    was_training = model.training
    model.eval()
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        rows = [prompt_ids(tokenizer, p) for p in prompts[i : i + batch_size]]
        ids, att = left_pad(rows, tokenizer.pad_token_id, model.device)
        width = ids.shape[1]
        gen = model.generate(  # type: ignore[operator]  # transformers types generate loosely
            input_ids=ids,
            attention_mask=att,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        out += tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
    model.train(was_training)
    return out


def _accuracy(texts: list[str], qs: list[Question]) -> float:
    return sum(exact_match(t, q.answer) for t, q in zip(texts, qs)) / max(1, len(qs))


def sharer_check(world: World, tokenizer: PreTrainedTokenizerBase, note_tokens: int = 16) -> Check:
    """Answers and notes about the ``fuser`` and ``val`` entities (every question paraphrase)."""
    by_name = world.by_name()
    qs = [q for e in world.split("fuser", "val") for q in questions(e)]
    refs = [note(by_name[q.entity], q.attribute) for q in qs]

    def check(model: PreTrainedModel) -> dict[str, Any]:
        answers = greedy(model, tokenizer, [q.text for q in qs], max_new_tokens=4)
        notes = greedy(model, tokenizer, [note_request(q) for q in qs], max_new_tokens=note_tokens)
        note_ok = sum(" ".join(n.split()) == r for n, r in zip(notes, refs)) / len(qs)
        qa = _accuracy(answers, qs)
        by_attr = {
            a: _accuracy([t for t, q in zip(answers, qs) if q.attribute == a], [q for q in qs if q.attribute == a])
            for a in sorted({q.attribute for q in qs})
        }
        return {
            "score": min(qa, note_ok),
            "answers": qa,
            "notes": note_ok,
            "questions": len(qs),
            "by_attribute": by_attr,
        }

    return check


def receiver_check(world: World, tokenizer: PreTrainedTokenizerBase) -> Check:
    """Reading reference notes about ``val`` entities (the score), and answering about its own ``receiver``
    entities (reported)."""
    by_name = world.by_name()
    val = [q for e in world.split("val") for q in questions(e)]
    own = [q for e in world.split("receiver") for q in questions(e)]

    def check(model: PreTrainedModel) -> dict[str, Any]:
        reads = greedy(
            model, tokenizer, [read_prompt(note(by_name[q.entity], q.attribute), q) for q in val], max_new_tokens=4
        )
        answers = greedy(model, tokenizer, [q.text for q in own], max_new_tokens=4)
        r, a = _accuracy(reads, val), _accuracy(answers, own)
        return {"score": r, "reads_notes": r, "answers_own": a, "questions": len(val) + len(own)}

    return check


QUALITY_VERSIONS: dict[str, int] = {"receiver": 2, "sharer": 1}
"""Bump a role's version when its check changes (part of the pretrained model's cache key)."""

CHECKS: dict[str, Callable[[World, PreTrainedTokenizerBase], Check]] = {
    "receiver": receiver_check,
    "sharer": sharer_check,
}
