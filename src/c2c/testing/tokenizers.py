"""Real tokenizers trained locally with the ``tokenizers`` library (no hub access).

Tests, benchmarks and the demo need *heterogeneous* receiver/sharer pairs: tokenizers that cut the same text
differently, carry different special tokens and render different chat templates. :func:`build_tokenizer`
trains one deterministically in well under a second on :func:`default_corpus` and wraps it as a
``transformers`` fast tokenizer that round-trips through ``save_pretrained`` / ``AutoTokenizer``.

Two chat-template styles are available, modelled on real families:

- ``"chatml"`` (Qwen-like): ``<|im_start|>role\\ncontent<|im_end|>\\n``; no BOS is added on encode;
  ``enable_thinking=False`` appends an empty ``<think>\\n\\n</think>\\n\\n`` block after the generation prompt.
- ``"llama3"`` (Llama-3-like): ``<|begin_of_text|><|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|>``;
  BOS is added on encode; ``enable_thinking`` is accepted and ignored.
- ``"qwen3"`` / ``"qwen25"``: ChatML as Qwen3 writes it (the last assistant turn and, with thinking off, the
  generation prompt carry an empty think block) and as Qwen2.5 writes it (a default system prompt when the
  conversation has none). Two tokenizers trained alike with these templates are a same-vocabulary pair
  like the paper's Qwen3-0.6B <- Qwen2.5-0.5B.

``bert=True`` builds a BERT-style WordPiece tokenizer instead (lower-casing, accent-stripping normaliser,
punctuation-splitting pre-tokeniser, ``##`` continuations, ``[CLS] ... [SEP]``), as BERT-family models use.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

__all__ = [
    "BERT_SPECIAL_TOKENS",
    "CHAT_TEMPLATES",
    "SpecialTokens",
    "build_tokenizer",
    "default_corpus",
    "default_special_tokens",
]

TokenizerModel = Literal["bpe", "unigram", "wordpiece"]

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif -%}"
    "{%- endif -%}"
)
"""Qwen-like ChatML template (Qwen3's ``enable_thinking=False`` convention)."""

LLAMA3_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- (message['content'] or '') | trim -}}"
    "{{ '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif -%}"
)
"""Llama-3-like template: BOS in the template, header tokens, content trimmed (as Llama 3 does)."""

QWEN3_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' and loop.last -%}"
    "{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif -%}"
    "{%- endif -%}"
)
"""Qwen3-like: the final assistant turn carries an empty think block, so an instruction rendered with
``enable_thinking=False`` is a prefix of the rendered conversation."""

