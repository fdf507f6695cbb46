"""Local tokenizer builder: real trained tokenizers, templates, round trips."""

from __future__ import annotations

import time

import pytest
from transformers import AutoTokenizer

from c2c.alignment import fingerprint
from c2c.testing.chat_styles import CHAT_TEMPLATES, SpecialTokens, default_special_tokens
from c2c.testing.corpus import default_corpus
from c2c.testing.tokenizers import build_tokenizer

SAMPLES = [
    "Hello world! What is 12 + 30?",
    "Café naïve — 日本語 😀👍🏽 e\u0301 \u200d tabs\t\tand\n\nnewlines   ",
    "",
    "<|im_start|> looks special",
]
MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]


def test_default_corpus_is_varied_and_deterministic() -> None:
    corpus = default_corpus()
    assert corpus == default_corpus()
    assert default_corpus(seed=1) != corpus
    joined = "".join(corpus)
    assert any(ch.isdigit() for ch in joined)
    assert any(ord(ch) > 0x2000 for ch in joined)  # CJK / emoji
    assert len(corpus) > 100


@pytest.mark.parametrize("model", ["bpe", "unigram", "wordpiece"])
@pytest.mark.parametrize("byte_level", [True, False])
def test_builds_every_model_fast_and_roles_are_set(model: str, byte_level: bool) -> None:
    start = time.perf_counter()
    size = 560 if (model == "wordpiece" and byte_level) else 400
    tok = build_tokenizer(default_corpus(), size, model=model, byte_level=byte_level)
    assert time.perf_counter() - start < 5.0  # well under a second normally; slack for a busy machine
    assert tok.is_fast
    specials = default_special_tokens("chatml")
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        specials.bos,
        specials.eos,
        specials.pad,
        specials.unk,
    )
    for role in ("bos", "eos", "pad", "unk"):
        assert getattr(tok, f"{role}_token_id") is not None
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}) == 4
    assert 300 <= len(tok) <= size + 2  # + the two added think tokens
    ids = tok.encode("What is 12 + 30?", add_special_tokens=False)
    assert tok.decode(ids) == "What is 12 + 30?"
    if byte_level:  # byte-level tokenizers are lossless on any string
        for text in SAMPLES:
            assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_non_byte_level_maps_unseen_characters_to_unk() -> None:
    tok = build_tokenizer(None, 300, model="unigram", byte_level=False)
    ids = tok.encode("snowman \u2603", add_special_tokens=False)
    assert tok.unk_token_id in ids


@pytest.mark.parametrize("model", ["bpe", "unigram"])
def test_byte_fallback_spells_unseen_characters_in_bytes(model: str, tmp_path) -> None:
    tok = build_tokenizer(None, 600, model=model, byte_level=False, byte_fallback=True, chat_template="llama3")
    assert len(tok) <= 600
    text = "snowman \u2603 and \U0001f9ea"  # neither is in the default corpus
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.unk_token_id not in ids
    assert tok.convert_tokens_to_ids("<0xE2>") in ids
    assert tok.decode(ids) == text
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).encode(text) == tok.encode(text)
    with pytest.raises(ValueError, match="byte_fallback"):
        build_tokenizer(None, 600, byte_fallback=True)


def test_training_is_deterministic() -> None:
    for model, size, byte_level in [
        ("bpe", 420, True),
        ("unigram", 420, True),
        ("unigram", 320, False),
        ("wordpiece", 600, True),
        ("wordpiece", 320, False),
        ("wordpiece", 420, False),  # the tokenizers WordPiece trainer broke ties in hash order at this size
        ("wordpiece", 420, "bert"),
        ("unigram", 600, "fallback"),
    ]:
        kw: dict = {"byte_level": byte_level}
        if byte_level == "fallback":
            kw = {"byte_level": False, "byte_fallback": True}
        elif byte_level == "bert":
            kw = {"byte_level": False, "bert": True}
        a = build_tokenizer(None, size, model=model, **kw)
        b = build_tokenizer(None, size, model=model, **kw)
        assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
        assert fingerprint(a) == fingerprint(b)


def test_different_sizes_and_models_tokenize_differently() -> None:
    text = " ".join(default_corpus()[:40])
    toks = [
        build_tokenizer(None, 400, model="bpe"),
        build_tokenizer(None, 600, model="bpe"),
        build_tokenizer(None, 400, model="unigram"),
        build_tokenizer(None, 400, model="wordpiece", byte_level=False),
    ]
    encodings = [tuple(t.encode(text, add_special_tokens=False)) for t in toks]
    assert len(set(encodings)) == len(encodings)
    token_seqs = [tuple(t.convert_ids_to_tokens(list(e))) for t, e in zip(toks, encodings)]
    assert len(set(token_seqs)) == len(token_seqs)
    # a larger vocabulary cuts the same text into fewer pieces
    assert len(encodings[1]) < len(encodings[0])


