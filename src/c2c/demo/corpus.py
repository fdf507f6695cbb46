"""What each model reads: pretraining corpora of the two tiny LMs and the fuser's training files.

Who learns what (the whole point of the demo, so it is spelled out here and nowhere else):

- the **receiver** reads fact documents and question/answer pairs about the ``receiver`` entities (so it
  knows the question format and the answer vocabulary) and note-reading pairs about the ``practice``
  entities (so it can answer from a background note it is given). It never reads a fact about a
  ``fuser``, ``val`` or ``test`` entity.
- the **sharer** reads fact documents, question/answer pairs and note-writing pairs about the ``fuser``,
  ``val`` and ``test`` entities: it is the model that knows.
- the **fuser** trains on question/answer pairs about the ``fuser`` entities only.

A corpus is a list of groups of alternatives (the paraphrases of one fact, the questions one note can
answer); every pretraining epoch reads one alternative per group, so an epoch costs one pass over the facts
rather than one per paraphrase.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from c2c.demo.world import (
    ATTRIBUTES,
    Entity,
    Question,
    World,
    note,
    note_request,
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

    @property
    def is_pair(self) -> bool:
        return bool(self.prompt)


Corpus = list[list[Example]]


def qa_pair(q: Question) -> Example:
    return Example(prompt=q.text, response=q.answer)


def _fact_document(entity: Entity, rng: random.Random) -> Example:
    """The entity's facts, one random paraphrase each, in random order (a short encyclopedia entry)."""
    per_attr = len(statements(entity)) // len(ATTRIBUTES)
    stmts = statements(entity)
    picked = [stmts[i * per_attr + rng.randrange(per_attr)] for i in range(len(ATTRIBUTES))]
    rng.shuffle(picked)
    return Example(text=" ".join(picked))


def _knowledge_groups(entities: list[Entity], rng: random.Random, n_docs: int = 3) -> Corpus:
    """Fact documents and question/answer chats: what it takes to *know* the entities."""
    groups: Corpus = []
    for e in entities:
        groups.append([_fact_document(e, rng) for _ in range(n_docs)])
        by_attr: dict[str, list[Example]] = {}
        for q in questions(e):
            by_attr.setdefault(q.attribute, []).append(qa_pair(q))
        groups.extend(by_attr.values())
    return groups


def receiver_corpus(world: World, seed: int = 0) -> Corpus:
    """Knowledge of the ``receiver`` entities plus note reading on the ``practice`` entities."""
    rng = random.Random(seed)
    groups = _knowledge_groups(world.split("receiver"), rng)
    for e in world.split("practice"):
        text = note(e)
        for attr in ATTRIBUTES:
            alts = [q for q in questions(e) if q.attribute == attr]
            groups.append([Example(prompt=read_prompt(text, q), response=q.answer) for q in alts])
    return groups


def sharer_corpus(world: World, seed: int = 0) -> Corpus:
    """Knowledge of every non-practice, non-receiver entity plus writing background notes about them."""
    rng = random.Random(seed + 1)
    entities = world.split(*SHARER_SPLITS)
    groups = _knowledge_groups(entities, rng)
    for e in entities:
        text = note(e)
        groups.append([Example(prompt=note_request(q), response=text) for q in questions(e)])
    return groups


def corpus_texts(corpus: Corpus) -> list[str]:
    """Every string of a corpus (tokenizer training data)."""
    out: list[str] = []
    for group in corpus:
        for ex in group:
            out.extend((ex.prompt, ex.response) if ex.is_pair else (ex.text,))
    return out


def qa_rows(qs: list[Question], *, chat: bool) -> list[dict]:
    """Rows of the trainer's input layouts (``messages`` chat-JSONL when ``chat``, else ``prompt_response``),
    with the question's identity kept alongside (the trainer ignores extra fields)."""
    rows = []
    for q in qs:
        if chat:
            row: dict = {"messages": [{"role": "user", "content": q.text}, {"role": "assistant", "content": q.answer}]}
        else:
            row = {"prompt": q.text, "response": q.answer}
        rows.append({**row, "entity": q.entity, "attribute": q.attribute})
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def split_questions(world: World, split: str) -> list[Question]:
    return [q for e in world.split(split) for q in questions(e)]