QWEN25_TEMPLATE = (
    "{%- if not messages or messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
"""Qwen2.5-like: ChatML with a default system prompt when the conversation has none, no thinking."""

CHAT_TEMPLATES: dict[str, str] = {
    "chatml": CHATML_TEMPLATE,
    "llama3": LLAMA3_TEMPLATE,
    "qwen3": QWEN3_TEMPLATE,
    "qwen25": QWEN25_TEMPLATE,
}
"""Named chat templates; ``"default"`` means ``"chatml"``."""

# A continuing-subword prefix that never occurs in pre-tokenized text: NFKC folds U+2047 to "??" and the
# byte-level alphabet does not contain it, so a ``Replace`` decoder can strip it safely.
_WORDPIECE_PREFIX = "\u2047"


@dataclass(frozen=True)
class SpecialTokens:
    """Special-token strings by role. ``extra`` are further special tokens (template markers);
    ``added`` are non-special added tokens (kept when decoding with ``skip_special_tokens``)."""

    bos: str
    eos: str
    pad: str
    unk: str
    extra: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    add_bos: bool = False
    """Whether encoding with ``add_special_tokens=True`` prepends BOS."""

    def all_special(self) -> list[str]:
        out: list[str] = []
        for tok in (self.bos, self.eos, self.pad, self.unk, *self.extra):
            if tok not in out:
                out.append(tok)
        return out


_SPECIALS: dict[str | None, SpecialTokens] = {
    "chatml": SpecialTokens(
        bos="<|startoftext|>",
        eos="<|im_end|>",
        pad="<|endoftext|>",
        unk="<|unk|>",
        extra=("<|im_start|>",),
        added=("<think>", "</think>"),
        add_bos=False,
    ),
    "llama3": SpecialTokens(
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad="<|finetune_right_pad_id|>",
        unk="<|unk|>",
        extra=("<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"),
        add_bos=True,
    ),
    None: SpecialTokens(bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", add_bos=True),
}
_SPECIALS["qwen3"] = _SPECIALS["qwen25"] = _SPECIALS["chatml"]

BERT_SPECIAL_TOKENS = SpecialTokens(bos="[CLS]", eos="[SEP]", pad="[PAD]", unk="[UNK]", extra=("[MASK]",), add_bos=True)
"""BERT's special tokens (``[CLS]`` stands in the BOS role, ``[SEP]`` in the EOS role)."""


def default_special_tokens(chat_template: str | None = "default") -> SpecialTokens:
    """The special tokens that go with a named chat template (``None``: ``<s>``, ``</s>``, ``<pad>``, ``<unk>``).

    A custom Jinja template string gets the ``None`` set."""
    key = _template_key(chat_template)
    return _SPECIALS[key if key in _SPECIALS else None]


def _template_key(chat_template: str | None) -> str | None:
    if chat_template == "default":
        return "chatml"
    return chat_template


def build_tokenizer(
    corpus: Iterable[str] | None,
    vocab_size: int,
    *,
    model: TokenizerModel = "bpe",
    byte_level: bool = True,
    byte_fallback: bool = False,
    bert: bool = False,
    chat_template: str | None = "default",
    special_tokens: SpecialTokens | Mapping[str, str] | None = None,
    model_max_length: int = 4096,
) -> PreTrainedTokenizerFast:
    """Train a real tokenizer on ``corpus`` and wrap it as a ``transformers`` fast tokenizer.

    Args:
        corpus: training texts; ``None`` uses :func:`default_corpus`.
        vocab_size: target vocabulary size including special tokens (byte-level tokenizers need at least
            256 + specials; the trainer may stop below the target on a small corpus).
        model: ``"bpe"``, ``"unigram"`` or ``"wordpiece"``.
        byte_level: GPT-2 style byte-level pre-tokenizer and decoder (every string is representable, no
            ``unk``); otherwise NFKC + SentencePiece-style ``Metaspace`` (characters unseen in training
            become ``unk``, like older sentencepiece models).
        byte_fallback: with ``byte_level=False`` and ``"bpe"``/``"unigram"``: add the 256 ``<0xXX>`` byte
            tokens and spell unseen characters with them, like Llama 2, Mistral and Gemma (no ``unk``; the
            256 byte tokens count in ``vocab_size``).
        bert: with ``model="wordpiece"`` and ``byte_level=False``: BERT's pipeline (``BertNormalizer`` with
            lower-casing, accent stripping and CJK splitting, ``BertPreTokenizer``, ``##`` continuations,
            WordPiece decoder with clean-up, ``[CLS] $A [SEP]`` on encode, :data:`BERT_SPECIAL_TOKENS` unless
            ``special_tokens`` says otherwise). Characters unseen in training become ``[UNK]``, whole words at
            a time, as in BERT.
        chat_template: ``"chatml"``, ``"llama3"``, ``"qwen3"``, ``"qwen25"``, ``"default"`` (= ``"chatml"``),
            any Jinja string, or ``None`` for no template.
        special_tokens: a :class:`SpecialTokens`, or a mapping overriding roles
            (``{"bos": ..., "eos": ..., "pad": ..., "unk": ...}``) of the template's default set.
        model_max_length: recorded on the tokenizer.

    Training is deterministic: the same arguments give the same vocabulary.
    """
    if model not in ("bpe", "unigram", "wordpiece"):
        raise ValueError(f"unknown tokenizer model {model!r}; choose 'bpe', 'unigram' or 'wordpiece'")
    if bert and (model != "wordpiece" or byte_level or byte_fallback):
        raise ValueError("bert=True needs model='wordpiece', byte_level=False and byte_fallback=False")
    if bert and special_tokens is None:
        special_tokens = BERT_SPECIAL_TOKENS
    specials = _resolve_specials(chat_template, special_tokens)
    prefix = "##" if bert else _WORDPIECE_PREFIX
    texts = list(default_corpus() if corpus is None else corpus)
    if not texts:
        raise ValueError("build_tokenizer needs a non-empty corpus (or corpus=None for default_corpus())")
    special_list = specials.all_special()
    if byte_fallback and (byte_level or model == "wordpiece"):
        raise ValueError("byte_fallback=True needs byte_level=False and model='bpe' or 'unigram'")
    n_fallback = 256 if byte_fallback else 0
    if byte_fallback and vocab_size < n_fallback + len(special_list) + 64:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for a byte-fallback tokenizer: it needs at least "
            f"{n_fallback + len(special_list) + 64} (256 byte tokens + specials + 64 pieces)"
        )
    vocab_size -= n_fallback
    alphabet = pre_tokenizers.ByteLevel.alphabet() if byte_level else []
    # Byte-level WordPiece also needs every byte as a continuation piece, or a word holding an unseen byte
    # pair becomes a single unk.
    n_bytes = 2 * len(alphabet) if model == "wordpiece" else len(alphabet)
    if byte_level and vocab_size < n_bytes + len(special_list):
        raise ValueError(
            f"vocab_size={vocab_size} is too small for a byte-level {model} tokenizer: it needs at least "
            f"{n_bytes + len(special_list)} ({n_bytes} byte pieces + {len(special_list)} special tokens)"
        )

    trainer: trainers.Trainer | None = None
    if model == "bpe":
        tok = Tokenizer(models.BPE(unk_token=None if byte_level else specials.unk))
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=special_list,
            initial_alphabet=alphabet,
            show_progress=False,
        )
    elif model == "unigram":
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size,
            special_tokens=special_list,
            unk_token=specials.unk,
            initial_alphabet=alphabet,
            show_progress=False,
        )
    else:  # vocabulary from _train_wordpiece below
        tok = Tokenizer(models.WordPiece(unk_token=specials.unk, continuing_subword_prefix=prefix))

    base_decoder: decoders.Decoder
    if bert:
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        base_decoder = decoders.WordPiece(prefix="##", cleanup=True)
    elif byte_level:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        base_decoder = decoders.ByteLevel()
    else:
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        base_decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = (
        decoders.Sequence([decoders.Replace(_WORDPIECE_PREFIX, ""), base_decoder])
        if model == "wordpiece" and not bert
        else base_decoder
    )
    if model == "wordpiece":
        # The WordPiece (BPE) trainer breaks ties between equally frequent pairs in hash order, so the pieces
        # it keeps vary from run to run; the same merges with ties broken by string are deterministic.
        _train_wordpiece(tok, texts, vocab_size - len(alphabet), special_list, specials.unk, prefix, alphabet, bert)
    else:
        tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    if model == "wordpiece" and byte_level:
        vocab = tok.get_vocab(with_added_tokens=False)
        for ch in alphabet:
            vocab.setdefault(_WORDPIECE_PREFIX + ch, len(vocab))
        tok.model = models.WordPiece(
            vocab, unk_token=specials.unk, continuing_subword_prefix=_WORDPIECE_PREFIX, max_input_chars_per_word=10**6
        )
    if model != "bpe":  # the BPE trainer is deterministic; the others order ties (and EM sums) by thread
        _canonicalise(tok, model, texts, special_list, specials.unk)
    if byte_fallback:
        _add_byte_fallback(tok, model, specials.unk)
    if specials.added:
        tok.add_tokens(list(specials.added))

    bos_id = tok.token_to_id(specials.bos)
    if bert:
        sep = (specials.eos, tok.token_to_id(specials.eos))
        tok.post_processor = processors.TemplateProcessing(
            single=f"{specials.bos} $A {specials.eos}",
            pair=f"{specials.bos} $A {specials.eos} $B:1 {specials.eos}:1",
            special_tokens=[(specials.bos, bos_id), sep],
        )
    elif specials.add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{specials.bos} $A",
            pair=f"{specials.bos} $A {specials.bos} $B",
            special_tokens=[(specials.bos, bos_id)],
        )
    elif byte_level:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)

    key = _template_key(chat_template)
    template = CHAT_TEMPLATES.get(key, key) if key is not None else None
    extra = [t for t in specials.extra if t not in (specials.bos, specials.eos, specials.pad, specials.unk)]
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=specials.bos,
        eos_token=specials.eos,
        pad_token=specials.pad,
        unk_token=specials.unk,
        additional_special_tokens=extra or None,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    if template is not None:
        wrapped.chat_template = template
    return wrapped


