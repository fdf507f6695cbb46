"""Benchmarks from local files (JSONL, JSON, CSV or parquet, read with ``datasets``).

Accepted layouts (one row per question; the public releases as downloaded from their hubs / sites):

===============  ===========================================================================================
format           columns
===============  ===========================================================================================
``mmlu-redux``   ``question`` str, ``choices`` list[str], ``answer`` int (0-based) or letter; optional
                 ``error_type`` ("ok", "wrong_groundtruth", ...; kept in ``meta``, ``drop_flagged=True`` keeps
                 only "ok"), ``subject``. Release layout ``<subject>/test-00000-of-00001.parquet``.
``openbookqa``   ``id``, ``question_stem`` str, ``choices`` {``text``: list, ``label``: list}, ``answerKey``;
                 or the original AllenAI JSONL ``{"id", "question": {"stem", "choices": [{"text",
                 "label"}]}, "answerKey"}``. Optional ``fact1`` kept in ``meta``.
``arc``          ``id``, ``question`` str, ``choices`` {``text``, ``label``}, ``answerKey`` (labels "A".. or
                 "1".., 3 to 5 options); or the original AllenAI JSONL (as for OpenBookQA).
``ceval``        ``id``, ``question``, ``A``, ``B``, ``C``, ``D``, ``answer`` letter, optional ``explanation``.
                 Release layouts ``<subject>/val-*.parquet`` or ``val/<subject>_val.csv``. The public test
                 split has no answers: loading it raises.
``qa``           ``question`` (or ``prompt``) str, ``answer`` str or ``answers`` list[str]; optional ``id``.
===============  ===========================================================================================

Every format also accepts optional ``subject`` and ``split`` columns. Without them the subject and split are
read from the path: ``<subject>/<split>-00000-of-00001.parquet``, ``<subject>_<split>.csv``,
``<split>/<subject>.jsonl``, ``<split>.jsonl``. ``format="auto"`` picks the format from the columns.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from c2c.eval.parsing import option_letters

__all__ = ["FORMATS", "Benchmark", "Question", "benchmark_files", "detect_format", "load_benchmark"]

FORMATS: tuple[str, ...] = ("mmlu-redux", "openbookqa", "arc", "ceval", "qa")
_ALIASES = {
    "mmlu": "mmlu-redux",
    "mmlu_redux": "mmlu-redux",
    "obqa": "openbookqa",
    "arc-challenge": "arc",
    "arc_challenge": "arc",
    "ai2_arc": "arc",
    "c-eval": "ceval",
    "open": "qa",
}
_EXTENSIONS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_SPLITS = {"train": "train", "validation": "validation", "val": "validation", "dev": "dev", "test": "test"}
_SHARD_RE = re.compile(r"-\d{5}-of-\d{5}$")


@dataclass
class Question:
    """One benchmark item. Multiple choice: ``choices`` non-empty and ``answer`` a letter."""

    uid: str
    question: str
    choices: list[str]
    answer: str
    answers: list[str] = field(default_factory=list)  # all accepted gold answers (open QA)
    subject: str | None = None
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_multiple_choice(self) -> bool:
        return bool(self.choices)


@dataclass
class Benchmark:
    """Questions of one benchmark, after the subject / split filters and the limit."""

    name: str
    format: str
    questions: list[Question]
    files: list[str]
    filters: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "mc" if self.format != "qa" else "qa"

    def __len__(self) -> int:
        return len(self.questions)

    def subjects(self) -> list[str]:
        return sorted({q.subject for q in self.questions if q.subject})


def benchmark_files(path: str | Path) -> list[Path]:
    """The data files at ``path``: a file, a directory (searched recursively) or a glob pattern."""
    p = Path(path)
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix in _EXTENSIONS and f.is_file())
    else:
        files = sorted(Path(f) for f in glob.glob(str(path), recursive=True) if Path(f).suffix in _EXTENSIONS)
    files = [f for f in files if f.suffix in _EXTENSIONS]
    if not files:
        raise FileNotFoundError(
            f"no benchmark file at {str(path)!r}: give a .jsonl/.json/.csv/.parquet file, a directory of them or "
            "a glob pattern"
        )
    return files


def _path_subject_split(path: Path) -> tuple[str | None, str | None]:
    """(subject, split) read from a release path; see the module docstring for the layouts."""
    stem = _SHARD_RE.sub("", path.stem)
    parent = path.parent.name
    if stem.lower() in _SPLITS:
        split = _SPLITS[stem.lower()]
        subject = parent if parent and parent.lower() not in _SPLITS else None
        return subject, split
    m = re.match(r"^(.*?)[_\-](train|validation|val|dev|test)$", stem, re.IGNORECASE)
    if m:
        return m.group(1), _SPLITS[m.group(2).lower()]
    return stem, _SPLITS.get(parent.lower())


def _read(path: Path) -> datasets.Dataset:
    builder = _EXTENSIONS[path.suffix]
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        if builder == "json":
            return datasets.Dataset.from_json(str(path))
        if builder == "csv":
            return datasets.Dataset.from_csv(str(path))
        return datasets.Dataset.from_parquet(str(path))
    except Exception as exc:  # datasets raises several types; name the file in every case
        raise ValueError(f"cannot read benchmark file {path}: {exc}") from exc
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def detect_format(columns: Iterable[str], first_row: dict[str, Any] | None = None) -> str:
    """The :data:`FORMATS` entry that fits a table with these columns."""
    cols = set(columns)
    if "question_stem" in cols:
        return "openbookqa"
    if {"A", "B", "C", "D", "answer"} <= cols:
        return "ceval"
    if "answerKey" in cols:
        q = (first_row or {}).get("question")
        if isinstance(q, dict):  # original AllenAI layout: ids tell the two apart
            return "openbookqa" if str((first_row or {}).get("id", "")).count("_") == 0 else "arc"
        return "arc"
    if {"question", "choices", "answer"} <= cols:
        return "mmlu-redux"
    if ({"question", "prompt"} & cols) and ({"answer", "answers"} & cols):
        return "qa"
    raise ValueError(
        f"cannot tell the benchmark format from columns {sorted(cols)}; pass format= one of {', '.join(FORMATS)} "
        "(see c2c.eval.benchmarks for the expected columns)"
    )


def _labelled_choices(choices: Any) -> tuple[list[str], list[str]]:
    """(texts, labels) from {"text": [...], "label": [...]} or [{"text", "label"}, ...]."""
    if isinstance(choices, dict):
        return [str(t) for t in choices["text"]], [str(lab) for lab in choices["label"]]
    return [str(c["text"]) for c in choices], [str(c["label"]) for c in choices]


def _letter_from_label(key: str, labels: list[str]) -> str:
    key = str(key).strip()
    if key not in labels:
        raise ValueError(f"answer key {key!r} is not one of the option labels {labels}")
    return option_letters(len(labels))[labels.index(key)]


def _row_to_question(fmt: str, row: dict[str, Any], index: int, file_tag: str) -> Question:
    uid = str(row.get("id") if row.get("id") not in (None, "") else f"{file_tag}#{index}")
    if fmt == "mmlu-redux":
        choices = [str(c) for c in row["choices"]]
        ans = row["answer"]
        letters = option_letters(len(choices))
        if isinstance(ans, str) and not ans.strip().isdigit():
            letter = ans.strip().upper()
        else:
            letter = letters[int(ans)] if 0 <= int(ans) < len(choices) else "?"
        if letter not in letters:
            raise ValueError(f"answer {ans!r} does not name one of {len(choices)} options")
        meta: dict[str, Any] = {
            k: row[k] for k in ("error_type", "source", "correct_answer", "potential_reason") if k in row
        }
        return Question(uid, str(row["question"]), choices, letter, [letter], meta=meta)
    if fmt in ("openbookqa", "arc"):
        q = row.get("question_stem") or row["question"]
        if isinstance(q, dict):  # original AllenAI JSONL
            texts, labels = _labelled_choices(q["choices"])
            q = q["stem"]
        else:
            texts, labels = _labelled_choices(row["choices"])
        letter = _letter_from_label(row["answerKey"], labels)
        meta = {"fact1": row["fact1"]} if row.get("fact1") else {}
        return Question(uid, str(q), texts, letter, [letter], meta=meta)
    if fmt == "ceval":
        choices = [str(row[k]) for k in "ABCD"]
        letter = str(row.get("answer") or "").strip().upper()
        if letter not in "ABCD" or not letter:
            raise ValueError(
                f"C-Eval row {uid} has no answer ({row.get('answer')!r}); the public C-Eval test split has no "
                "answers, evaluate on split 'val' (or 'dev')"
            )
        meta = {"explanation": row["explanation"]} if row.get("explanation") else {}
        return Question(uid, str(row["question"]), choices, letter, [letter], meta=meta)
    if fmt == "qa":
        text = row.get("question") or row.get("prompt")
        golds = row.get("answers") if row.get("answers") is not None else row.get("answer")
        golds = [str(g) for g in golds] if isinstance(golds, (list, tuple)) else [str(golds)]
        if not text or not golds or not golds[0]:
            raise ValueError(f"open-QA row {uid} needs a 'question' and an 'answer' (or 'answers')")
        return Question(uid, str(text), [], golds[0], golds)
    raise ValueError(f"unknown benchmark format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _as_list(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [s.strip() for s in items if s.strip()]


def load_benchmark(
    path: str | Path,
    *,
    format: str = "auto",
    subject: str | Sequence[str] | None = None,
    split: str | Sequence[str] | None = None,
    limit: int | None = None,
    drop_flagged: bool = False,
    name: str | None = None,
) -> Benchmark:
    """Load questions from local files.

    Args:
        path: file, directory or glob (see :func:`benchmark_files`).
        format: one of :data:`FORMATS` (aliases: ``arc-challenge``, ``c-eval``, ``mmlu``...) or "auto".
        subject: keep only these subjects (comma-separated string or list).
        split: keep only these splits ("val" and "validation" are the same).
        limit: keep the first ``limit`` questions after filtering (file order, files sorted by path).
        drop_flagged: MMLU-Redux: keep only rows whose ``error_type`` is "ok".
        name: benchmark name in reports (default: the format).
    """
    fmt = _ALIASES.get(format.lower(), format.lower())
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown benchmark format {format!r}; choose one of auto, {', '.join(FORMATS)}")
    subjects = _as_list(subject)
    splits = [_SPLITS.get(s.lower(), s.lower()) for s in _as_list(split) or []] or None
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")

    files = benchmark_files(path)
    questions: list[Question] = []
    detected: set[str] = set()
    for f in files:
        path_subject, path_split = _path_subject_split(f)
        table = _read(f)
        if len(table) == 0:
            continue
        ffmt = fmt if fmt != "auto" else detect_format(table.column_names, table[0])
        detected.add(ffmt)
        for i, row in enumerate(table):
            q_subject = str(row["subject"]) if row.get("subject") else path_subject
            q_split = _SPLITS.get(str(row["split"]).lower(), str(row["split"])) if row.get("split") else path_split
            if subjects is not None and q_subject not in subjects:
                continue
            if splits is not None and q_split not in splits:
                continue
            if drop_flagged and row.get("error_type") not in (None, "ok"):
                continue
            try:
                q = _row_to_question(ffmt, row, i, f"{f.stem}")
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{f} row {i}: {exc} (format {ffmt!r}; see c2c.eval.benchmarks)") from exc
            q.subject, q.split = q_subject, q_split
            questions.append(q)
        if limit is not None and len(questions) >= limit:
            break
    if len(detected) > 1:
        raise ValueError(f"files under {path} mix benchmark formats {sorted(detected)}; load them separately")
    if limit is not None:
        questions = questions[:limit]
    seen: set[str] = set()
    for q in questions:  # ids must be unique per run: records are keyed by them
        if q.uid in seen:
            q.uid = f"{q.uid}@{q.subject or ''}/{q.split or ''}"
        seen.add(q.uid)
    if not questions:
        raise ValueError(
            f"no questions left in {path} after filters subject={subjects} split={splits} drop_flagged={drop_flagged}"
        )
    final_fmt = fmt if fmt != "auto" else detected.pop()
    return Benchmark(
        name=name or final_fmt,
        format=final_fmt,
        questions=questions,
        files=[str(f) for f in files],
        filters={"subject": subjects, "split": splits, "limit": limit, "drop_flagged": drop_flagged},
    )