def test_chat_templates_render_two_styles() -> None:
    chatml = build_tokenizer(None, 400, chat_template="chatml")
    llama = build_tokenizer(None, 400, chat_template="llama3")
    default = build_tokenizer(None, 400)
    assert default.chat_template == CHAT_TEMPLATES["chatml"] == chatml.chat_template

    text = chatml.apply_chat_template(MSGS, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    )
    no_think = chatml.apply_chat_template(MSGS, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert no_think == text + "<think>\n\n</think>\n\n"
    assert chatml.apply_chat_template(MSGS, tokenize=False, add_generation_prompt=False).endswith("<|im_end|>\n")

    text = llama.apply_chat_template(MSGS, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2 + 2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # template markers are single special tokens
    ids = llama.encode(text, add_special_tokens=False)
    assert ids.count(llama.convert_tokens_to_ids("<|start_header_id|>")) == 3
    assert ids[0] == llama.bos_token_id
    # llama3 style adds BOS on encode, chatml style does not
    assert llama.encode("hi")[0] == llama.bos_token_id
    assert chatml.encode("hi")[0] != chatml.bos_token_id
    # <think> is an added, non-special token (kept by skip_special_tokens)
    think = chatml.convert_tokens_to_ids("<think>")
    assert think not in chatml.all_special_ids
    assert chatml.decode([think], skip_special_tokens=True) == "<think>"


def test_no_template_and_custom_specials() -> None:
    tok = build_tokenizer(None, 400, chat_template=None, special_tokens={"eos": "<|end|>"})
    assert tok.chat_template is None
    assert tok.eos_token == "<|end|>" and tok.bos_token == "<s>"
    custom = SpecialTokens(bos="[B]", eos="[E]", pad="[P]", unk="[U]", extra=("[X]",))
    tok = build_tokenizer(None, 400, special_tokens=custom, chat_template="{{ messages[0]['content'] }}")
    assert tok.bos_token == "[B]" and "[X]" in tok.all_special_tokens
    assert tok.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False) == "q"


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="too small"):
        build_tokenizer(None, 200)
    with pytest.raises(ValueError, match="unknown tokenizer model"):
        build_tokenizer(None, 400, model="sentencepiece")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty corpus"):
        build_tokenizer([], 400)
    with pytest.raises(ValueError, match="bos/eos/pad/unk"):
        build_tokenizer(None, 400, special_tokens={"cls": "[CLS]"})


@pytest.mark.parametrize(("model", "byte_level", "template"), [("bpe", True, "chatml"), ("unigram", False, "llama3")])
def test_save_pretrained_round_trip(tmp_path, model: str, byte_level: bool, template: str) -> None:
    tok = build_tokenizer(None, 400, model=model, byte_level=byte_level, chat_template=template)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.is_fast
    for text in SAMPLES:
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.decode(loaded.encode(text)) == tok.decode(tok.encode(text))
    assert loaded.chat_template == tok.chat_template
    assert loaded.special_tokens_map == tok.special_tokens_map
    assert loaded.all_special_tokens == tok.all_special_tokens
    assert loaded.apply_chat_template(MSGS, tokenize=False, add_generation_prompt=True) == tok.apply_chat_template(
        MSGS, tokenize=False, add_generation_prompt=True
    )
    assert fingerprint(loaded) == fingerprint(tok)


def test_bert_style_wordpiece(tmp_path) -> None:
    """BERT's pipeline: lower-casing and accent stripping, punctuation split, ## continuations, [CLS] ... [SEP],
    [UNK] for a whole word holding an unseen character; deterministic and saved/loaded unchanged."""
    tok = build_tokenizer(None, 420, model="wordpiece", byte_level=False, bert=True, chat_template="chatml")
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("[CLS]", "[SEP]", "[PAD]", "[UNK]")
    ids = tok.encode("Café NAÏVE, water!")
    assert ids[0] == tok.bos_token_id
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "cafe naive, water!"
    assert any(t.startswith("##") for t in tok.convert_ids_to_tokens(ids))
    assert tok.encode("snow\u2603man", add_special_tokens=False) == [tok.unk_token_id]  # the whole word
    again = build_tokenizer(None, 420, model="wordpiece", byte_level=False, bert=True, chat_template="chatml")
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in SAMPLES:
        assert loaded.encode(text) == tok.encode(text)
    with pytest.raises(ValueError, match="bert=True needs model='wordpiece'"):
        build_tokenizer(None, 420, model="bpe", bert=True)


def test_qwen_like_templates_share_one_vocabulary() -> None:
    """Qwen3-like and Qwen2.5-like tokenizers trained alike: the same tokenization, different templates (the
    paper's same-vocabulary pair)."""
    q3 = build_tokenizer(None, 400, chat_template="qwen3")
    q25 = build_tokenizer(None, 400, chat_template="qwen25")
    assert q3.backend_tokenizer.to_str() == q25.backend_tokenizer.to_str()
    user = [{"role": "user", "content": "Hi"}]
    assert q25.apply_chat_template(user, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    instruction = q3.apply_chat_template(user, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert instruction == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    chat = [*user, {"role": "assistant", "content": "Hello"}]
    assert q3.apply_chat_template(chat, tokenize=False, enable_thinking=False) == instruction + "Hello<|im_end|>\n"
