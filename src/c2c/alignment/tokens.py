"""Token alignment between a receiver tokenizer and a sharer tokenizer.

The receiver's tokenization is the master: every receiver token gets at most one sharer position to read
(``sharer_index``, ``-1`` = not fused). Strategies:

- ``"longest"`` / ``"first"`` (the paper): each receiver token is decoded to text on its own (mid-text, so a
  word-initial space is kept) and re-encoded by the sharer (no special tokens); the sharer token with the
  longest decoded text (``"longest"``; non-whitespace characters count first, the last of equals wins) or
  the first one (``"first"``) stands for it. Whitespace-only pieces a SentencePiece sharer prepends to
  every fragment (a bare ``"▁"``) are passed over unless the text is whitespace only. The sharer
  reads exactly one token per fused receiver token; ids are cached per receiver id.
- ``"offsets"`` (docs/method.md, "Tokens"): the sharer reads its *own natural* tokenization of the same text; a
  receiver token maps to the sharer token covering the receiver token's last character (fast tokenizers'
  character offsets). When several sharer tokens cover that character (a byte-level split of one
  character), the last of them is used: it is the one that has seen the whole character.

Rules shared by all strategies:

- Special tokens map by role (bos, eos, unk, pad, in that priority), else by identical token string, else
  they are not fused. Non-special added tokens (e.g. ``<think>``) are ordinary text.
- When both tokenizers share vocabulary, normaliser, pre-tokeniser and model (Qwen2.5 <-> Qwen3),
  :attr:`TokenAligner.identical` is True and every receiver id that means the same string on the sharer is
  copied as is, whatever the strategy (ids the sharer lacks, e.g. extra added tokens, take the slow path).
- Byte-level pieces that decode to partial UTF-8 (``U+FFFD``): consecutive receiver tokens are grouped until
  their joint decoding is complete (at most 8 tokens); the group's text is re-encoded and every member maps
  to the same chosen sharer token (never one-to-one). A group that never completes (a truncated sequence,
  or text that really contains U+FFFD) is re-encoded as decoded, i.e. as the replacement character.
- Chat messages (:meth:`TokenAligner.align_messages`): each model renders its *own* chat template; only
  message content is fused. Receiver template rows get ``-1``. For ``"longest"``/``"first"`` the sharer reads
  its own template rows with the aligned content ids in place of its own content; for ``"offsets"`` it
  reads its natural tokenization of its own rendering, and a content row never reads a sharer token that
  reaches into a later message's content than the receiver token itself. A tokenizer without a chat template is refused with a clear
  ``ValueError`` (pass plain text instead). ``layout="reference"`` reproduces the reference
  implementation's rows for a same-vocabulary pair instead (see :mod:`c2c.alignment.reference`).
- Whole prompts carry the sharer's own special-token frame (:mod:`c2c.alignment.specials`): with
  ``align_text(add_special_tokens=True)`` (and ``align_ids`` of a whole prompt) the sharer's sequence starts
  with the specials its tokenizer puts in front of every text (a Llama-style BOS) and ends with those it
  puts behind (a BERT-style ``[SEP]``), in every strategy, even when the receiver adds none (Qwen-style):
  re-encoding tokens piece by piece would otherwise feed the sharer a prompt without the BOS it was
  trained on. The receiver's own frame tokens read the sharer's frame by role/string, else are not fused;
  frame rows no receiver token reads are prefilled by the sharer, not fused. "offsets" gets the same frame
  from the sharer's natural encoding. Chat prompts get it from the sharer's template (its BOS, if the
  template writes one, once). Pairs with identical tokenization copy ids as they are, never framed.
- Reads are in order everywhere: fused ``sharer_index`` values never decrease along the receiver sequence.
- Empty text, empty message lists and empty contents give empty (or template-only) alignments, never an
  error; callers decide whether that is one.
"""

from __future__ import annotations

import difflib
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from .chat import check_text, normalise_messages, render_chat
from .records import AlignedPrompt, AlignmentStats
from .specials import Body, frame_prompt, receiver_frame
from .vocab import LRU, MISSING, TokInfo, backend_json, cached_batch, fingerprint

