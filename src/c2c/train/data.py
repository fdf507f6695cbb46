"""Training data: chat files -> rendered, aligned, length-filtered examples -> ``C2CBatch``.

One example = instruction (every turn but the last, rendered with the receiver's chat template and the
generation prompt, thinking disabled) + response (the last assistant turn). The loss covers the response
tokens only; the fuser rewrites the instruction's content rows (never template rows, never the last
instruction token); each sharer reads its aligned ids (identity when the tokenizers match).

Layouts (one file may mix them row by row with ``layout="auto"``):

- ``messages``: ``[{"role": "user", "content": ...}, ...]``
- ``conversations`` (OpenHermes / ShareGPT): ``[{"from": "human", "value": ...}, ...]``
- ``prompt_response``: two text fields (a pair without chat template trains on these as plain text).
"""

from __future__ import annotations

import glob
import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DataError",
    "DataStats",
    "ExampleRenderer",
    "load_rows",
    "prepare_dataset",
    "resolve_data_files",
]

RENDER_VERSION = "1"  # bump when rendering changes, so cached renders are not reused

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_ROLE_MAP = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "chatgpt": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
    "ipython": "tool",
}


class DataError(ValueError):
    """Training data that cannot be used; the message names the file or row and the fix."""


# ---------------------------------------------------------------------- loading


def resolve_data_files(paths: str | Path | Sequence[str | Path]) -> tuple[str, list[str]]:
    """Expand globs and check that every file exists and has a supported extension.

    Returns:
        the ``datasets`` builder ("json" or "parquet") and the file list.
    """
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise DataError("no data files given; pass --data with one or more .jsonl, .json or .parquet files")
    files: list[str] = []
    for item in items:
        text = str(item)
        if any(ch in text for ch in "*?["):
            matched = sorted(glob.glob(text))
            if not matched:
                raise DataError(f"data pattern {text!r} matches no file")
            files.extend(matched)
        else:
            files.append(text)
    builders = set()
    for f in files:
        p = Path(f)
        if p.is_dir():
            raise DataError(f"data path {f} is a folder; pass the .jsonl/.json/.parquet files in it (a glob works)")
        if not p.is_file():
            raise DataError(f"data file {f} does not exist")
        builder = _BUILDERS.get(p.suffix.lower())
        if builder is None:
            raise DataError(f"data file {f}: unsupported extension '{p.suffix}'; use .jsonl, .json or .parquet")
        if p.stat().st_size == 0:
            raise DataError(f"data file {f} is empty")
        builders.add(builder)
    if len(builders) > 1:
        raise DataError(f"data files mix JSON and parquet ({', '.join(files)}); convert them to one format")
    return builders.pop(), files


def load_rows(source: Any, *, max_examples: int | None = None) -> Any:
    """Rows of ``source`` as a ``datasets.Dataset``.

    ``source``: file path(s) or glob(s) (JSONL, JSON list, parquet), a ``datasets.Dataset``, or a list of
    dicts. ``max_examples`` keeps the first N rows (the reference trains on the first 500k).
    """
    import datasets

    if isinstance(source, datasets.Dataset):
        ds = source
    elif isinstance(source, (list, tuple)) and source and isinstance(source[0], dict):
        try:
            # from_list would take the columns of the first row only; rows may mix layouts
            keys = list(dict.fromkeys(k for row in source for k in row))
            ds = datasets.Dataset.from_dict({k: [row.get(k) for row in source] for k in keys})
        except Exception as exc:  # pyarrow cannot unify row schemas
            raise DataError(f"in-memory rows could not be turned into a dataset: {_root_cause(exc)}") from exc
    elif isinstance(source, (str, Path, list, tuple)):
        builder, files = resolve_data_files(source)
        try:
            ds = datasets.load_dataset(builder, data_files=files, split="train")
        except Exception as exc:
            raise DataError(
                f"could not read {', '.join(files)} as {builder}: {_root_cause(exc)}. "
                "JSON data must be one object per line (JSONL) or a single top-level list of objects"
            ) from exc
    else:
        raise DataError(f"unsupported data source {type(source).__name__}; give file paths, a Dataset or a list of dicts")
    if len(ds) == 0:
        raise DataError(f"the data source holds no rows ({_describe(source)})")
    if max_examples is not None and len(ds) > max_examples:
        ds = ds.select(range(max_examples))
    return ds


def _root_cause(exc: BaseException) -> str:
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    return f"{type(seen).__name__}: {seen}" if seen is not exc else f"{type(exc).__name__}: {exc}"


