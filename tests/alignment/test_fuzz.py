"""Property-based fuzzing of token alignment (hypothesis).

Open-ended text (arbitrary unicode, emoji ZWJ sequences, flags, skin tones, combining marks, control and
format characters, characters no tokenizer saw in training, very long words, mixed scripts, whitespace runs,
text that looks like special tokens) on tokenizer pairs of different kinds: byte-level BPE, Unigram without
byte fallback (unknown characters become ``<unk>``), BERT-style WordPiece (lower-casing, accent stripping),
Unigram with byte fallback, and a byte-level BPE with trimmed offsets; every strategy; ``align_text``,
``align_ids`` and ``align_messages`` (chat templates), and the reference layout on a same-vocabulary pair.

Every alignment must: have one sharer index per receiver token; index inside the sharer ids or -1; read the
sharer in order (non-decreasing over fused rows); keep the receiver's own tokenization; never crash. With
"offsets" on plain text, a fused row never reads a sharer token that starts after the receiver token's
text. A whole prompt (text with special tokens, ids with ``sharer_specials=True``) gives the sharer its own
leading and trailing specials, read only by receiver specials, except on a same-tokenization pair. Runs are derandomized (the same examples every run) and bounded.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import processors

from c2c.alignment import AlignedPrompt, TokenAligner
from c2c.alignment.specials import frame_of
from c2c.testing.tokenizers import build_tokenizer, default_corpus

STRATEGIES = ("longest", "first", "offsets")
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------------- tokenizers (built once, read only)

# Some characters only one Unigram knows: a character unknown to the receiver becomes its <unk> while the
# sharer reads it as a real piece (and the other way round), the case where <unk> used to be mapped by
# role to an unrelated sharer <unk> further on.
_EXTRA_A = ["жжж щщщ ж щ", "ünïcødé ø å"]
_EXTRA_B = ["ΩΩΩ λλλ Ω λ", "ßßß þþþ ß þ"]


@functools.cache
def tok(kind: str) -> Any:
    corpus = default_corpus()
    if kind == "bpe":  # Qwen-like byte-level BPE, ChatML
        return build_tokenizer(corpus, 500, model="bpe", chat_template="chatml")
    if kind == "bpe_llama":  # another byte-level BPE vocabulary, Llama-3 template, BOS on encode
        return build_tokenizer(corpus, 700, model="bpe", chat_template="llama3")
    if kind == "unigram_a":  # SentencePiece-like Unigram, no byte fallback: unseen characters are <unk>
        return build_tokenizer(corpus + _EXTRA_A * 3, 360, model="unigram", byte_level=False, chat_template="llama3")
    if kind == "unigram_b":
        return build_tokenizer(corpus + _EXTRA_B * 3, 380, model="unigram", byte_level=False, chat_template="chatml")
    if kind == "bert":  # BERT-style WordPiece: lower-cases, strips accents, [UNK] for whole unknown words
        return build_tokenizer(corpus, 420, model="wordpiece", byte_level=False, bert=True, chat_template="chatml")
    if kind == "fallback":  # Llama-2-like Unigram with byte fallback
        return build_tokenizer(
            corpus, 600, model="unigram", byte_level=False, byte_fallback=True, chat_template="llama3"
        )
    if kind == "trimmed":  # GPT-2 style trimmed offsets
        t = build_tokenizer(corpus, 600, model="bpe", chat_template="llama3")
        t.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
        return t
    if kind in ("qwen3", "qwen25"):  # same vocabulary, different templates (the paper's pair)
        return build_tokenizer(corpus, 500, model="bpe", chat_template=kind)
    raise ValueError(kind)


PAIRS = [  # (receiver, sharer): every kind on each side, heterogeneous in vocabulary, model and template
    ("bpe", "unigram_a"),
    ("unigram_a", "unigram_b"),
    ("unigram_b", "unigram_a"),
    ("bert", "bpe_llama"),
    ("bpe_llama", "bert"),
    ("unigram_a", "bert"),
    ("bert", "unigram_b"),
    ("fallback", "trimmed"),
    ("trimmed", "unigram_a"),
    ("qwen3", "qwen25"),
]


@functools.cache
def aligner(receiver: str, sharer: str, strategy: str) -> TokenAligner:
    return TokenAligner(tok(receiver), tok(sharer), strategy=strategy)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- text strategies

_EMOJI = [
    "😀",
    "🤖",
    "👍🏽",
    "👋🏿",
    "🧑🏻‍💻",
    "👨‍👩‍👧‍👦",
    "🏳️‍🌈",
    "❤️",
    "❤️‍🔥",
    "🇫🇷",
    "🇯🇵",
    "🏴󠁧󠁢󠁳󠁣󠁴󠁿",
    "1️⃣",
    "#️⃣",
    "👁‍🗨",
]
_SPECIAL_LOOKING = [
    "<|im_start|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|begin_of_text|>",
    "<|unk|>",
    "<unk>",
    "<s>",
    "</s>",
    "[CLS]",
    "[SEP]",
    "[UNK]",
    "[MASK]",
    "<think>",
    "</think>",
    "##",
    "▁",
    "Ġ",
    "\u2047",
    "<0x41>",
]
_WHITESPACE = [" ", "  ", "\t", "\n", "\n\n", "\r\n", "\r", "\u00a0", "\u2000", "\u3000", "\u2028", "\u2029", "\u205f"]
_SCRIPTS = [
    "hello",
    "Straße",
    "naïve",
    "ﬁne",
    "Ǆemal",
    "Ωμέγα",
    "жизнь",
    "שָׁלוֹם",
    "مرحبا",
    "नमस्ते",
    "क्षत्रिय",
    "ไทย",
    "日本語",
    "中文",
    "한국어",
    "ᄀᄀᄀ",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "ＡＢＣ１２３",
    "12,345.67",
    "x²+y³",
    "e^{iπ}",
]

any_char = st.characters(exclude_categories=("Cs",))  # every Unicode scalar value (no lone surrogates)
unknown_char = st.characters(min_codepoint=0x2E80, exclude_categories=("Cs",))  # mostly unseen in training
combining = st.characters(categories=("Mn", "Mc", "Me"))
control = st.sampled_from(
    [
        "\x00",
        "\x01",
        "\x07",
        "\x1b",
        "\x7f",
        "\x85",
        "\u200b",
        "\u200c",
        "\u200d",
        "\u200e",
        "\u200f",
        "\u202e",
        "\u2066",
        "\ufeff",
        "\ufe0f",
        "\ufffd",
        "\U000e0001",
    ]
)

segment = st.one_of(
    st.text(any_char, max_size=12),
    st.text(unknown_char, min_size=1, max_size=6),
    st.lists(st.sampled_from(_EMOJI), min_size=1, max_size=4).map("".join),
    st.tuples(st.sampled_from("aeiouAEnxz"), st.text(combining, min_size=1, max_size=5)).map("".join),
    st.text(control, min_size=1, max_size=4),
    st.tuples(st.sampled_from(["a", "Z", "9", "ж", "日", "é"]), st.integers(20, 400)).map(lambda t: t[0] * t[1]),
    st.lists(
        st.sampled_from(["super", "cali", "fragil", "istic", "expi", "ali", "docious"]), min_size=4, max_size=40
    ).map("".join),
    st.lists(st.sampled_from(_SCRIPTS), min_size=1, max_size=4).map("".join),
    st.lists(st.sampled_from(_WHITESPACE), min_size=1, max_size=6).map("".join),
    st.sampled_from(_SPECIAL_LOOKING),
    st.sampled_from(default_corpus()[:40]),
)
texts = st.lists(segment, max_size=6).map("".join)
roles = st.sampled_from(["system", "user", "assistant", "user"])
conversations = st.lists(st.fixed_dictionaries({"role": roles, "content": texts}), min_size=1, max_size=3)


# ---------------------------------------------------------------------- invariants


def check(p: AlignedPrompt) -> None:
    assert len(p.sharer_index) == len(p.receiver_ids)
    assert all(i == -1 or 0 <= i < len(p.sharer_ids) for i in p.sharer_index)
    fused = [i for i in p.sharer_index if i >= 0]
    assert fused == sorted(fused), f"sharer read out of order: {p.sharer_index}"
    s = p.stats
    assert (s.n_receiver_tokens, s.n_sharer_tokens) == (len(p.receiver_ids), len(p.sharer_ids))
    assert s.n_fused == len(fused)
    assert s.n_fused + s.n_unmapped + s.n_template == s.n_receiver_tokens
    assert 0 <= s.n_one_to_one <= s.n_fused


def check_framed(al: TokenAligner, p: AlignedPrompt) -> None:
    """A whole prompt: the sharer's ids carry the sharer tokenizer's own leading and trailing specials (its
    BOS...), and only receiver special tokens read those rows."""
    lead, trail = frame_of(al.sharer_tokenizer.backend_tokenizer)
    n = len(p.sharer_ids)
    assert n >= len(lead) + len(trail)
    assert p.sharer_ids[: len(lead)] == lead and p.sharer_ids[n - len(trail) :] == trail, p.sharer_ids
    specials = set(al.receiver_tokenizer.all_special_ids)
    for rid, si in zip(p.receiver_ids, p.sharer_index):
        if 0 <= si < len(lead) or si >= n - len(trail):
            assert rid in specials, (p.receiver_ids, p.sharer_index)


def check_offsets_not_ahead(al: TokenAligner, text: str, p: AlignedPrompt, add_special_tokens: bool) -> None:
    """ "offsets" on plain text: the sharer reads its own tokenization of ``text``; a fused row reads a sharer
    token that starts within the text the receiver token has covered (never a later one)."""
    r_off = al.receiver_tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    s_off = al.sharer_tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    assert p.sharer_ids == s_off["input_ids"]
    for (a, b), si in zip(r_off["offset_mapping"], p.sharer_index):
        if si >= 0:
            assert s_off["offset_mapping"][si][0] <= max(a, b - 1), (text, p.sharer_index)


def render(t: Any, msgs: list[dict[str, str]], gen: bool, thinking: bool) -> list[int]:
    text = t.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen, enable_thinking=thinking)
    return list(t(text, add_special_tokens=False)["input_ids"])


# ---------------------------------------------------------------------- properties


@pytest.mark.parametrize("strategy", STRATEGIES)
@FUZZ
@given(text=texts, pair=st.sampled_from(PAIRS), add_special=st.booleans())
def test_align_text_and_ids_keep_the_invariants(strategy: str, text: str, pair: tuple[str, str], add_special: bool):
    al = aligner(*pair, strategy)
    p = al.align_text(text, add_special_tokens=add_special)
    check(p)
    assert p.receiver_ids == al.receiver_tokenizer(text, add_special_tokens=add_special)["input_ids"]
    if strategy == "offsets" and not al.identical:
        check_offsets_not_ahead(al, text, p, add_special)
    q = al.align_ids(p.receiver_ids)
    check(q)
    assert q.receiver_ids == p.receiver_ids
    w = al.align_ids(p.receiver_ids, sharer_specials=True)
    check(w)
    if al.identical:  # copied as they are, never framed
        assert w.sharer_ids == p.sharer_ids == p.receiver_ids
    else:
        check_framed(al, w)
        if add_special:
            check_framed(al, p)


@pytest.mark.parametrize("strategy", STRATEGIES)
@FUZZ
@given(msgs=conversations, pair=st.sampled_from(PAIRS), gen=st.booleans(), thinking=st.booleans())
def test_align_messages_keeps_the_invariants(strategy: str, msgs, pair: tuple[str, str], gen: bool, thinking: bool):
    al = aligner(*pair, strategy)
    p = al.align_messages(msgs, add_generation_prompt=gen, enable_thinking=thinking)
    check(p)
    assert p.receiver_ids == render(al.receiver_tokenizer, msgs, gen, thinking)
    if al.identical:  # the paper's same-vocabulary pair: the reference layout too
        r = al.align_messages(msgs, add_generation_prompt=gen, enable_thinking=thinking, layout="reference")
        check(r)
        n = len(r.receiver_ids)
        assert r.receiver_ids == p.receiver_ids and r.sharer_ids == r.receiver_ids
        assert r.sharer_index == [*range(n - 1), -1]