__all__ = [
    "AlignedPrompt",
    "AlignmentStats",
    "TokenAligner",
    "fingerprint",
]

Strategy = Literal["longest", "first", "offsets"]
_STRATEGIES = ("longest", "first", "offsets")
Layout = Literal["content", "reference"]
_LAYOUTS = ("content", "reference")
_MAX_GROUP = 8
_REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class _Choice:
    sharer_id: int | None
    one_to_one: bool


class TokenAligner:
    """Aligns receiver token sequences to one sharer tokenizer (see the module docstring for the rules).

    Args:
        receiver_tokenizer: fast tokenizer of the receiver (the master tokenization).
        sharer_tokenizer: fast tokenizer of the sharer.
        strategy: ``"longest"`` (paper default), ``"first"`` or ``"offsets"``.
        cache_size: entries of the per-token re-encoding cache.
    """

    def __init__(
        self,
        receiver_tokenizer: PreTrainedTokenizerBase,
        sharer_tokenizer: PreTrainedTokenizerBase,
        *,
        strategy: Strategy = "longest",
        cache_size: int = 65536,
    ) -> None:
        if strategy not in _STRATEGIES:
            raise ValueError(f"unknown alignment strategy {strategy!r}; choose one of {', '.join(_STRATEGIES)}")
        self.receiver_tokenizer = receiver_tokenizer
        self.sharer_tokenizer = sharer_tokenizer
        self.strategy: Strategy = strategy
        self._r = TokInfo(receiver_tokenizer, "receiver")
        self._s = TokInfo(sharer_tokenizer, "sharer")
        self.identical: bool = self._same_tokenization()
        self._text_cache = LRU(cache_size)  # receiver id -> text in context
        self._choice_cache = LRU(cache_size)  # receiver id or tuple of ids -> _Choice
        self._sharer_text_cache = LRU(cache_size)  # sharer id -> text in context
        self._compatible: dict[int, bool] = {}

    # ------------------------------------------------------------------ public API

    def align_text(self, text: str, *, add_special_tokens: bool = True) -> AlignedPrompt:
        """Align a plain string (no chat template). ``add_special_tokens`` applies to both tokenizers: with it,
        the receiver reads its own framed encoding (e.g. Llama's BOS, none for Qwen) and the sharer reads its
        own frame around the text whatever the strategy (see :mod:`c2c.alignment.specials`)."""
        if not isinstance(text, str):
            raise TypeError(f"align_text expects a string, got {type(text).__name__}; use align_ids for token ids")
        check_text(text, "the text")
        enc_r = self._r.backend.encode(text, add_special_tokens=add_special_tokens)
        r_ids = list(enc_r.ids)
        if self.strategy != "offsets" or self.identical:
            return self._align(r_ids, whole=add_special_tokens)
        enc_s = self._s.backend.encode(text, add_special_tokens=add_special_tokens)
        index, one = self._map_offsets(r_ids, list(enc_r.offsets), list(enc_s.ids), list(enc_s.offsets))
        return self._result(r_ids, list(enc_s.ids), index, one, template=[False] * len(r_ids))

    def align_ids(self, receiver_ids: list[int], *, sharer_specials: bool | None = None) -> AlignedPrompt:
        """Align receiver ids without template knowledge: every position that maps is fused.

        ``sharer_specials`` says whether the ids are a whole prompt, which the sharer reads from its first
        position: True frames the sharer's sequence with its own leading and trailing special tokens (its
        BOS, for a Llama-style sharer), as :meth:`align_text` does with ``add_special_tokens=True``; False
        aligns the ids as a piece (nothing added: a single generated token, a fragment). None (default)
        decides from the ids: a whole prompt when they start with the receiver tokenizer's own leading
        specials (they were encoded with special tokens), a piece otherwise, which includes every id list of
        a receiver that adds no leading specials (Qwen-style): callers that hold a whole prompt pass True
        (``C2CModel`` does for prompts given as ids).

        In a whole prompt the receiver's own frame tokens read the sharer's frame by role/string, else they
        are not fused, and the sharer's frame rows no receiver token reads are read by the sharer, not
        fused. A pair with identical tokenization copies ids as they are, never framed.
        """
        r_ids = [int(i) for i in receiver_ids]
        bad = next((k for k, i in enumerate(r_ids) if i < 0), None)
        if bad is not None:
            raise ValueError(
                f"receiver id {r_ids[bad]} at position {bad} is negative; pass real token ids (strip padding "
                "and -100 label markers before aligning)"
            )
        if sharer_specials is None:
            lead = self._r.lead_ids
            sharer_specials = bool(lead) and r_ids[: len(lead)] == lead
        return self._align(r_ids, whole=sharer_specials)

    def _align(self, r_ids: list[int], *, whole: bool) -> AlignedPrompt:
        """``r_ids`` aligned as pieces; a ``whole`` prompt also gets the sharer's own frame."""
        if self.identical or not whole:
            s_ids, index, one = self._align_body(r_ids)
        else:
            head, tail = receiver_frame(r_ids, self._r.lead_ids, self._r.trail_ids)
            body = self._align_body(r_ids[head : len(r_ids) - tail])
            s_ids, index, one = frame_prompt(
                r_ids, head, tail, body, self._s.lead_ids, self._s.trail_ids, self._special_target
            )
        return self._result(r_ids, s_ids, index, one, template=[False] * len(r_ids))

    def _align_body(self, r_ids: list[int]) -> Body:
        """``(sharer ids, sharer_index, one_to_one)`` of ``r_ids`` read piece by piece ("longest"/"first") or
        as the sharer's natural tokenization of their text ("offsets"); no frame added."""
        if self.strategy == "offsets" and not self.identical:
            return self._align_ids_offsets(r_ids)
        choices = self._choose(r_ids)
        s_ids: list[int] = []
        index: list[int] = []
        for c in choices:
            if c.sharer_id is None:
                index.append(-1)
            else:
                index.append(len(s_ids))
                s_ids.append(c.sharer_id)
        one = [c.one_to_one and c.sharer_id is not None for c in choices]
        return s_ids, index, one

    def align_messages(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        enable_thinking: bool = False,
        layout: Layout = "content",
    ) -> AlignedPrompt:
        """Align a chat.

        ``layout="content"`` (c2c's rows): each model renders its own template; only message content is fused.
        ``layout="reference"`` (the reference implementation's rows, same-vocabulary pairs only): the
        conversation is rendered once with the receiver's template, the sharer reads the same ids, and every
        row but the last is fused, template rows included (:func:`c2c.alignment.reference.align_reference`).
        """
        if layout not in _LAYOUTS:
            raise ValueError(f"unknown chat layout {layout!r}; choose one of {', '.join(_LAYOUTS)}")
        if layout == "reference":
            from .reference import align_reference

            return align_reference(
                self, messages, add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking
            )
        msgs = normalise_messages(messages)
        if not msgs:
            return self._result([], [], [], [], template=[])
        opts = dict(add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking)
        text_r, spans_r = render_chat(self._r.tok, msgs, **opts, name="receiver")
        text_s, spans_s = render_chat(self._s.tok, msgs, **opts, name="sharer")
        enc_r = self._r.backend.encode(text_r, add_special_tokens=False)
        enc_s = self._s.backend.encode(text_s, add_special_tokens=False)
        r_ids, r_off = list(enc_r.ids), list(enc_r.offsets)
        s_ids_nat, s_off = list(enc_s.ids), list(enc_s.offsets)
        r_ord = [_ordinal(_last_char(a, b), spans_r) for a, b in r_off]
        template = [o % 2 == 0 for o in r_ord]

        if self.strategy == "offsets" and not self.identical:
            index = [-1] * len(r_ids)
            one = [False] * len(r_ids)
            cover = _cover(s_off, len(text_s))
            for m, ((ra, rb), (sa, sb)) in enumerate(zip(spans_r, spans_s)):
                rows = [k for k, o in enumerate(r_ord) if o == 2 * m + 1]
                if not rows:
                    continue
                # Templates may render a content differently (trimmed, transformed): map characters.
                cmap = _char_map(text_r[ra:rb], text_s[sa:sb])
                sub_off: list[tuple[int, int]] = []
                fixed: dict[int, int] = {}
                for j, k in enumerate(rows):
                    a, b = r_off[k]
                    end = _mapped_before(cmap, min(_last_char(a, b), rb - 1) - ra)
                    if end < 0:
                        fixed[j] = -1
                        sub_off.append((sa, sa))
                        continue
                    start = cmap[a - ra] if b > a and 0 <= a - ra < len(cmap) else -1
                    start = start if 0 <= start <= end else end
                    sub_off.append((sa + start, sa + end + 1))
                sub_idx, sub_one = self._map_offsets(
                    [r_ids[k] for k in rows], sub_off, s_ids_nat, s_off, cover=cover, window=(sa, sb), fixed_pos=fixed
                )
                for k, si, o in zip(rows, sub_idx, sub_one):
                    # A sharer token reaching into a later message's content than the receiver token reaches
                    # (templates that put nothing between two contents) would read ahead: not fused.
                    if si >= 0 and max(_touched(s_off[si], spans_s), default=m) > max(
                        _touched(r_off[k], spans_r), default=m
                    ):
                        si, o = -1, False
                    index[k], one[k] = si, o
            return self._result(r_ids, s_ids_nat, index, one, template=template)

        # "longest"/"first": the sharer reads its own template pieces (each encoded on its own, so no piece
        # loses or duplicates characters at a content boundary) with the aligned receiver content between.
        choices = self._choose(r_ids)
        bounds = [0] + [x for span in spans_s for x in span] + [len(text_s)]
        pieces_s = [text_s[bounds[2 * m] : bounds[2 * m + 1]] for m in range(len(msgs) + 1)]
        piece_ids = [enc.ids for enc in self._s.backend.encode_batch(pieces_s, add_special_tokens=False)]
        s_ids: list[int] = []
        index = [-1] * len(r_ids)
        one = [False] * len(r_ids)
        k = 0
        for m in range(len(msgs) + 1):
            s_ids.extend(piece_ids[m])
            while k < len(r_ids) and r_ord[k] <= 2 * m + 1:
                c = choices[k]
                if r_ord[k] == 2 * m + 1 and c.sharer_id is not None:
                    index[k] = len(s_ids)
                    one[k] = c.one_to_one
                    s_ids.append(c.sharer_id)
                k += 1
        return self._result(r_ids, s_ids, index, one, template=template)

    # ------------------------------------------------------------------ identical fast path

    def _same_tokenization(self) -> bool:
        a, b = backend_json(self._r.tok), backend_json(self._s.tok)
        return all(a.get(key) == b.get(key) for key in ("normalizer", "pre_tokenizer", "model"))

    def _copyable(self, rid: int) -> bool:
        """Identical tokenization and the sharer reads ``rid`` as the same string (and specialness)."""
        if not self.identical:
            return False
        ok = self._compatible.get(rid)
        if ok is None:
            r_tok = self._r.backend.id_to_token(rid)
            ok = r_tok is not None and r_tok == self._s.backend.id_to_token(rid)
            ok = ok and ((rid in self._r.special_ids) == (rid in self._s.special_ids))
            self._compatible[rid] = ok
        return ok

    # ------------------------------------------------------------------ per-token choice ("longest"/"first")

    def _special_target(self, rid: int) -> int | None:
        """Sharer id for a receiver special token: by role, else by identical string, else None."""
        role = self._r.role_of.get(rid)
        if role is not None and role in self._s.role_id:
            return self._s.role_id[role]
        token = self._r.backend.id_to_token(rid)
        if token is None:
            return None
        return self._s.backend.token_to_id(token)

    def _texts(self, ids: list[int]) -> dict[int, str]:
        return cached_batch(self._text_cache, ids, lambda miss: self._r.decode_in_context([[i] for i in miss]))

    def _pick(self, text: str) -> _Choice:
        return self._pick_batch([text])[0]

    def _sharer_texts(self, ids: list[int]) -> dict[int, str]:
        return cached_batch(self._sharer_text_cache, ids, lambda miss: self._s.decode_in_context([[i] for i in miss]))

    def _pick_batch(self, texts: list[str]) -> list[_Choice]:
        """Choose the sharer token standing for each text. A token's coverage is its decoded text, counting
        non-whitespace characters first: a SentencePiece sharer prepends a bare ``"▁"`` to every
        fragment, which must not win over the fragment's real content. "longest" keeps the best coverage
        (the last of equals: in a causal model it has read the others); "first" keeps the first token with
        content (the first token when the text is whitespace only)."""
        if not texts:
            return []
        encs = self._s.backend.encode_batch(texts, add_special_tokens=False)
        s_text = self._sharer_texts([i for enc in encs for i in enc.ids])
        out = []
        for enc in encs:
            ids = enc.ids
            if not ids:
                out.append(_Choice(None, False))
                continue
            scores = [(_n_content(s_text[i]), len(s_text[i])) for i in ids]
            if self.strategy == "first":
                pos = next((p for p, sc in enumerate(scores) if sc[0] > 0), 0)
            else:
                pos = max(range(len(ids)), key=lambda p: (scores[p], p))
            out.append(_Choice(int(ids[pos]), len(ids) == 1))
        return out

    def _choose(self, r_ids: list[int]) -> list[_Choice]:
        """One :class:`_Choice` per receiver token (specials, copies, cached re-encodings, UTF-8 groups)."""
        n = len(r_ids)
        plain = [i for i in r_ids if i not in self._r.special_ids and not self._copyable(i)]
        texts = self._texts(plain)
        chosen = cached_batch(self._choice_cache, plain, lambda miss: self._pick_batch([texts[i] for i in miss]))
        out: list[_Choice] = []
        k = 0
        while k < n:
            rid = r_ids[k]
            if self._copyable(rid):
                out.append(_Choice(rid, True))
            elif rid in self._r.special_ids:
                out.append(_Choice(self._special_target(rid), True))
            elif _REPLACEMENT in texts[rid]:
                end = self._utf8_group_end(r_ids, k)
                if end > k + 1:
                    key = tuple(r_ids[k:end])
                    choice = self._choice_cache.get_lru(key)
                    if choice is MISSING:
                        text = self._group_text(r_ids, k, end)
                        choice = _Choice(self._pick(text).sharer_id, False)
                        self._choice_cache.put(key, choice)
                    out.extend([choice] * (end - k))
                    k = end
                    continue
                out.append(chosen[rid])
            else:
                out.append(chosen[rid])
            k += 1
        return out

    def _group_text(self, r_ids: list[int], k: int, end: int) -> str:
        """Text of the receiver tokens ``r_ids[k:end]`` read mid-text."""
        parts = [self._r.token_bytes(i) for i in r_ids[k:end]]
        if all(p is not None for p in parts):
            return b"".join(parts).decode("utf-8", errors="replace")  # type: ignore[arg-type]
        return self._r.decode_in_context([r_ids[k:end]])[0]

    def _utf8_group_end(self, r_ids: list[int], k: int) -> int:
        """End (exclusive) of the shortest run ``r_ids[k:end]`` of plain tokens whose joint decoding has no
        U+FFFD; ``k + 1`` when there is none within :data:`_MAX_GROUP` tokens."""
        stop = min(len(r_ids), k + _MAX_GROUP)
        first = self._r.token_bytes(r_ids[k])
        if first is not None:  # byte-level: complete UTF-8 is a property of the bytes, no decoding needed
            buf = first
            for end in range(k + 1, stop + 1):
                if end > k + 1:
                    more = self._r.token_bytes(r_ids[end - 1])
                    if more is None:
                        break
                    buf += more
                try:
                    buf.decode("utf-8")
                    return end
                except UnicodeDecodeError:
                    continue
            return k + 1
        for end in range(k + 2, stop + 1):
            if r_ids[end - 1] in self._r.special_ids:
                break
            if _REPLACEMENT not in self._r.decode_in_context([r_ids[k:end]])[0]:
                return end
        return k + 1

    # ------------------------------------------------------------------ "offsets"

    def _align_ids_offsets(self, r_ids: list[int]) -> Body:
        """Sharer reads its natural tokenization of the decoded text; receiver specials are mapped by
        role/string and inserted in the sharer sequence at their place (or dropped when unmapped)."""
        texts = self._texts([i for i in r_ids if i not in self._r.special_ids])
        r_off: list[tuple[int, int]] = []
        s_ids: list[int] = []
        s_off: list[tuple[int, int]] = []
        fixed_pos: dict[int, int] = {}
        pos = 0
        run: list[str] = []
        run_start = 0

        def flush() -> None:
            nonlocal run, run_start
            text = "".join(run)
            if text:
                enc = self._s.backend.encode(text, add_special_tokens=False)
                s_ids.extend(enc.ids)
                s_off.extend((a + run_start, b + run_start) for a, b in enc.offsets)
            run = []
            run_start = pos

        k = 0
        n = len(r_ids)
        while k < n:
            rid = r_ids[k]
            if rid in self._r.special_ids:
                flush()
                target = self._special_target(rid)
                fixed_pos[len(r_off)] = -1 if target is None else len(s_ids)
                if target is not None:
                    s_ids.append(target)
                    s_off.append((pos, pos))
                r_off.append((pos, pos))
                k += 1
                continue
            end = self._utf8_group_end(r_ids, k) if _REPLACEMENT in texts[rid] else k + 1
            text = texts[rid] if end == k + 1 else self._group_text(r_ids, k, end)
            if not text:  # an id that decodes to nothing (beyond the tokenizer's vocabulary): unfused
                fixed_pos[len(r_off)] = -1
            run.append(text)
            r_off.extend([(pos, pos + len(text))] * (end - k))
            pos += len(text)
            k = end
        flush()
        index, one = self._map_offsets(r_ids, r_off, s_ids, s_off, fixed_pos=fixed_pos)
        return s_ids, index, one

    def _map_offsets(
        self,
        r_ids: list[int],
        r_off: list[tuple[int, int]],
        s_ids: list[int],
        s_off: list[tuple[int, int]],
        *,
        cover: list[int] | None = None,
        window: tuple[int, int] | None = None,
        fixed_pos: dict[int, int] | None = None,
    ) -> tuple[list[int], list[bool]]:
        """Map receiver tokens to sharer positions through character spans in one coordinate system.

        A plain receiver token reads the sharer token covering its last character (for an empty span, the
        character before it); when no sharer token covers that character (a normaliser dropped it), the
        nearest covered character before it is used. ``window`` (a character range) restricts the targets.
        A special token reads its role/string counterpart only where the sharer has it *inside the receiver
        token's own span* (the same ``<unk>`` character, the same ``<|im_end|>`` text, a BOS both add at
        the start), else it is not fused: a counterpart found elsewhere would be an unrelated sharer row.
        ``fixed_pos`` (receiver row -> sharer position or -1) overrides rows decided beforehand (specials
        inserted by ``align_ids``). Reads are in order: a row whose target lies before one already read
        (only possible with overlapping sharer offsets) is not fused."""
        n_chars = max([b for _, b in s_off] + [b for _, b in r_off] + [0])
        if cover is None or len(cover) < n_chars:
            cover = _cover(s_off, n_chars)
        lo, hi = window if window is not None else (0, len(cover))
        index: list[int] = []
        one: list[bool] = []
        last = 0
        positions_of: dict[int, list[int]] | None = None
        for k, (rid, (a, b)) in enumerate(zip(r_ids, r_off)):
            if fixed_pos is not None and k in fixed_pos:
                pos = fixed_pos[k]
            elif rid in self._r.special_ids:
                target = self._special_target(rid)
                if positions_of is None:
                    positions_of = {}
                    for p, sid in enumerate(s_ids):
                        positions_of.setdefault(sid, []).append(p)
                pos = -1
                cands = positions_of.get(target, []) if target is not None else []
                for p in cands[bisect_left(cands, last) :]:
                    sa, sb = s_off[p]
                    if sa > b:
                        break  # offsets only grow from here
                    if a <= sa and sb <= b and lo <= sa and sb <= hi:
                        pos = p
                        break
            else:
                c = min(_last_char(a, b), hi - 1)
                while c >= lo and c < len(cover) and cover[c] < 0:
                    c -= 1
                pos = cover[c] if lo <= c < len(cover) else -1
            if 0 <= pos < last:
                pos = -1
            index.append(pos)
            if pos < 0:
                one.append(False)
            elif (fixed_pos is not None and k in fixed_pos) or rid in self._r.special_ids:
                one.append(True)
            else:
                one.append(tuple(s_off[pos]) == (a, b))
            last = max(last, pos)
        return index, one

    # ------------------------------------------------------------------ result

    def _result(
        self,
        r_ids: list[int],
        s_ids: list[int],
        index: list[int],
        one: list[bool],
        *,
        template: list[bool],
    ) -> AlignedPrompt:
        fused = [i >= 0 for i in index]
        specials = [i in self._r.special_ids for i in r_ids]
        stats = AlignmentStats(
            n_receiver_tokens=len(r_ids),
            n_sharer_tokens=len(s_ids),
            n_fused=sum(fused),
            n_one_to_one=sum(1 for f, o in zip(fused, one) if f and o),
            n_special=sum(1 for s, t in zip(specials, template) if s and not t),
            n_template=sum(template),
            n_unmapped=sum(1 for f, t in zip(fused, template) if not f and not t),
        )
        return AlignedPrompt(receiver_ids=r_ids, sharer_ids=[int(i) for i in s_ids], sharer_index=index, stats=stats)


