"""Deterministic vocabularies for the local test tokenizers (see :mod:`c2c.testing.tokenizers`): the
``tokenizers`` trainers break ties by hash or thread order, so WordPiece is trained here with ties broken
by string, Unigram and WordPiece models are rebuilt in a canonical order, and SentencePiece-style byte
fallback is added after training."""

from __future__ import annotations

import itertools
import json
import math

from tokenizers import Tokenizer, decoders, models

__all__ = ["WORDPIECE_PREFIX", "add_byte_fallback", "canonicalise", "train_wordpiece"]

# A continuing-subword prefix that never occurs in pre-tokenized text: NFKC folds U+2047 to "??" and the
# byte-level alphabet does not contain it, so a ``Replace`` decoder can strip it safely.
WORDPIECE_PREFIX = "\u2047"


def train_wordpiece(
    tok: Tokenizer,
    texts: list[str],
    vocab_size: int,
    special_list: list[str],
    unk: str,
    prefix: str,
    alphabet: list[str],
    bert: bool,
) -> None:
    """WordPiece vocabulary by BPE merges over the normalised, pre-tokenised corpus (what the ``tokenizers``
    WordPiece trainer does), ties broken by the pieces' strings: deterministic."""
    counts: dict[str, int] = {}
    for text in texts:
        normalised = tok.normalizer.normalize_str(text) if tok.normalizer is not None else text
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(normalised):
            counts[word] = counts.get(word, 0) + 1
    words = {w: [w[0], *(prefix + c for c in w[1:])] for w in counts if w}
    vocab: dict[str, int] = {t: i for i, t in enumerate(special_list)}
    for piece in sorted({*alphabet, *(sym for syms in words.values() for sym in syms)}):
        vocab.setdefault(piece, len(vocab))
    while len(vocab) < vocab_size:
        pairs: dict[tuple[str, str], int] = {}
        for w, syms in words.items():
            for a, b in itertools.pairwise(syms):
                pairs[(a, b)] = pairs.get((a, b), 0) + counts[w]
        if not pairs:
            break
        best = min(pairs, key=lambda ab: (-pairs[ab], ab))
        merged = best[0] + best[1][len(prefix) :]
        vocab.setdefault(merged, len(vocab))
        for w, syms in words.items():
            if len(syms) < 2:
                continue
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            words[w] = out
    tok.model = models.WordPiece(
        vocab, unk_token=unk, continuing_subword_prefix=prefix, max_input_chars_per_word=100 if bert else 10**6
    )


def add_byte_fallback(tok: Tokenizer, model: str, unk: str) -> None:
    """Append the 256 ``<0xXX>`` tokens and switch the model and decoder to SentencePiece byte fallback."""
    data = json.loads(tok.to_str())["model"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    if model == "bpe":
        vocab = dict(data["vocab"])
        for t in byte_tokens:
            vocab.setdefault(t, len(vocab))
        merges: list[tuple[str, str]] = [
            (m.split(" ")[0], m.split(" ")[1]) if isinstance(m, str) else (m[0], m[1]) for m in data["merges"]
        ]
        tok.model = models.BPE(vocab, merges, unk_token=unk, byte_fallback=True)
    else:
        pieces = [(p, s) for p, s in data["vocab"]]
        floor = min(s for _, s in pieces) - 1.0
        known = {p for p, _ in pieces}
        pieces += [(t, floor) for t in byte_tokens if t not in known]
        tok.model = models.Unigram(pieces, unk_id=data["unk_id"], byte_fallback=True)
    # Llama 2's decoder: spaces back, bytes to characters, one string, the prepended space dropped.
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )


def canonicalise(tok: Tokenizer, model: str, texts: list[str], special_list: list[str], unk: str) -> None:
    """Rebuild a trained Unigram/WordPiece model in a canonical, run-independent form.

    The trainers pick the same pieces run after run but number them (and, for Unigram, score them) in an
    order that depends on thread scheduling. Ids are re-assigned as specials first, then pieces sorted by
    (length, string); Unigram scores are re-estimated deterministically as SentencePiece seeds them:
    log(substring frequency x length) over the pre-tokenized corpus, normalised."""
    data = json.loads(tok.to_str())["model"]
    if model == "wordpiece":
        pieces = list(data["vocab"])
    else:
        pieces = [p for p, _ in data["vocab"]]
    if pieces[: len(special_list)] != special_list:
        raise RuntimeError("tokenizer trainer did not put the special tokens first; cannot canonicalise")
    rest = sorted(pieces[len(special_list) :], key=lambda p: (len(p), p))
    if model == "wordpiece":
        vocab = {p: i for i, p in enumerate([*special_list, *rest])}
        tok.model = models.WordPiece(
            vocab,
            unk_token=unk,
            continuing_subword_prefix=data["continuing_subword_prefix"],
            max_input_chars_per_word=data["max_input_chars_per_word"],
        )
        return
    sep = "\uffff"  # a noncharacter: never inside a pre-token
    words: list[str] = []
    for text in texts:
        normalised = tok.normalizer.normalize_str(text) if tok.normalizer is not None else text
        words.extend(w for w, _ in tok.pre_tokenizer.pre_tokenize_str(normalised))
    blob = sep.join(words)
    weights = [max(blob.count(p), 1) * len(p) for p in rest]
    total = math.log(sum(weights))
    scored = [(p, 0.0) for p in special_list] + [(p, math.log(w) - total) for p, w in zip(rest, weights)]
    tok.model = models.Unigram(scored, unk_id=special_list.index(unk), byte_fallback=False)