def _describe(source: Any) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (list, tuple)) and source and isinstance(source[0], (str, Path)):
        return ", ".join(str(s) for s in source)
    return type(source).__name__


# ---------------------------------------------------------------------- turns


@dataclass
class Fields:
    """Where each layout keeps its turns."""

    layout: str = "auto"
    messages: str = "messages"
    conversations: str = "conversations"
    prompt: str = "prompt"
    response: str = "response"


def extract_messages(row: dict[str, Any], fields: Fields, where: str) -> tuple[list[dict[str, str]], bool]:
    """Normalise one row to ``[{"role", "content"}, ...]`` ending with the response turn.

    Returns the messages and whether they came from plain prompt/response fields. Turns after the last
    assistant turn are dropped (the response is the last assistant turn).
    """
    layout = fields.layout
    if layout == "auto":
        if row.get(fields.messages) is not None:
            layout = "messages"
        elif row.get(fields.conversations) is not None:
            layout = "conversations"
        elif row.get(fields.prompt) is not None and row.get(fields.response) is not None:
            layout = "prompt_response"
        else:
            present = sorted(k for k, v in row.items() if v is not None)
            raise DataError(
                f"{where}: no '{fields.messages}', '{fields.conversations}' or '{fields.prompt}'/'{fields.response}' "
                f"fields (found {present}); name the fields with messages_field / conversations_field / "
                "prompt_field / response_field"
            )
    if layout == "prompt_response":
        prompt, response = row.get(fields.prompt), row.get(fields.response)
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise DataError(f"{where}: '{fields.prompt}' and '{fields.response}' must both be strings")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], True

    if layout == "messages":
        turns, role_key, text_key = row.get(fields.messages), "role", "content"
    else:
        turns, role_key, text_key = row.get(fields.conversations), "from", "value"
    name = fields.messages if layout == "messages" else fields.conversations
    if not isinstance(turns, (list, tuple)) or not turns:
        raise DataError(f"{where}: '{name}' must be a non-empty list of turns, got {turns!r:.80}")
    messages: list[dict[str, str]] = []
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get(role_key) is None:
            raise DataError(f"{where}: turn {t} of '{name}' must be an object with '{role_key}' and '{text_key}'")
        raw_role = str(turn[role_key])
        role = _ROLE_MAP.get(raw_role.lower())
        if role is None:
            raise DataError(
                f"{where}: turn {t} has unknown role {raw_role!r}; known roles: {', '.join(sorted(_ROLE_MAP))}"
            )
        messages.append({"role": role, "content": _text(turn.get(text_key), where, t)})
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise DataError(
            f"{where}: the conversation has no assistant turn, so there is no response to train on; "
            "remove the row or add the assistant's reply"
        )
    messages = messages[: last + 1]
    if not any(m["role"] == "user" for m in messages[:-1]):
        raise DataError(f"{where}: no user turn before the assistant's reply; nothing to condition the response on")
    return messages, False


