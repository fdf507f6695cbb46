"""Token alignment between a receiver tokenizer and a sharer tokenizer.

The receiver's tokenization is the master: every receiver token gets at most one sharer position to read
(``sharer_index``, ``-1`` = not fused). Strategies:

- ``"longest"`` / ``"first"`` (the paper): each receiver token is decoded to text on its own (mid-text, so a
  word-initial space is kept) and re-encoded by the sharer (no special tokens); the sharer token with the
  longest decoded text (``"longest"``; non-whitespace characters count first, the last of equals wins) or
  the first one (``"first"``) stands for it. Whitespace-only pieces a SentencePiece sharer prepends to
  every fragment (a bare ``"▁"``) are passed over unless the text is whitespace only. The sharer
  reads exactly one token per fused receiver token; ids are cached per receiver id.
- ``"offsets"`` (docs/method.md, "Tokens"; :mod:`c2c.alignment.offsets`): the sharer reads its *own natural*
  tokenization of the same text; a receiver token maps to the sharer token covering the receiver token's
  last character (fast tokenizers' character offsets). When several sharer tokens cover that character (a
  byte-level split of one character), the last of them is used: it is the one that has seen the whole
  character.

Rules shared by all strategies:

- Special tokens map by role (bos, eos, unk, pad, in that priority), else by identical token string, else
  they are not fused. Non-special added tokens (e.g. ``<think>``) are ordinary text.
- When both tokenizers share vocabulary, normaliser, pre-tokeniser and model (Qwen2.5 <-> Qwen3),
  :attr:`TokenAligner.identical` is True and every receiver id that means the same string on the sharer is
  copied as is, whatever the strategy (ids the sharer lacks, e.g. extra added tokens, take the slow path).
- Byte-level pieces that decode to partial UTF-8 (``U+FFFD``, :mod:`c2c.alignment.utf8`): consecutive receiver tokens are grouped until
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

from dataclasses import dataclass
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from .chat import check_text, normalise_messages, render_chat
from .offsets import Rendered, align_chat_offsets, align_ids_offsets, last_char, map_offsets, ordinal
from .records import AlignedPrompt, AlignmentStats
from .specials import Body, frame_prompt, receiver_frame
from .utf8 import REPLACEMENT, group_end, group_text
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
        index, one = map_offsets(
            r_ids,
            list(enc_r.offsets),
            list(enc_s.ids),
            list(enc_s.offsets),
            specials=self._r.special_ids,
            target=self._special_target,
        )
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
            texts = self._texts([i for i in r_ids if i not in self._r.special_ids])
            return align_ids_offsets(r_ids, receiver=self._r, sharer=self._s, texts=texts, target=self._special_target)
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
        r_ord = [ordinal(last_char(a, b), spans_r) for a, b in r_off]
        template = [o % 2 == 0 for o in r_ord]

        if self.strategy == "offsets" and not self.identical:
            index, one = align_chat_offsets(
                Rendered(text_r, spans_r, r_ids, r_off),
                Rendered(text_s, spans_s, s_ids_nat, s_off),
                r_ord,
                specials=self._r.special_ids,
                target=self._special_target,
            )
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
            elif REPLACEMENT in texts[rid]:
                end = group_end(self._r, r_ids, k)
                if end > k + 1:
                    key = tuple(r_ids[k:end])
                    choice = self._choice_cache.get_lru(key)
                    if choice is MISSING:
                        text = group_text(self._r, r_ids, k, end)
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
