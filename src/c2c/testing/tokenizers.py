"""Real tokenizers trained locally with the ``tokenizers`` library (no hub access).

Tests, benchmarks and the demo need *heterogeneous* receiver/sharer pairs: tokenizers that cut the same text
differently, carry different special tokens and render different chat templates. :func:`build_tokenizer`
trains one deterministically in well under a second on :func:`default_corpus` and wraps it as a
``transformers`` fast tokenizer that round-trips through ``save_pretrained`` / ``AutoTokenizer``.

Chat templates modelled on real families (``"chatml"`` Qwen-like, ``"llama3"`` Llama-3-like, ``"qwen3"``,
``"qwen25"``) and the special tokens that go with each are in :mod:`c2c.testing.chat_styles`. Two
tokenizers trained alike with the ``"qwen3"`` and ``"qwen25"`` templates are a same-vocabulary pair like the
paper's Qwen3-0.6B <- Qwen2.5-0.5B.

``bert=True`` builds a BERT-style WordPiece tokenizer instead (lower-casing, accent-stripping normaliser,
punctuation-splitting pre-tokeniser, ``##`` continuations, ``[CLS] ... [SEP]``), as BERT-family models use.

The corpus is in :mod:`c2c.testing.corpus` and the deterministic vocabulary steps in :mod:`c2c.testing.vocab`;
their public names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from c2c.testing.chat_styles import (
    BERT_SPECIAL_TOKENS,
    CHAT_TEMPLATES,
    SpecialTokens,
    default_special_tokens,
    resolve_special_tokens,
    template_key,
)
from c2c.testing.corpus import default_corpus
from c2c.testing.vocab import WORDPIECE_PREFIX, add_byte_fallback, canonicalise, train_wordpiece

__all__ = [
    "BERT_SPECIAL_TOKENS",
    "CHAT_TEMPLATES",
    "SpecialTokens",
    "build_tokenizer",
    "default_corpus",
    "default_special_tokens",
]

TokenizerModel = Literal["bpe", "unigram", "wordpiece"]


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
    specials = resolve_special_tokens(chat_template, special_tokens)
    prefix = "##" if bert else WORDPIECE_PREFIX
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
    else:  # vocabulary from train_wordpiece below
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
        decoders.Sequence([decoders.Replace(WORDPIECE_PREFIX, ""), base_decoder])
        if model == "wordpiece" and not bert
        else base_decoder
    )
    if model == "wordpiece":
        # The WordPiece (BPE) trainer breaks ties between equally frequent pairs in hash order, so the pieces
        # it keeps vary from run to run; the same merges with ties broken by string are deterministic.
        train_wordpiece(tok, texts, vocab_size - len(alphabet), special_list, specials.unk, prefix, alphabet, bert)
    else:
        tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    if model == "wordpiece" and byte_level:
        vocab = tok.get_vocab(with_added_tokens=False)
        for ch in alphabet:
            vocab.setdefault(WORDPIECE_PREFIX + ch, len(vocab))
        tok.model = models.WordPiece(
            vocab, unk_token=specials.unk, continuing_subword_prefix=WORDPIECE_PREFIX, max_input_chars_per_word=10**6
        )
    if model != "bpe":  # the BPE trainer is deterministic; the others order ties (and EM sums) by thread
        canonicalise(tok, model, texts, special_list, specials.unk)
    if byte_fallback:
        add_byte_fallback(tok, model, specials.unk)
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

    key = template_key(chat_template)
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
