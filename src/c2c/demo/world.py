"""A synthetic world of people and their attributes, generated from a seed.

The demo needs knowledge that one model has and the other provably lacks. Every fact here is invented
(random names, random attribute values), so no model can know it from anywhere but its own training data,
and which model saw which fact is decided by the entity split below:

- ``receiver``  entities whose facts the receiver is trained on (it learns the question format on them),
- ``practice``  entities that appear only inside background notes in the receiver's corpus (it learns to
                read notes; their facts are never asked without the note),
- ``fuser``     entities the fuser trains on (the receiver never saw their facts),
- ``val``       entities for choosing the demo's settings (model and fuser recipes were tuned on these,
                never on test); trained on by nobody but the sharer,
- ``test``      held-out entities: neither the receiver nor the fuser ever saw them. Every accuracy
                reported as "test" is on these only.

The sharer is trained on the facts of every entity except the practice ones.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from c2c.eval.prompts import NOTE_CONTEXT_TEMPLATE, NOTE_TEMPLATE

SPLITS: tuple[str, ...] = ("receiver", "practice", "fuser", "val", "test")

# Attribute -> (values, statement templates, question templates). Values are single words, so the answer
# is one word and accuracy is an exact match on it. Several paraphrases per form keep the models from
# keying on one surface string.
ATTRIBUTES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "city": (
        ("Paris", "Tokyo", "Lima", "Cairo", "Oslo", "Delhi", "Rome", "Quito", "Seoul", "Dakar", "Perth", "Hanoi"),
        ("{name} lives in {value}.", "The home of {name} is in {value}."),
        ("Where does {name} live?", "In which city does {name} live?"),
    ),
    "job": (
        ("baker", "pilot", "nurse", "farmer", "painter", "tailor", "miner", "singer", "judge", "sailor"),
        ("{name} works as a {value}.", "By trade {name} is a {value}."),
        ("What does {name} do for a living?", "What is the job of {name}?"),
    ),
    "color": (
        ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "brown"),
        ("The favourite color of {name} is {value}.", "{name} likes the color {value} best."),
        ("What is the favourite color of {name}?", "Which color does {name} like best?"),
    ),
    "pet": (
        ("cat", "dog", "horse", "rabbit", "parrot", "goat", "turtle", "hamster", "snake", "duck"),
        ("{name} keeps a {value} as a pet.", "The pet of {name} is a {value}."),
        ("What pet does {name} keep?", "Which animal is the pet of {name}?"),
    ),
}


NOTE_PHRASES: dict[str, str] = {"city": "home city", "job": "job", "color": "favourite color", "pet": "pet"}
"""How a note names each attribute ("Rome is the home city of Traima.")."""

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "tr", "st", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")


@dataclass(frozen=True)
class WorldConfig:
    """Sizes of the entity splits; the seed decides names and facts."""

    seed: int = 0
    n_receiver: int = 150
    n_practice: int = 300
    n_fuser: int = 300
    n_val: int = 30
    n_test: int = 60

    def split_sizes(self) -> dict[str, int]:
        return {s: getattr(self, f"n_{s}") for s in SPLITS}


@dataclass(frozen=True)
class Entity:
    name: str
    facts: dict[str, str]  # attribute -> value
    split: str


@dataclass(frozen=True)
class Question:
    """One question about one attribute of one entity; ``answer`` is a single word."""

    entity: str
    attribute: str
    template: int
    text: str
    answer: str


@dataclass
class World:
    config: WorldConfig
    entities: list[Entity] = field(default_factory=list)

    @classmethod
    def generate(cls, config: WorldConfig) -> World:
        """Names and facts drawn from ``config.seed`` only: the same config gives the same world."""
        rng = random.Random(config.seed)
        names: list[str] = []
        seen: set[str] = set()
        total = sum(config.split_sizes().values())
        while len(names) < total:
            n_syll = rng.choice((2, 2, 3))
            name = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n_syll)).capitalize()
            if name not in seen:
                seen.add(name)
                names.append(name)
        entities: list[Entity] = []
        it = iter(names)
        for split, n in config.split_sizes().items():
            for _ in range(n):
                facts = {a: rng.choice(vals) for a, (vals, _, _) in ATTRIBUTES.items()}
                entities.append(Entity(next(it), facts, split))
        return cls(config, entities)

    def split(self, *splits: str) -> list[Entity]:
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)}; choose from {SPLITS}")
        return [e for e in self.entities if e.split in splits]

    def by_name(self) -> dict[str, Entity]:
        return {e.name: e for e in self.entities}

    def to_dict(self) -> dict:
        return {"config": asdict(self.config), "entities": [asdict(e) for e in self.entities]}


def attribute_values(attribute: str) -> tuple[str, ...]:
    return ATTRIBUTES[attribute][0]


def chance_accuracy() -> float:
    """Accuracy of a uniform guess among the right attribute's values, averaged over attributes."""
    return sum(1 / len(v) for v, _, _ in ATTRIBUTES.values()) / len(ATTRIBUTES)