def _train_wordpiece(
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


def _add_byte_fallback(tok: Tokenizer, model: str, unk: str) -> None:
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


def _canonicalise(tok: Tokenizer, model: str, texts: list[str], special_list: list[str], unk: str) -> None:
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


def _resolve_specials(
    chat_template: str | None, special_tokens: SpecialTokens | Mapping[str, str] | None
) -> SpecialTokens:
    base = default_special_tokens(chat_template)
    if special_tokens is None:
        return base
    if isinstance(special_tokens, SpecialTokens):
        return special_tokens
    unknown = set(special_tokens) - {"bos", "eos", "pad", "unk"}
    if unknown:
        raise ValueError(f"special_tokens keys must be bos/eos/pad/unk, got {sorted(unknown)}")
    return SpecialTokens(
        bos=special_tokens.get("bos", base.bos),
        eos=special_tokens.get("eos", base.eos),
        pad=special_tokens.get("pad", base.pad),
        unk=special_tokens.get("unk", base.unk),
        extra=base.extra,
        added=base.added,
        add_bos=base.add_bos,
    )


_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "Water boils at 100 degrees Celsius at sea level, and freezes at 0.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The mitochondria is often called the powerhouse of the cell.",
    "Which of the following is a prime number? A) 21 B) 23 C) 25 D) 27",
    "The correct answer is B.",
    "Paris is the capital of France; Berlin is the capital of Germany.",
    "In 1969, Apollo 11 landed on the Moon, and Neil Armstrong walked on its surface.",
    'She said, "Don\'t forget your umbrella!" -- it was raining (again).',
    "Prices rose by 3.5% in 2023, while wages grew by only 2.1%.",
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n\tprint(i * i)\n",
    "E = mc^2, where c is the speed of light: about 299,792,458 m/s.",
    "Question: What is 12 + 30? Answer: 42.",
    "Please explain the difference between weather and climate in two sentences.",
    "Tokenizers split text into pieces; models read the pieces as integer ids.",
    "The sharer model writes its key-value cache, and the receiver model reads it.",
    "Email me at someone@example.com or visit https://example.org/path?q=1&r=2.",
    "Café, naïve, façade, résumé, jalapeño and Straße are borrowed words.",
    "日本語のテキストも少し含まれています。中文也有一点。",
    "Emoji appear in chats: 😀 👍 🎉 ❤️ and sometimes 🤖.",
    "Greek letters α, β, γ and math symbols ≤ ≥ ≠ ∞ √ ∑ show up in science.",
    "Русский текст и العربية تظهر أحيانًا أيضًا.",
    "Ordered list:\n1. first\n2. second\n3. third\n",
    "  Indented line with   multiple   spaces and a trailing tab\t",
    "Yes. No. Maybe? Certainly! Absolutely... (Perhaps.)",
    "The year 2024 had 366 days because it was a leap year.",
    "An apple a day keeps the doctor away, or so they say.",
    "Machine learning models learn patterns from data rather than explicit rules.",
]

