"""Answering the demo's questions along every path: the two models alone, text-to-text (with the sharer's
note and with a reference note), confidence routing and C2C, plus the sharer's own recall on the exact
input each C2C cell feeds it.

Every path goes through the library: ``C2CModel.generate`` (the unfused modes share every line of code
with the fused one except fusion) or ``c2c.generation.generate_batch`` for hand-built alignments.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import torch
from tqdm.auto import tqdm

from c2c.alignment.records import AlignedPrompt
from c2c.batch import C2CBatch
from c2c.demo.routing import ConfidenceRouter, confidence
from c2c.demo.world import Question, World, note, note_request, read_prompt
from c2c.eval.parsing import exact_match
from c2c.generation import GenerationOptions, generate_batch
from c2c.hf import left_pad, position_ids_from_mask
from c2c.model import C2CModel

Mode = Literal["c2c", "receiver", "sharer"]
T = TypeVar("T")


def need(x: T | None, what: str) -> T:
    """``x``, or a clear error when the C2C model lacks it (the demo builds its models with tokenizers)."""
    if x is None:
        raise ValueError(f"the demo needs {what}; build the C2CModel with both tokenizers")
    return x


def answer(
    model: C2CModel, prompts: list[str], *, mode: Mode, max_new_tokens: int, batch_size: int, desc: str
) -> list[str]:
    """Greedy answers to plain-text prompts through ``C2CModel.generate`` (batched)."""
    out: list[str] = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False, dynamic_ncols=True):
        out += model.generate(prompts[i : i + batch_size], mode=mode, max_new_tokens=max_new_tokens)
    return out


def correct(texts: list[str], qs: list[Question]) -> list[bool]:
    return [exact_match(t, q.answer) for t, q in zip(texts, qs, strict=True)]


def accuracy(texts: list[str], qs: list[Question]) -> float:
    return sum(correct(texts, qs)) / max(1, len(qs))


def clean_note(text: str) -> str:
    return " ".join(text.split())


def t2t_answers(
    model: C2CModel, qs: list[Question], *, note_tokens: int, max_new_tokens: int, batch_size: int
) -> tuple[list[str], list[str]]:
    """Text-to-text: the sharer writes a note for each question, the receiver answers with it in context.
    Returns ``(notes, answers)``."""
    notes = answer(
        model,
        [note_request(q) for q in qs],
        mode="sharer",
        max_new_tokens=note_tokens,
        batch_size=batch_size,
        desc="t2t notes",
    )
    notes = [clean_note(n) for n in notes]
    texts = answer(
        model,
        [read_prompt(n, q) for n, q in zip(notes, qs)],
        mode="receiver",
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        desc="t2t answers",
    )
    return notes, texts


def reference_t2t_answers(
    model: C2CModel, world: World, qs: list[Question], *, max_new_tokens: int, batch_size: int
) -> list[str]:
    """Text-to-text's ceiling: the receiver answers with the *correct* note in context."""
    by_name = world.by_name()
    prompts = [read_prompt(note(by_name[q.entity], q.attribute), q) for q in qs]
    return answer(
        model, prompts, mode="receiver", max_new_tokens=max_new_tokens, batch_size=batch_size, desc="t2t reference"
    )


def fit_router(model: C2CModel, val: list[Question], *, max_new_tokens: int, batch_size: int) -> ConfidenceRouter:
    """The confidence router's margin, fitted on the validation questions."""
    texts = [q.text for q in val]
    modes: tuple[Mode, Mode] = ("receiver", "sharer")
    ok = {
        m: correct(
            answer(model, texts, mode=m, max_new_tokens=max_new_tokens, batch_size=batch_size, desc=f"{m} val"), val
        )
        for m in modes
    }
    conf_r = confidence(model.receiver, need(model.receiver_tokenizer, "a receiver tokenizer"), texts)
    conf_s = confidence(model.sharer_models[0], need(model.sharer_tokenizers[0], "a sharer tokenizer"), texts)
    return ConfidenceRouter.fit(conf_r, conf_s, ok["receiver"], ok["sharer"])


