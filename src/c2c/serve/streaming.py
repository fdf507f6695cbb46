"""Per-row token streaming inside one (micro-batched) ``generate`` call.

``transformers``' own text streamers handle batch size 1 only. Here every batch row is a different client
request with its own stop strings, token budget and cancellation flag:

- :class:`RowText` turns one row's token ids into text incrementally, holds back text that may still
  become a stop string (or an incomplete UTF-8 character), and decides when the row is finished;
- :class:`RowStreamer` (a ``StoppingCriteria``, called by ``generate`` once per step) feeds each step's
  tokens to the rows and tells ``generate`` which rows are finished, so a stop string, a row's own
  ``max_tokens`` or a disconnected client ends that row at the very next token; when every row is
  finished the whole call ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import StoppingCriteria


class RowText:
    """Incremental detokenizer and finish logic of one generated sequence.

    ``feed`` returns the text that may be sent to the client now. A row finishes on an end-of-sequence
    token or a stop string (``"stop"``), on its token budget (``"length"``) or when cancelled
    (``"cancelled"``). Decoding the whole sequence at every step keeps multi-byte characters and
    tokenizer-specific spacing right; sequences are short enough (≤ a few thousand tokens) for that.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        eos_token_ids: set[int],
        stop: Sequence[str] = (),
        max_new_tokens: int,
        cancelled: threading.Event | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.stop = tuple(stop)
        self.max_new_tokens = max_new_tokens
        self.cancelled = cancelled or threading.Event()
        self.ids: list[int] = []
        self.text = ""  # decoded text so far (truncated at a stop string once found)
        self.sent = 0  # characters of ``text`` already released
        self.finish_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.cancelled.is_set()

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    def feed(self, token_id: int) -> str:
        """Consume one generated token; return newly releasable text (possibly empty)."""
        if self.done:
            if self.finish_reason is None:
                self.finish_reason = "cancelled"
            return ""
        if token_id in self.eos_token_ids:
            self.finish_reason = "stop"
            return self._release(len(self.text))
        self.ids.append(token_id)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if self.text.endswith("\ufffd"):  # incomplete multi-byte character: wait for the next token
            return self._maybe_length(hold=True)
        hit = self._find_stop()
        if hit is not None:
            self.text = self.text[:hit]
            self.finish_reason = "stop"
            return self._release(hit)
        if len(self.ids) >= self.max_new_tokens:
            return self._maybe_length(hold=False)
        return self._release(len(self.text) - self._stop_prefix_len())

    def finish(self, reason: str = "length") -> str:
        """End the row (generation returned); release any held-back text."""
        if self.finish_reason is None:
            self.finish_reason = "cancelled" if self.cancelled.is_set() else reason
        if self.finish_reason == "cancelled":
            return ""
        return self._release(len(self.text))

    # -- helpers --------------------------------------------------------------------------------------------

    def _maybe_length(self, *, hold: bool) -> str:
        if len(self.ids) >= self.max_new_tokens:
            self.finish_reason = "length"
            return self._release(len(self.text))
        return "" if hold else self._release(len(self.text))

    def _release(self, upto: int) -> str:
        upto = min(upto, len(self.text))
        if upto <= self.sent:
            return ""
        out = self.text[self.sent : upto]
        self.sent = upto
        return out

    def _find_stop(self) -> int | None:
        """Earliest index where a stop string starts in the unreleased text (released text holds none)."""
        best: int | None = None
        for s in self.stop:
            i = self.text.find(s, max(0, self.sent - len(s) + 1))
            if i != -1 and (best is None or i < best):
                best = i
        return best

    def _stop_prefix_len(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of some stop string."""
        longest = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text) - self.sent), longest, -1):
                if self.text.endswith(s[:k]):
                    longest = k
                    break
        return longest


class RowStreamer(StoppingCriteria):
    """Streams every generated token of a batch to its row and reports which rows are finished.

    ``generate`` calls a stopping criterion exactly once per decoding step with all ids so far
    (``[B, T + step]``), after appending the new tokens, so the last column is the step's token for every
    row. Streaming from here (rather than through an HF streamer) works for batches, which HF streamers
    and ``C2CModel.generate`` reserve for batch size 1. Returns the per-row finished flags ``[B]``: a row
    that met a stop string, its own ``max_tokens`` or whose client went away stops at this token, and
    ``generate`` ends once every row has.

    ``on_text(row, text)`` is called from the generating thread with each piece of releasable text;
    ``on_early_finish(row)`` once for a row that finishes while other rows still decode (so its client is
    answered now instead of when the whole batch ends).
    """

    def __init__(
        self,
        rows: Sequence[RowText],
        on_text: Callable[[int, str], None] | None = None,
        on_early_finish: Callable[[int], None] | None = None,
    ) -> None:
        self.rows = rows
        self.on_text = on_text
        self.on_early_finish = on_early_finish
        self.early: set[int] = set()
        self.steps = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        if input_ids.shape[0] != len(self.rows):
            raise RuntimeError(f"got {input_ids.shape[0]} sequences for a batch of {len(self.rows)} rows")
        self.steps += 1
        for i, (row, tok) in enumerate(zip(self.rows, input_ids[:, -1].tolist())):
            piece = row.feed(int(tok))
            if piece and self.on_text is not None:
                self.on_text(i, piece)
        flags = [r.done for r in self.rows]
        if self.on_early_finish is not None and not all(flags):
            for i, done in enumerate(flags):
                if done and i not in self.early:
                    self.early.add(i)
                    self.on_early_finish(i)
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class CancelStopping(StoppingCriteria):
    """Stops rows whose cancellation flag is set (for generation that is not streamed, e.g. T2T notes)."""

    def __init__(self, flags: Sequence[threading.Event]) -> None:
        self.flags = flags

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        flags = [f.is_set() for f in self.flags]
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]