def statements(entity: Entity) -> list[str]:
    """Every paraphrase of every fact about ``entity``."""
    return [t.format(name=entity.name, value=entity.facts[a]) for a, (_, stmts, _) in ATTRIBUTES.items() for t in stmts]


def questions(entity: Entity, templates: tuple[int, ...] | None = None) -> list[Question]:
    """Questions about every attribute of ``entity`` (all paraphrases, or only ``templates``)."""
    out = []
    for a, (_, _, qs) in ATTRIBUTES.items():
        for i, t in enumerate(qs):
            if templates is None or i in templates:
                out.append(Question(entity.name, a, i, t.format(name=entity.name), entity.facts[a]))
    return out


def note(entity: Entity, attribute: str) -> str:
    """The background note the sharer learns to write for a question about ``attribute``: one sentence
    stating the fact, e.g. "Rome is the home city of the person in question."

    The fact comes first because that is where a tiny sharer has it at hand: its last prompt position is
    trained to look the fact up for the question (the same computation as answering). The rest is fixed
    text: copying a random name from the prompt, or restating the entity's other facts in statement
    form, each took more pretraining than a laptop CPU can give in a few minutes.
    """
    return f"{entity.facts[attribute]} is the {NOTE_PHRASES[attribute]} of the person in question."


def practice_note(entity: Entity, attribute: str, rng: random.Random) -> str:
    """A note for the receiver's reading practice: the sentence about ``attribute`` among 0-3 sentences
    about the entity's other attributes, in random order, so it learns to pick the sentence that answers
    the question rather than a position."""
    others = [a for a in ATTRIBUTES if a != attribute]
    picked = [attribute, *rng.sample(others, rng.randint(0, len(others)))]
    rng.shuffle(picked)
    return " ".join(note(entity, a) for a in picked)


def note_request(question: Question) -> str:
    """What the sharer is asked in text-to-text communication (the paper's wording)."""
    return NOTE_TEMPLATE.format(question=question.text)


def read_prompt(note_text: str, question: Question) -> str:
    """How the receiver sees a note (the evaluation protocol's layout; the receiver is trained on it)."""
    return NOTE_CONTEXT_TEMPLATE.format(note=note_text, prompt=question.text)


def swap_partners(qs: list[Question], world: World, seed: int) -> list[Question]:
    """For each question, a question of the same attribute and template about another entity whose
    answer differs (the swapped-sharer control). Partners are drawn from the same list, so they are
    test entities too; ``None`` never occurs while the list holds at least two answers per attribute."""
    rng = random.Random(seed)
    by_key: dict[tuple[str, int], list[Question]] = {}
    for q in qs:
        by_key.setdefault((q.attribute, q.template), []).append(q)
    out = []
    for q in qs:
        pool = [p for p in by_key[(q.attribute, q.template)] if p.answer != q.answer]
        if not pool:
            raise ValueError(f"no swap partner with a different answer for {q.attribute!r}; use more entities")
        out.append(rng.choice(pool))
    return out