def routed_answers(
    model: C2CModel, router: ConfidenceRouter, qs: list[Question], receiver_texts: list[str], sharer_texts: list[str]
) -> tuple[list[str], list[int]]:
    """Each question answered by the model the router picks. Returns ``(answers, choices)``."""
    texts = [q.text for q in qs]
    choice = router.choose(
        confidence(model.receiver, need(model.receiver_tokenizer, "a receiver tokenizer"), texts),
        confidence(model.sharer_models[0], need(model.sharer_tokenizers[0], "a sharer tokenizer"), texts),
    )
    return [s if c else r for r, s, c in zip(receiver_texts, sharer_texts, choice)], choice


@torch.no_grad()
def sharer_recall(model: C2CModel, qs: list[Question], *, batch_size: int = 256) -> float:
    """How often the sharer's next token after the input this model's alignment feeds it is the answer's
    first token: the sharer's own recall on each C2C cell's input (its natural tokenization, the
    paper's re-encoded pieces, with or without its BOS)."""
    aligner = need(model.aligners[0], "a token aligner")
    tok = need(model.sharer_tokenizers[0], "a sharer tokenizer")
    sharer = model.sharer_models[0]
    hits = 0
    for i in range(0, len(qs), batch_size):
        chunk = qs[i : i + batch_size]
        rows = [aligner.align_text(q.text).sharer_ids for q in chunk]
        ids, att = left_pad(rows, tok.pad_token_id if tok.pad_token_id is not None else 0, sharer.device)
        logits = sharer(input_ids=ids, attention_mask=att, position_ids=position_ids_from_mask(att)).logits
        nxt = logits[:, -1].argmax(-1).tolist()
        for q, t in zip(chunk, nxt):
            first = tok(" " + q.answer, add_special_tokens=False)["input_ids"][0]
            hits += int(t == first)
    return hits / max(1, len(qs))


def swapped_batch(model: C2CModel, receiver_qs: list[Question], sharer_qs: list[Question]) -> C2CBatch:
    """A batch where the receiver reads ``receiver_qs`` and the sharer reads ``sharer_qs`` (the same question
    template about another entity). The two prompts differ only in the name, so each fused receiver slot is
    paired with the sharer position the same distance from the end of the sharer's own prompt."""
    aligner = need(model.aligners[0], "a token aligner")
    rows = []
    for qa, qb in zip(receiver_qs, sharer_qs, strict=True):
        a, b = aligner.align_text(qa.text), aligner.align_text(qb.text)
        n_a, n_b = len(a.receiver_ids), len(b.receiver_ids)
        index = [b.sharer_index[j - n_a + n_b] if 0 <= j - n_a + n_b < n_b else -1 for j in range(n_a)]
        rows.append([AlignedPrompt(list(a.receiver_ids), list(b.sharer_ids), index)])
    return model.collate(rows)


def swapped_answers(
    model: C2CModel, qs: list[Question], partners: list[Question], *, max_new_tokens: int, batch_size: int
) -> list[str]:
    """C2C answers when the sharer reads each question's partner instead of the question itself."""
    out: list[str] = []
    for i in range(0, len(qs), batch_size):
        batch = swapped_batch(model, qs[i : i + batch_size], partners[i : i + batch_size])
        res = generate_batch(model, batch, options=GenerationOptions(max_new_tokens=max_new_tokens))
        out += need(model.receiver_tokenizer, "a receiver tokenizer").batch_decode(
            res.sequences, skip_special_tokens=True
        )
    return out


def fuser_parameters(model: C2CModel) -> int:
    return sum(p.numel() for p in model.fusers.parameters())


def describe_fuser(model: C2CModel) -> dict[str, Any]:
    return {
        "fuser": model.fuser_list[0].config.to_dict(),
        "c2c_config": model.config.to_dict(),
        "fuser_parameters": fuser_parameters(model),
    }
