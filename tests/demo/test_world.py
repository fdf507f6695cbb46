"""The synthetic world and who reads which facts: the separation every demo number depends on."""

from __future__ import annotations

import random

import pytest

from c2c.demo.corpus import corpus_texts, qa_rows, receiver_corpus, sharer_corpus, split_questions
from c2c.demo.world import (
    ATTRIBUTES,
    SPLITS,
    World,
    WorldConfig,
    chance_accuracy,
    note,
    practice_note,
    questions,
    statements,
    swap_partners,
)

SMALL = WorldConfig(seed=3, n_receiver=12, n_practice=20, n_fuser=25, n_val=6, n_test=10)


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(SMALL)


def test_same_seed_same_world_other_seed_other_world(world: World) -> None:
    assert World.generate(SMALL).to_dict() == world.to_dict()
    other = World.generate(WorldConfig(**{**SMALL.__dict__, "seed": 4}))
    assert [e.name for e in other.entities] != [e.name for e in world.entities]


def test_splits_have_their_sizes_and_unique_names(world: World) -> None:
    for split, n in SMALL.split_sizes().items():
        assert len(world.split(split)) == n
    names = [e.name for e in world.entities]
    assert len(set(names)) == len(names) == sum(SMALL.split_sizes().values())
    with pytest.raises(ValueError, match="unknown split"):
        world.split("train")
    assert set(SPLITS) == set(SMALL.split_sizes())


def test_facts_use_each_attributes_values(world: World) -> None:
    for e in world.entities:
        assert set(e.facts) == set(ATTRIBUTES)
        for attr, value in e.facts.items():
            assert value in ATTRIBUTES[attr][0]
    assert 0.08 < chance_accuracy() < 0.11  # 12/10/10/10 values


def test_questions_statements_and_notes_carry_the_facts(world: World) -> None:
    e = world.split("test")[0]
    qs = questions(e)
    assert len(qs) == sum(len(q) for _, _, q in ATTRIBUTES.values())
    assert all(e.name in q.text and q.answer == e.facts[q.attribute] for q in qs)
    assert all(e.name in s for s in statements(e))
    for attr, value in e.facts.items():
        text = note(e, attr)
        assert text.startswith(value) and len(text.split()) >= 6  # a sentence, not a word
    rng = random.Random(0)
    notes = [practice_note(e, "city", rng) for _ in range(20)]
    assert all(note(e, "city") in n for n in notes)
    assert len({n.count(".") for n in notes}) > 1  # 1-4 sentences: the reader must pick the right one


def _mentions(texts: list[str], name: str) -> bool:
    return any(name in t for t in texts)


def test_receiver_never_reads_fuser_val_or_test_entities(world: World) -> None:
    texts = corpus_texts(receiver_corpus(world))
    for e in world.split("fuser", "val", "test"):
        assert not _mentions(texts, e.name), e.name
    for e in world.split("receiver", "practice"):
        assert _mentions(texts, e.name), e.name


def test_sharer_knows_fuser_val_and_test_entities_only(world: World) -> None:
    texts = corpus_texts(sharer_corpus(world))
    for e in world.split("fuser", "val", "test"):
        assert _mentions(texts, e.name), e.name
        assert all(_mentions(texts, note(e, a)) for a in ATTRIBUTES), e.name
    for e in world.split("receiver", "practice"):
        assert not _mentions(texts, e.name), e.name


def test_fuser_rows_are_prompt_response_rows_of_fuser_entities(world: World) -> None:
    qs = split_questions(world, "fuser")
    rows = qa_rows(qs)
    assert {r["entity"] for r in rows} == {e.name for e in world.split("fuser")}
    assert rows[0]["prompt"] == qs[0].text and rows[0]["response"] == " " + qs[0].answer


def test_swap_partners_ask_the_same_thing_about_another_entity(world: World) -> None:
    qs = split_questions(world, "test")
    partners = swap_partners(qs, world, seed=0)
    assert len(partners) == len(qs)
    for q, p in zip(qs, partners):
        assert p.entity != q.entity and p.answer != q.answer
        assert (p.attribute, p.template) == (q.attribute, q.template)
    assert swap_partners(qs, world, seed=0) == partners