def _text(content: Any, where: str, turn: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal-style parts: keep the text parts
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text"]
        if len(parts) == len(content):
            return "".join(str(p) for p in parts)
    raise DataError(f"{where}: turn {turn} content must be text, got {type(content).__name__}")


# ---------------------------------------------------------------------- rendering


class ExampleRenderer:
    """Turns one data row into token ids: receiver instruction + response, and per-sharer alignments.

    Args:
        receiver_tokenizer: fast tokenizer of the receiver (its tokens are the master).
        aligners: one ``TokenAligner`` per sharer.
        chat: render with the receiver's chat template (else plain prompt/response text; chat-layout
            rows then use the aligner's plain ``role: content`` rendering).
        on_template_mismatch: "warn" (fall back to response content + eos, counted) or "error".
        alignment_shift: the model's ``C2CConfig.alignment_shift`` (to count the rows really fused).
    """

    def __init__(
        self,
        receiver_tokenizer: Any,
        aligners: Sequence[Any],
        *,
        chat: bool,
        enable_thinking: bool = False,
        on_template_mismatch: str = "warn",
        alignment_shift: int = 0,
        fields: Fields | None = None,
    ) -> None:
        if not aligners:
            raise ValueError("need one aligner per sharer (at least one)")
        if chat and not getattr(receiver_tokenizer, "chat_template", None):
            raise DataError(
                "use_chat_template is on but the receiver tokenizer has no chat template; set a template on the "
                "tokenizer or train on plain prompt/response fields (use_chat_template: false)"
            )
        self.tokenizer = receiver_tokenizer
        self.aligners = list(aligners)
        self.chat = chat
        self.enable_thinking = enable_thinking
        self.on_template_mismatch = on_template_mismatch
        self.alignment_shift = alignment_shift
        self.fields = fields or Fields()
        eos = receiver_tokenizer.eos_token_id
        self.eos_ids = [] if eos is None else [int(eos)]

    def __getstate__(self) -> dict[str, Any]:
        # TokenAligner's caches do not survive pickling (datasets' worker processes need it): send the
        # tokenizers and strategy, rebuild the aligner on arrival (its caches are only caches).
        from c2c.alignment.tokens import TokenAligner

        state = dict(self.__dict__)
        state["aligners"] = [
            ("TokenAligner", a.receiver_tokenizer, a.sharer_tokenizer, a.strategy) if isinstance(a, TokenAligner) else a
            for a in self.aligners
        ]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from c2c.alignment.tokens import TokenAligner

        state["aligners"] = [
            TokenAligner(a[1], a[2], strategy=a[3]) if isinstance(a, tuple) and a[:1] == ("TokenAligner",) else a
            for a in state["aligners"]
        ]
        self.__dict__.update(state)

    def fingerprint(self) -> str:
        """Hash of everything that decides the rendered ids (for ``datasets`` caching)."""
        from c2c.alignment.tokens import fingerprint as tok_fingerprint

        payload = {
            "version": RENDER_VERSION,
            "receiver": tok_fingerprint(self.tokenizer),
            "sharers": [
                [tok_fingerprint(a.sharer_tokenizer), a.strategy, getattr(a, "identical", None)] for a in self.aligners
            ],
            "chat": self.chat,
            "thinking": self.enable_thinking,
            "mismatch": self.on_template_mismatch,
            "shift": self.alignment_shift,
            "fields": asdict(self.fields),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids)

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool, where: str) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt, enable_thinking=self.enable_thinking
            )
        except Exception as exc:  # jinja2 TemplateError, e.g. "System role not supported"
            raise DataError(f"{where}: the receiver's chat template failed on this conversation: {exc}") from exc

    def __call__(self, row: dict[str, Any], index: int) -> dict[str, Any]:
        where = f"row {index}"
        messages, plain = extract_messages(row, self.fields, where)
        instruction, reply = messages[:-1], messages[-1]
        mismatch = False
        if self.chat:
            aligned = [a.align_messages(instruction, add_generation_prompt=True, enable_thinking=self.enable_thinking) for a in self.aligners]
            instr_text = self._render(instruction, True, where)
            full_text = self._render(messages, False, where)
            if full_text.startswith(instr_text):
                response = self._encode(full_text[len(instr_text) :])
            else:
                mismatch = True
                if self.on_template_mismatch == "error":
                    raise DataError(
                        f"{where}: the receiver's chat template breaks the prefix property: the instruction rendered "
                        "with the generation prompt is not a prefix of the rendered conversation "
                        f"(they differ from character {_diverge(instr_text, full_text)}: instruction ends "
                        f"{instr_text[-40:]!r}, conversation continues {full_text[len(instr_text) - 40:][:80]!r}). "
                        "Fix the template, or set on_template_mismatch: warn to train on the response content + eos"
                    )
                response = self._encode(reply["content"]) + self.eos_ids
            if aligned[0].receiver_ids != self._encode(instr_text):
                raise DataError(f"{where}: the aligner rendered a different instruction than the receiver's template")
        elif plain:
            aligned = [a.align_text(instruction[0]["content"], add_special_tokens=True) for a in self.aligners]
            response = self._encode(reply["content"]) + self.eos_ids
        else:  # chat-layout rows for a receiver without a template: the aligner's plain rendering
            aligned = [a.align_messages(instruction, add_generation_prompt=True, enable_thinking=self.enable_thinking) for a in self.aligners]
            response = self._encode(reply["content"]) + self.eos_ids
        receiver_ids = list(aligned[0].receiver_ids)
        for k, a in enumerate(aligned[1:], start=1):
            if list(a.receiver_ids) != receiver_ids:
                raise DataError(f"{where}: sharer {k}'s alignment was built on different receiver ids")
        return {
            "receiver_ids": receiver_ids,
            "response_ids": response,
            "sharer_ids": [list(a.sharer_ids) for a in aligned],
            "sharer_index": [list(a.sharer_index) for a in aligned],
            "length": len(receiver_ids) + len(response),
            "n_fused": self._n_fused(aligned),
            "template_fallback": mismatch,
        }

    def _n_fused(self, aligned: Sequence[Any]) -> int:
        """Instruction rows the fuser rewrites (all sharers): slot j < n-1 reads index[j + shift] >= 0."""
        n = len(aligned[0].receiver_ids)
        fused = 0
        for j in range(n - 1):
            src = j + self.alignment_shift
            if src < n and any(a.sharer_index[src] >= 0 for a in aligned):
                fused += 1
        return fused