_WORDS = [
    "time",
    "person",
    "year",
    "way",
    "day",
    "thing",
    "man",
    "world",
    "life",
    "hand",
    "part",
    "child",
    "eye",
    "woman",
    "place",
    "work",
    "week",
    "case",
    "point",
    "government",
    "company",
    "number",
    "group",
    "problem",
    "fact",
    "river",
    "mountain",
    "city",
    "country",
    "ocean",
    "planet",
    "star",
    "atom",
    "cell",
    "energy",
    "light",
    "sound",
    "music",
    "language",
    "history",
    "science",
    "animal",
    "plant",
    "tree",
    "flower",
    "stone",
    "metal",
    "water",
    "fire",
    "quickly",
    "slowly",
    "carefully",
    "always",
    "never",
    "often",
    "sometimes",
    "usually",
    "rarely",
    "really",
    "very",
    "quite",
    "rather",
]


def default_corpus(n_generated: int = 300, seed: int = 0) -> list[str]:
    """A small, varied training corpus: English prose, questions, numbers, punctuation, code, URLs and some
    non-Latin scripts and emoji. Deterministic for a given ``seed``; trains a tokenizer in milliseconds."""
    rng = random.Random(seed)
    out = list(_SENTENCES)
    for i in range(n_generated):
        words = rng.choices(_WORDS, k=rng.randint(4, 12))
        kind = i % 4
        if kind == 0:
            out.append(" ".join(words).capitalize() + ".")
        elif kind == 1:
            a, b = rng.randint(0, 999), rng.randint(0, 999)
            out.append(f"What is {a} + {b}? It is {a + b}. The {words[0]} has {rng.randint(2, 90)} {words[1]}s.")
        elif kind == 2:
            out.append(f"The {words[0]} of the {words[1]} is {rng.choice(_WORDS)}, not {rng.choice(_WORDS)}!")
        else:
            out.append(f"- {words[0]}: {rng.random():.3f}; {words[1]} ({rng.randint(1900, 2030)})")
    return out
