"""Strict answer parsing: the option letter of a multiple-choice answer, and exact match for open QA.

The reference harness searches answer text for *any* capital A-D and falls back to the last capital letter
of the whole response, so "A" of "A plant ..." or the "C" of "Celsius" can be scored as the model's choice.
Here a letter is only ever taken from a place where a letter *is* the answer:

1. ``explicit``: "The correct answer is X" (also "the answer is X", "Final answer: X", "Answer: X",
   "答案是 X"). If such statements name different letters, the result is ``conflict`` (unparsed): we never
   guess between them.
2. ``marker``: "Option X" / "Choice: X".
3. ``bare``: the whole response is one letter, optionally decorated: ``B``, ``(B)``, ``B.``, ``**B**``.
4. ``label``: the response starts with an option label followed by text: ``B. Paris`` / ``(B) Paris``
   / ``B) Paris`` / ``B: Paris``.
5. ``option_text``: the first line of the response equals the text of exactly one option.

In every rule the letter must be one of the question's option letters, written in upper case, and must not
run on into a word or a letter list (``is Bob`` is not ``B``; an echoed ``A/B/C/D`` is nothing). "A" / "I"
followed by a lower-case word read as the English article / pronoun (``Answer: A lot``), unless that word
is a connective such as "because" or "is". Anything else is unparsed and scored as wrong by the runner.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass

__all__ = ["ParsedChoice", "exact_match", "normalize_text", "option_letters", "parse_choice", "strip_thinking"]

_THINK_RE = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
# A letter that does not run on into an ASCII word ("B" of "Bob" is not a letter answer) nor into a list of
# letters ("A/B/C/D" echoed from the instructions).
_END = r"(?![A-Za-z0-9_/])"
# Decorations that may wrap the letter: markdown bold/italics, brackets, quotes.
_OPEN = r"[\s\*_\"'`“‘（(\[]*"
_EXPLICIT_RE = re.compile(
    r"(?:(?:correct|right|final|best)\s+(?:answer|option|choice)|\banswer)\s*"
    r"(?:(?:is|would\s+be|will\s+be)\s*[:：]?|[:：])\s*"
    r"(?:option\s+|choice\s+)?" + _OPEN + r"([A-Za-z])" + _END,
    re.IGNORECASE,
)
_CHINESE_RE = re.compile(r"(?:正确)?答案(?:应该|应)?(?:是|为|：|:)\s*" + _OPEN + r"([A-Za-z])" + _END)
_MARKER_RE = re.compile(
    r"(?:^|\n|\s)(?:answer|option|choice|response)\s*[:：]?\s*" + _OPEN + r"([A-Za-z])" + _END,
    re.IGNORECASE,
)
_BARE_RE = re.compile(r"^" + _OPEN + r"([A-Z])" + r"[\s\*_\"'`”’）)\].:。]*$")
_LABEL_RE = re.compile(r"^" + r"[\s\*_]*(?:\(([A-Z])\)|([A-Z])[\).:：])\s*\S")


@dataclass(frozen=True)
class ParsedChoice:
    """Result of :func:`parse_choice`: ``letter`` is None when the answer could not be parsed."""

    letter: str | None
    method: str  # explicit | marker | bare | label | option_text | conflict | none


def option_letters(num_choices: int) -> str:
    """The option letters of a question with ``num_choices`` options: 4 -> "ABCD"."""
    if not 1 <= num_choices <= 26:
        raise ValueError(f"a multiple-choice question needs 1..26 options, got {num_choices}")
    return string.ascii_uppercase[:num_choices]


def strip_thinking(text: str) -> str:
    """Drop ``<think>...</think>`` blocks (an unterminated block swallows the rest of the text)."""
    return _THINK_RE.sub(" ", text).strip()


# Words after which an upper-case "A" / "I" is still an option letter ("A because ...", "A is correct").
_CONNECTIVES = frozenset(
    ["because", "since", "as", "and", "which", "is", "was", "would", "seems", "appears", "for", "with"]
)


def _is_article(text: str, end: int, letter: str) -> bool:
    """True when ``letter`` ending at ``text[end]`` reads as the English word "A"/"I" ("A plant", "I think")."""
    if letter not in "AI":
        return False
    m = re.match(r"\s+([a-z]+)", text[end:])
    return m is not None and m.group(1) not in _CONNECTIVES


def _letters(pattern: re.Pattern[str], text: str, valid: str) -> list[str]:
    found = []
    for m in pattern.finditer(text):
        letter = m.group(1)
        # The letter itself must be written upper case even when the surrounding phrase is matched
        # case-insensitively, so "the answer is a plant" never yields "A".
        if letter in valid and not _is_article(text, m.end(1), letter):
            found.append(letter)
    return found


def normalize_text(text: str) -> str:
    """Lower-case, NFKC, drop punctuation / articles, collapse whitespace (SQuAD-style normalisation)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def parse_choice(text: str, choices: list[str] | int) -> ParsedChoice:
    """Parse the option letter the model chose.

    Args:
        text: the model's answer (thinking blocks are ignored).
        choices: the option texts (enables rule 5) or just their number.
    Returns:
        :class:`ParsedChoice`; ``letter`` is one of the option letters or None.
    """
    num = choices if isinstance(choices, int) else len(choices)
    valid = option_letters(num)
    body = strip_thinking(text)
    if not body:
        return ParsedChoice(None, "none")

    for method, pattern in (("explicit", _EXPLICIT_RE), ("explicit", _CHINESE_RE), ("marker", _MARKER_RE)):
        found = _letters(pattern, body, valid)
        if found:
            if len(set(found)) > 1:
                return ParsedChoice(None, "conflict")
            return ParsedChoice(found[0], method)

    m = _BARE_RE.match(body)
    if m and m.group(1) in valid:
        return ParsedChoice(m.group(1), "bare")
    m = _LABEL_RE.match(body)
    if m:
        letter = m.group(1) or m.group(2)
        if letter in valid:
            return ParsedChoice(letter, "label")

    if not isinstance(choices, int):
        first = normalize_text(body.splitlines()[0])
        hits = [valid[i] for i, c in enumerate(choices) if first and normalize_text(c) == first]
        if len(hits) == 1:
            return ParsedChoice(hits[0], "option_text")
    return ParsedChoice(None, "none")


def exact_match(prediction: str, answers: str | list[str]) -> bool:
    """Open-ended QA: the normalised prediction equals one normalised gold answer.

    Only the first non-empty line of the prediction counts (models often add an explanation after it);
    thinking blocks are ignored.
    """
    golds = [answers] if isinstance(answers, str) else list(answers)
    lines = [ln for ln in strip_thinking(prediction).splitlines() if ln.strip()]
    if not lines:
        return False
    pred = normalize_text(lines[0])
    return any(pred == normalize_text(g) for g in golds if normalize_text(g))
