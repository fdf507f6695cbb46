"""Prompt texts of the evaluation protocol (zero-shot, chat template, one user turn).

Every template is a plain ``str.format`` template so a run's JSON records exactly what was asked.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "EXEMPLAR_INTRO",
    "MC_TEMPLATE",
    "NOTE_CONTEXT_TEMPLATE",
    "NOTE_TEMPLATE",
    "QA_TEMPLATE",
    "PromptConfig",
    "format_options",
]

MC_TEMPLATE = (
    "Answer the following multiple-choice question.\n\n"
    "{question}\n\n"
    'Reply with one line of the form "The correct answer is X", where X is one of {letters}. '
    "Do not explain."
)
"""Multiple-choice user message; ``{question}`` is the question with its lettered options."""

QA_TEMPLATE = "Answer the following question with a short answer only (a few words, no explanation).\n\n{question}"
"""Open-ended user message."""

NOTE_TEMPLATE = (
    "In one clear sentence, describe the most essential background knowledge needed to answer the question: {question}"
)
"""Text-to-text: what the sharer is asked to write (the paper's wording)."""

NOTE_CONTEXT_TEMPLATE = "Background knowledge: {note}\n\n{prompt}"
"""Text-to-text: how the sharer's note is put in front of the receiver's question."""

EXEMPLAR_INTRO = "Here are some solved example questions.\n\n"
"""Cache-enrichment oracle / few-shot: heading of the exemplar block."""


def format_options(question: str, choices: list[str], *, headings: bool = True) -> str:
    """``question`` followed by its options, one per line: ``A. first option``.

    ``headings`` adds "Question:" / "Options:" lines (the answer prompt); without them the text reads as a
    plain question (what the T2T note prompt quotes).
    """
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    lines = [f"Question: {question.strip()}", "Options:"] if headings else [question.strip()]
    lines += [f"{letters[i]}. {str(c).strip()}" for i, c in enumerate(choices)]
    return "\n".join(lines)


@dataclass
class PromptConfig:
    """The templates one run uses (recorded in the run JSON)."""

    mc_template: str = MC_TEMPLATE
    qa_template: str = QA_TEMPLATE
    note_template: str = NOTE_TEMPLATE
    note_context_template: str = NOTE_CONTEXT_TEMPLATE
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        for name, fields in (
            ("mc_template", ("{question}",)),
            ("qa_template", ("{question}",)),
            ("note_template", ("{question}",)),
            ("note_context_template", ("{note}", "{prompt}")),
        ):
            template = getattr(self, name)
            missing = [f for f in fields if f not in template]
            if missing:
                raise ValueError(f"PromptConfig.{name} must contain {', '.join(missing)}; got {template!r}")
