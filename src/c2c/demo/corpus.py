"""What each model reads: pretraining corpora of the two tiny LMs and the fuser's training files.

Who learns what (the whole point of the demo, so it is spelled out here and nowhere else):

- the **receiver** reads fact documents and question/answer pairs about the ``receiver`` entities (so it
  knows the question format and the answer vocabulary) and note-reading pairs about the ``practice``
  entities (so it can answer from a background note it is given). It never reads a fact about a
  ``fuser``, ``val`` or ``test`` entity.
- the **sharer** reads question/answer pairs, fact documents and note-writing pairs about the ``fuser``,
  ``val`` and ``test`` entities: it is the model that knows.
- the **fuser** trains on question/answer pairs about the ``fuser`` entities only.

A corpus is a list of groups of alternatives (the documents of one entity, the paraphrases of one
question); every pretraining epoch reads one alternative per group.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from c2c.demo.world import (
    ATTRIBUTES,
    Entity,
    Question,
    World,
    note,
    note_request,
    practice_note,
    questions,
    read_prompt,
    statements,
)

SHARER_SPLITS: tuple[str, ...] = ("fuser", "val", "test")


@dataclass(frozen=True)
class Example:
    """One training sequence: a prompt and its response (loss on the response only), or a plain document
    (loss everywhere)."""

    prompt: str = ""
    response: str = ""
    text: str = ""
    attribute: str = ""  # the attribute a question or note pair is about ("" for documents)

    @property
    def is_pair(self) -> bool:
        return bool(self.prompt)


Corpus = list[list[Example]]


def response_text(text: str) -> str:
    """A response continues its prompt's text after a space, so the answer is the very token it is in
    running text (" Paris" is one token in notes and statements; "Paris" after the prompt would not be)."""
    return " " + text


def qa_pair(q: Question) -> Example:
    return Example(prompt=q.text, response=response_text(q.answer), attribute=q.attribute)


def _fact_document(entity: Entity, rng: random.Random) -> Example:
    """The entity's facts, one random paraphrase each, in random order (a short encyclopedia entry)."""
    per_attr = len(statements(entity)) // len(ATTRIBUTES)
    stmts = statements(entity)
    picked = [stmts[i * per_attr + rng.randrange(per_attr)] for i in range(len(ATTRIBUTES))]
    rng.shuffle(picked)
    # A leading space, so the name at the start is the same token as everywhere else (" Traima").
    return Example(text=" " + " ".join(picked))


def _per_fact(entities: list[Entity], make: Callable[[Entity, Question], Example]) -> Corpus:
    """One group per (entity, attribute) whose alternatives are the question paraphrases: every fact is
    read once per epoch, in a varying wording."""
    return [[make(e, q) for q in questions(e) if q.attribute == attr] for e in entities for attr in ATTRIBUTES]


def receiver_corpus(world: World) -> Corpus:
    """Fact documents and questions about the ``receiver`` entities, note reading on the ``practice`` ones."""
    rng = random.Random(world.config.seed)
    receiver = world.split("receiver")
    groups = [[_fact_document(e, rng) for _ in range(3)] for e in receiver]
    groups += _per_fact(receiver, lambda e, q: qa_pair(q))
    groups += _per_fact(
        world.split("practice"),
        lambda e, q: Example(
            prompt=read_prompt(practice_note(e, q.attribute, rng), q), response=response_text(q.answer)
        ),
    )
    return groups


def sharer_corpus(world: World) -> Corpus:
    """Every fact of every ``fuser``, ``val`` and ``test`` entity, read twice per epoch: once as a question
    (one of its paraphrases) and once as a note-writing request for that question (one of its paraphrases).

    Notes get as much practice as answers: text-to-text is only as good as the notes the sharer writes, and
    a note about a fact is a second lookup of the same fact from another prompt. No fact documents: they
    cost time without paying for it on this budget."""
    entities = world.split(*SHARER_SPLITS)
    groups = _per_fact(entities, lambda e, q: qa_pair(q))
    groups += _per_fact(
        entities,
        lambda e, q: Example(
            prompt=note_request(q), response=response_text(note(e, q.attribute)), attribute=q.attribute
        ),
    )
    return groups


def corpus_texts(corpus: Corpus) -> list[str]:
    """Every string of a corpus (tokenizer training data)."""
    out: list[str] = []
    for group in corpus:
        for ex in group:
            out.extend((ex.prompt, ex.response) if ex.is_pair else (ex.text,))
    return out


def qa_rows(qs: list[Question]) -> list[dict]:
    """Rows of the trainer's ``prompt_response`` layout (plain text, no chat template), with the question's
    identity kept alongside (the trainer ignores extra fields)."""
    return [
        {"prompt": q.text, "response": response_text(q.answer), "entity": q.entity, "attribute": q.attribute}
        for q in qs
    ]


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def split_questions(world: World, split: str) -> list[Question]:
    return [q for e in world.split(split) for q in questions(e)]