# ---------------------------------------------------------------------- helpers


def _n_content(text: str) -> int:
    """Characters of ``text`` that are not whitespace."""
    return sum(1 for ch in text if not ch.isspace())


def _last_char(a: int, b: int) -> int:
    """The character a token stands for: its last one, or the one before an empty span."""
    return b - 1 if b > a else a - 1


def _cover(s_off: list[tuple[int, int]], n_chars: int) -> list[int]:
    """Per character, the last sharer position whose span contains it (-1: none)."""
    cover = [-1] * n_chars
    for pos, (a, b) in enumerate(s_off):
        for c in range(a, min(b, n_chars)):
            cover[c] = pos
    return cover


def _ordinal(c: int, spans: list[tuple[int, int]]) -> int:
    """Segment of character ``c``: 2m+1 inside content m, 2m for template text before content m."""
    done = 0
    for a, b in spans:
        if c >= b:
            done += 1
        elif c >= a:
            return 2 * done + 1
        else:
            break
    return 2 * done


def _touched(span: tuple[int, int], contents: list[tuple[int, int]]) -> set[int]:
    """Indices of the message contents that the character span ``[a, b)`` overlaps."""
    a, b = span
    return {m for m, (ca, cb) in enumerate(contents) if max(a, ca) < min(b, cb)}


def _char_map(content_r: str, content_s: str) -> list[int]:
    """For each character of the receiver's rendered content, the index of the same character in the
    sharer's rendered content (-1: none). Equal or nested contents (templates that trim) map by offset;
    others (templates that transform) by a character diff."""
    if content_r == content_s:
        return list(range(len(content_r)))
    out = [-1] * len(content_r)
    if content_s and content_s in content_r:
        off = content_r.find(content_s)
        out[off : off + len(content_s)] = range(len(content_s))
    elif content_r and content_r in content_s:
        off = content_s.find(content_r)
        out = list(range(off, off + len(content_r)))
    else:
        matcher = difflib.SequenceMatcher(None, content_r, content_s, autojunk=False)
        for i, j, n in matcher.get_matching_blocks():
            out[i : i + n] = range(j, j + n)
    return out


def _mapped_before(cmap: list[int], i: int) -> int:
    """The mapped index of character ``i``, or of the nearest mapped character before it (-1: none)."""
    i = min(i, len(cmap) - 1)
    while i >= 0 and cmap[i] < 0:
        i -= 1
    return cmap[i] if i >= 0 else -1
