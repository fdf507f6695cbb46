"""Strict answer-letter parsing and exact match."""

from __future__ import annotations

import pytest

from c2c.eval.parsing import exact_match, normalize_text, option_letters, parse_choice

CHOICES = ["Venus", "Mercury", "Earth", "Mars"]


@pytest.mark.parametrize(
    ("text", "letter", "method"),
    [
        ("The correct answer is B", "B", "explicit"),
        ("The correct answer is B.", "B", "explicit"),
        ("the correct answer is: **C**", "C", "explicit"),
        ("The correct answer is (D) Mars", "D", "explicit"),
        ("I think about it. The correct answer is A because Venus is hot.", "A", "explicit"),
        ("The answer is A.", "A", "explicit"),
        ("Final answer: C", "C", "explicit"),
        ("<think>maybe the correct answer is A</think>The correct answer is B", "B", "explicit"),
        ("正确答案是C。", "C", "explicit"),
        ("答案：B", "B", "explicit"),
        ("Option D is right.", "D", "marker"),
        ("B", "B", "bare"),
        ("(B)", "B", "bare"),
        ("**C**.", "C", "bare"),
        ("  D\n", "D", "bare"),
        ("B. Mercury", "B", "label"),
        ("(A) Venus, since it is the hottest", "A", "label"),
        ("C: Earth", "C", "label"),
        ("Mercury", "B", "option_text"),
        ("mercury.\nIt is the innermost planet.", "B", "option_text"),
    ],
)
def test_parses_answers(text: str, letter: str, method: str) -> None:
    parsed = parse_choice(text, CHOICES)
    assert (parsed.letter, parsed.method) == (letter, method)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "A plant needs light to grow.",  # article, not an option
        "I am not sure about this one.",  # pronoun
        "The answer is a planet close to the Sun.",  # lower-case letter word
        "The correct answer is E",  # not an option of a 4-choice question
        "The correct answer is Bob",  # letter running into a word
        "The correct answer is A/B/C/D",  # instruction echoed
        "The correct answer is B. On reflection, the correct answer is C.",  # two different claims
        "Celsius measured the Boiling point.",  # stray capitals
        "Answer: A lot of planets orbit the Sun.",
        "Everything is relative, Dr. Who said.",
        "Jupiter",  # not an option text
    ],
)
def test_never_picks_a_stray_capital(text: str) -> None:
    assert parse_choice(text, CHOICES).letter is None


def test_conflict_is_reported() -> None:
    assert parse_choice("The answer is B. Final answer: C", 4).method == "conflict"


def test_repeated_consistent_claims_are_fine() -> None:
    assert parse_choice("The correct answer is C. Yes, the correct answer is C.", 4).letter == "C"


def test_option_count_limits_letters() -> None:
    assert parse_choice("The correct answer is E", 5).letter == "E"
    assert parse_choice("E", 4).letter is None
    assert option_letters(3) == "ABC"
    with pytest.raises(ValueError, match="1..26"):
        option_letters(0)


def test_option_text_must_be_unique() -> None:
    assert parse_choice("7", ["7", "7", "8", "9"]).letter is None


def test_exact_match() -> None:
    assert exact_match("Paris", ["Paris"])
    assert exact_match("  the Paris.\nBecause it is the capital.", "paris")
    assert exact_match("Light blue", ["blue", "light blue"])
    assert not exact_match("Paris, France", "Paris")
    assert not exact_match("", "Paris")
    assert not exact_match("<think>Paris</think>", "Paris")
    assert normalize_text("The  Eiffel-Tower!") == "eiffel tower"
