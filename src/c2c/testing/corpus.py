"""The default training corpus of the local test tokenizers (see :mod:`c2c.testing.tokenizers`)."""

from __future__ import annotations

import random

__all__ = ["default_corpus"]

_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "Water boils at 100 degrees Celsius at sea level, and freezes at 0.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The mitochondria is often called the powerhouse of the cell.",
    "Which of the following is a prime number? A) 21 B) 23 C) 25 D) 27",
    "The correct answer is B.",
    "Paris is the capital of France; Berlin is the capital of Germany.",
    "In 1969, Apollo 11 landed on the Moon, and Neil Armstrong walked on its surface.",
    'She said, "Don\'t forget your umbrella!" -- it was raining (again).',
    "Prices rose by 3.5% in 2023, while wages grew by only 2.1%.",
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n\tprint(i * i)\n",
    "E = mc^2, where c is the speed of light: about 299,792,458 m/s.",
    "Question: What is 12 + 30? Answer: 42.",
    "Please explain the difference between weather and climate in two sentences.",
    "Tokenizers split text into pieces; models read the pieces as integer ids.",
    "The sharer model writes its key-value cache, and the receiver model reads it.",
    "Email me at someone@example.com or visit https://example.org/path?q=1&r=2.",
    "Café, naïve, façade, résumé, jalapeño and Straße are borrowed words.",
    "日本語のテキストも少し含まれています。中文也有一点。",
    "Emoji appear in chats: 😀 👍 🎉 ❤️ and sometimes 🤖.",
    "Greek letters α, β, γ and math symbols ≤ ≥ ≠ ∞ √ ∑ show up in science.",
    "Русский текст и العربية تظهر أحيانًا أيضًا.",
    "Ordered list:\n1. first\n2. second\n3. third\n",
    "  Indented line with   multiple   spaces and a trailing tab\t",
    "Yes. No. Maybe? Certainly! Absolutely... (Perhaps.)",
    "The year 2024 had 366 days because it was a leap year.",
    "An apple a day keeps the doctor away, or so they say.",
    "Machine learning models learn patterns from data rather than explicit rules.",
]

_WORDS = [
    "time",
    "person",
    "year",
    "way",
    "day",
    "thing",
    "man",
    "world",
    "life",
    "hand",
    "part",
    "child",
    "eye",
    "woman",
    "place",
    "work",
    "week",
    "case",
    "point",
    "government",
    "company",
    "number",
    "group",
    "problem",
    "fact",
    "river",
    "mountain",
    "city",
    "country",
    "ocean",
    "planet",
    "star",
    "atom",
    "cell",
    "energy",
    "light",
    "sound",
    "music",
    "language",
    "history",
    "science",
    "animal",
    "plant",
    "tree",
    "flower",
    "stone",
    "metal",
    "water",
    "fire",
    "quickly",
    "slowly",
    "carefully",
    "always",
    "never",
    "often",
    "sometimes",
    "usually",
    "rarely",
    "really",
    "very",
    "quite",
    "rather",
]


def default_corpus(n_generated: int = 300, seed: int = 0) -> list[str]:
    """A small, varied training corpus: English prose, questions, numbers, punctuation, code, URLs and some
    non-Latin scripts and emoji. Deterministic for a given ``seed``; trains a tokenizer in milliseconds."""
    rng = random.Random(seed)
    out = list(_SENTENCES)
    for i in range(n_generated):
        words = rng.choices(_WORDS, k=rng.randint(4, 12))
        kind = i % 4
        if kind == 0:
            out.append(" ".join(words).capitalize() + ".")
        elif kind == 1:
            a, b = rng.randint(0, 999), rng.randint(0, 999)
            out.append(f"What is {a} + {b}? It is {a + b}. The {words[0]} has {rng.randint(2, 90)} {words[1]}s.")
        elif kind == 2:
            out.append(f"The {words[0]} of the {words[1]} is {rng.choice(_WORDS)}, not {rng.choice(_WORDS)}!")
        else:
            out.append(f"- {words[0]}: {rng.random():.3f}; {words[1]} ({rng.randint(1900, 2030)})")
    return out