def _diverge(a: str, b: str) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


# ---------------------------------------------------------------------- filtering


@dataclass
class DataStats:
    """What happened to the rows of one data source."""

    name: str
    n_rows: int
    n_kept: int
    max_length: int
    n_too_long: int = 0
    n_nothing_to_fuse: int = 0
    n_template_fallback: int = 0
    first_fallback_row: int | None = None
    longest: int = 0
    shortest: int = 0
    response_tokens: int = 0

    @property
    def n_dropped(self) -> int:
        return self.n_too_long + self.n_nothing_to_fuse

    def summary(self) -> str:
        text = (
            f"{self.name}: {self.n_kept} of {self.n_rows} conversations kept; dropped {self.n_too_long} longer than "
            f"{self.max_length} receiver tokens and {self.n_nothing_to_fuse} with no instruction row to fuse"
        )
        if self.n_template_fallback:
            text += (
                f"; {self.n_template_fallback} rows (first: row {self.first_fallback_row}) trained on response content + "
                "eos because the chat template's instruction is not a prefix of its rendered conversation"
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare_dataset(
    source: Any,
    renderer: ExampleRenderer,
    *,
    max_length: int,
    max_examples: int | None = None,
    num_proc: int = 1,
    name: str = "train",
    progress: bool = True,
) -> tuple[Any, DataStats]:
    """Load, render and length-filter ``source``; raises :class:`DataError` when nothing is left."""
    import datasets

    rows = load_rows(source, max_examples=max_examples)
    fp = hashlib.sha256(f"{getattr(rows, '_fingerprint', '')}:{renderer.fingerprint()}".encode()).hexdigest()[:32]
    bars_were_on = datasets.is_progress_bar_enabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        rendered = rows.map(
            renderer,
            with_indices=True,
            remove_columns=rows.column_names,
            num_proc=num_proc if num_proc > 1 else None,
            new_fingerprint=fp,
            desc=f"rendering {name} conversations",
        )
    except DataError:
        raise
    except Exception as exc:
        # num_proc > 1 re-raises worker errors wrapped; surface a DataError when there is one
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, DataError):
                raise DataError(str(cause)) from exc
            cause = cause.__cause__ or cause.__context__
        raise
    finally:
        if not progress and bars_were_on:
            datasets.enable_progress_bars()
    lengths = np.asarray(rendered["length"], dtype=np.int64)
    n_fused = np.asarray(rendered["n_fused"], dtype=np.int64)
    fallback = np.asarray(rendered["template_fallback"], dtype=bool)
    too_long = lengths > max_length
    unfused = (~too_long) & (n_fused == 0)
    keep = np.flatnonzero(~too_long & ~unfused)
    stats = DataStats(
        name=name,
        n_rows=len(rendered),
        n_kept=int(keep.size),
        max_length=max_length,
        n_too_long=int(too_long.sum()),
        n_nothing_to_fuse=int(unfused.sum()),
        n_template_fallback=int(fallback.sum()),
        first_fallback_row=int(np.flatnonzero(fallback)[0]) if fallback.any() else None,
        longest=int(lengths.max()),
        shortest=int(lengths.min()),
    )
    if keep.size == 0:
        raise DataError(
            f"{stats.summary()}. Nothing is left to train on: the shortest conversation has {stats.shortest} "
            f"receiver tokens; raise max_length or check the data"
        )
    if stats.n_template_fallback:
        warnings.warn(stats.summary(), stacklevel=2)
    kept = rendered.select(keep.tolist()) if keep.size < len(rendered) else rendered
    stats.response_tokens = int(sum(len(r) for r in kept["response_ids"]))
    return kept, stats


def split_eval(dataset: Any, *, size: int | None, fraction: float, seed: int) -> tuple[Any, Any | None]:
    """Hold out ``size`` (or ``fraction``) rows for evaluation, chosen with ``seed``."""
    n = len(dataset)
    n_eval = size if size is not None else int(round(fraction * n))
    if n_eval <= 0:
        return dataset, None
    if n_eval >= n:
        raise DataError(f"the eval split ({n_eval} rows) would take all {n} training rows; lower eval_size/eval_fraction")
    order = np.random.default_rng(seed).permutation(n)
    return dataset.select(sorted(order[n_eval:].tolist())), dataset.select(sorted(order[:n_eval].tolist()))
