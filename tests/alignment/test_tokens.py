"""Token alignment: identity fast path, heterogeneous pairs, chat templates, strategies, robustness."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from transformers import AutoTokenizer

from c2c.alignment import AlignedPrompt, TokenAligner, fingerprint
from c2c.testing.tokenizers import SpecialTokens, build_tokenizer, default_corpus

STRATEGIES = ("longest", "first", "offsets")
MSGS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 12 + 30? Answer with one number."},
]


@pytest.fixture(scope="module")
def recv():
    """Qwen-like receiver: byte-level BPE, ChatML template."""
    return build_tokenizer(None, 500, model="bpe", chat_template="chatml")


@pytest.fixture(scope="module")
def shar():
    """Llama-like sharer with another model family: metaspace Unigram, Llama-3 template, BOS on encode."""
    return build_tokenizer(None, 350, model="unigram", byte_level=False, chat_template="llama3")


@pytest.fixture(scope="module")
def shar_bpe():
    """Same family as the receiver, different vocabulary size."""
    return build_tokenizer(None, 700, model="bpe", chat_template="llama3")


def check_invariants(p: AlignedPrompt) -> None:
    assert len(p.sharer_index) == len(p.receiver_ids)
    assert all(i == -1 or 0 <= i < len(p.sharer_ids) for i in p.sharer_index)
    s = p.stats
    assert s.n_receiver_tokens == len(p.receiver_ids)
    assert s.n_sharer_tokens == len(p.sharer_ids)
    assert s.n_fused == sum(i >= 0 for i in p.sharer_index)
    assert s.n_fused + s.n_unmapped + s.n_template == s.n_receiver_tokens
    assert 0 <= s.n_one_to_one <= s.n_fused
    assert 0.0 <= s.share_one_to_one <= 1.0
    fused = [i for i in p.sharer_index if i >= 0]
    assert fused == sorted(fused)  # the sharer is read in order


def _decode_s(tok, i: int) -> str:
    return tok.decode([i])


# ---------------------------------------------------------------- identity fast path


def test_identical_tokenizers_copy_ids(recv, tmp_path) -> None:
    recv.save_pretrained(tmp_path)
    copy = AutoTokenizer.from_pretrained(tmp_path)
    for strategy in STRATEGIES:
        al = TokenAligner(recv, copy, strategy=strategy)
        assert al.identical
        p = al.align_text("Hello world! Café 😀 <|im_start|> 2024")
        check_invariants(p)
        assert p.sharer_ids == p.receiver_ids
        assert p.sharer_index == list(range(len(p.receiver_ids)))
        assert p.stats.share_one_to_one == 1.0
        m = al.align_messages(MSGS)
        check_invariants(m)
        assert m.sharer_ids == m.receiver_ids  # same template: the sharer reads exactly the receiver prompt
        fused = [k for k, i in enumerate(m.sharer_index) if i >= 0]
        assert all(m.sharer_index[k] == k for k in fused)
        assert 0 < m.stats.n_template < len(m.receiver_ids)


def test_shared_vocabulary_with_extra_added_tokens_is_identity_where_possible(recv, tmp_path) -> None:
    """Qwen3 <-> Qwen2.5: same base vocabulary, the receiver has extra added tokens."""
    recv.save_pretrained(tmp_path)
    receiver = AutoTokenizer.from_pretrained(tmp_path)
    receiver.add_tokens(["<tool_call>"])
    receiver.add_special_tokens({"additional_special_tokens": ["<|only_receiver|>"]})
    al = TokenAligner(receiver, recv)
    assert al.identical
    p = al.align_text("call <tool_call> now <|only_receiver|> ok")
    check_invariants(p)
    tool = receiver.convert_tokens_to_ids("<tool_call>")
    only = receiver.convert_tokens_to_ids("<|only_receiver|>")
    for k, rid in enumerate(p.receiver_ids):
        if rid == only:  # special the sharer lacks: unfused
            assert p.sharer_index[k] == -1
        elif rid == tool:  # non-special text: re-encoded by the sharer
            assert p.sharer_ids[p.sharer_index[k]] != tool
            assert _decode_s(recv, p.sharer_ids[p.sharer_index[k]]).strip() in "<tool_call>"
        else:
            assert p.sharer_ids[p.sharer_index[k]] == rid
    assert p.stats.n_unmapped == 1


# ---------------------------------------------------------------- heterogeneous pairs


@pytest.mark.parametrize("strategy", ["longest", "first"])
def test_heterogeneous_longest_first(recv, shar, shar_bpe, strategy: str) -> None:
    text = " ".join(default_corpus()[:30])
    for sharer in (shar, shar_bpe):
        al = TokenAligner(recv, sharer, strategy=strategy)
        assert not al.identical
        p = al.align_text(text, add_special_tokens=False)
        check_invariants(p)
        assert p.receiver_ids == recv.encode(text, add_special_tokens=False)
        # one sharer token per fused receiver token, same order
        assert p.sharer_index == list(range(len(p.receiver_ids)))
        assert len(p.sharer_ids) == len(p.receiver_ids) == p.stats.n_fused
        assert 0.0 < p.stats.share_one_to_one < 1.0
        # each chosen sharer token is a piece of its receiver token's text (multi-byte characters aside)
        for rid, sid in zip(p.receiver_ids, p.sharer_ids):
            r_text, s_text = recv.decode([rid]), sharer.decode([sid])
            if "\ufffd" not in r_text and "\ufffd" not in s_text and sid != sharer.unk_token_id:
                assert s_text.strip() in r_text


def test_longest_and_first_choose_as_specified(recv, shar) -> None:
    longest = TokenAligner(recv, shar, strategy="longest")
    first = TokenAligner(recv, shar, strategy="first")
    differ = 0
    for rid in recv.encode(" ".join(default_corpus()[:30]), add_special_tokens=False):
        text = longest._texts([rid])[rid]
        enc = shar.backend_tokenizer.encode(text, add_special_tokens=False)
        pieces = [shar.decode([i]) for i in enc.ids]
        content = [k for k, piece in enumerate(pieces) if piece.strip()]
        lo = longest.align_ids([rid]).sharer_ids[0]
        fi = first.align_ids([rid]).sharer_ids[0]
        if content:
            assert fi == enc.ids[content[0]]
            best = max(len(pieces[k].strip()) for k in content)
            assert len(shar.decode([lo]).strip()) == best
        differ += lo != fi
    assert differ > 0


def test_offsets_reads_sharer_natural_tokenization(recv, shar) -> None:
    al = TokenAligner(recv, shar, strategy="offsets")
    text = "Prices rose by 3.5% in 2023 -- Café 😀 naïve! " + " ".join(default_corpus()[:10])
    p = al.align_text(text)
    check_invariants(p)
    s_enc = shar.backend_tokenizer.encode(text)
    r_enc = recv.backend_tokenizer.encode(text)
    assert p.sharer_ids == s_enc.ids  # natural sharer tokenization, with its own BOS
    assert p.sharer_ids[0] == shar.bos_token_id
    assert p.stats.n_unmapped == 0
    for k, si in enumerate(p.sharer_index):
        _, b = r_enc.offsets[k]
        sa, sb = s_enc.offsets[si]
        assert sa <= b - 1 < sb  # the sharer token covers the receiver token's last character
    # the longest strategy feeds one sharer token per receiver token instead, after the sharer's own BOS
    q = TokenAligner(recv, shar, strategy="longest").align_text(text)
    assert q.sharer_ids[0] == shar.bos_token_id
    assert len(q.sharer_ids) - 1 == len(q.receiver_ids) != len(p.sharer_ids) - 1


def test_byte_fallback_receiver_groups_byte_tokens(recv) -> None:
    """Llama-2 style <0xXX> tokens: the bytes of one character map together."""
    fallback = build_tokenizer(None, 600, model="bpe", byte_level=False, byte_fallback=True, chat_template="llama3")
    ids = fallback.encode("snow \u2603 man", add_special_tokens=False)
    byte_rows = [k for k, i in enumerate(ids) if fallback.convert_ids_to_tokens(i).startswith("<0x")]
    assert len(byte_rows) == 3
    snowman = recv.encode("\u2603", add_special_tokens=False)
    for strategy in STRATEGIES:
        p = TokenAligner(fallback, recv, strategy=strategy).align_ids(ids)
        check_invariants(p)
        want = snowman[0] if strategy == "first" else snowman[-1]  # "longest": the last of equal bytes
        assert {p.sharer_ids[p.sharer_index[k]] for k in byte_rows} == {want}


def test_partial_utf8_bytes_map_to_the_whole_character(recv, shar) -> None:
    text = "x 😀 y"
    ids = recv.encode(text, add_special_tokens=False)
    pieces = [recv.decode([i]) for i in ids]
    partial = [k for k, piece in enumerate(pieces) if "\ufffd" in piece]
    assert len(partial) >= 2  # the emoji is split into byte pieces
    for strategy in STRATEGIES:
        p = TokenAligner(recv, shar, strategy=strategy).align_ids(ids)
        check_invariants(p)
        targets = {p.sharer_ids[p.sharer_index[k]] for k in partial}
        assert len(targets) == 1
        assert shar.decode(list(targets)).strip() == "😀"
        # a sequence cut inside the character still maps every token
        cut = TokenAligner(recv, shar, strategy=strategy).align_ids(ids[: partial[1]])
        check_invariants(cut)
        assert cut.stats.n_unmapped == 0


# ---------------------------------------------------------------- specials


def test_specials_map_by_role_then_string() -> None:
    receiver = build_tokenizer(None, 400, chat_template="llama3")
    sharer = build_tokenizer(
        None,
        400,
        special_tokens=SpecialTokens(
            bos="<|startoftext|>", eos="<|im_end|>", pad="<|endoftext|>", unk="<|unk|>", extra=("<|end_of_text|>",)
        ),
    )
    r = receiver.convert_tokens_to_ids
    s = sharer.convert_tokens_to_ids
    ids = [
        receiver.bos_token_id,
        *receiver.encode("hi", add_special_tokens=False),
        r("<|eot_id|>"),  # eos role
        r("<|end_of_text|>"),  # same string
        r("<|start_header_id|>"),  # nothing on the sharer side
        receiver.pad_token_id,
    ]
    expected = {
        0: s("<|startoftext|>"),  # bos by role
        len(ids) - 4: s("<|im_end|>"),  # eos by role
        len(ids) - 3: s("<|end_of_text|>"),  # by string
        len(ids) - 2: None,  # unfused
        len(ids) - 1: s("<|endoftext|>"),  # pad by role
    }
    for strategy in STRATEGIES:
        al = TokenAligner(receiver, sharer, strategy=strategy)
        p = al.align_ids(ids, sharer_specials=False)  # as a piece: every special maps where it stands
        check_invariants(p)
        assert p.stats.n_special == 5
        assert p.stats.n_unmapped == 1
        for k, want in expected.items():
            if want is None:
                assert p.sharer_index[k] == -1
            else:
                assert p.sharer_ids[p.sharer_index[k]] == want
        # As a whole prompt (the ids start with the receiver's own BOS) the sharer reads its own frame, and
        # this sharer adds no BOS: the receiver's BOS is not fused and the sharer reads no BOS, exactly as
        # its own tokenizer encodes text (and as "offsets" reads plain text).
        whole = al.align_ids(ids)
        check_invariants(whole)
        assert whole.sharer_index[0] == -1 and whole.sharer_ids == p.sharer_ids[1:]
        assert whole.sharer_index[1:] == [i - 1 if i >= 0 else -1 for i in p.sharer_index[1:]]
        assert whole.stats.n_special == 5 and whole.stats.n_unmapped == 2
        q = al.align_text("hi")
        check_invariants(q)
        assert q.receiver_ids[0] == receiver.bos_token_id and q.sharer_index[0] == -1
        assert q.sharer_ids == sharer.encode("hi")  # no BOS: this sharer adds none
    # a sharer that adds its own BOS: the receiver's BOS reads it, at the sharer's first position
    llama = build_tokenizer(None, 450, model="unigram", byte_level=False, chat_template="llama3")
    for strategy in STRATEGIES:
        q = TokenAligner(receiver, llama, strategy=strategy).align_text("hi")
        check_invariants(q)
        assert q.sharer_ids[0] == llama.bos_token_id and q.sharer_ids.count(llama.bos_token_id) == 1
        assert q.sharer_index[0] == 0


def _unk_pair():
    """Two Unigram tokenizers without byte fallback: "ж" is unknown to the receiver only, "☃" to both."""
    corpus = default_corpus()
    receiver = build_tokenizer(corpus, 350, model="unigram", byte_level=False, chat_template="chatml")
    extra = ["ж ж ж жж щ ш"] * 3
    sharer = build_tokenizer(corpus + extra, 350, model="unigram", byte_level=False, chat_template="llama3")
    return receiver, sharer


def test_offsets_unk_reads_only_an_unk_in_its_own_place() -> None:
    """Bug (issue 11): a receiver <unk> was mapped by role to the sharer's *next* <unk> wherever it was, so
    a slot read a later, unrelated sharer row and the sharer was read out of order. A special token now reads
    its counterpart only inside its own span, else it is not fused."""
    receiver, sharer = _unk_pair()
    text = "abc ж def xyz ☃ end"
    al = TokenAligner(receiver, sharer, strategy="offsets")
    p = al.align_text(text, add_special_tokens=False)
    check_invariants(p)
    unk_r = [k for k, i in enumerate(p.receiver_ids) if i == receiver.unk_token_id]
    assert len(unk_r) == 2
    assert p.sharer_index[unk_r[0]] == -1  # "ж": the sharer read a real piece there, no <unk> to pair with
    s_enc = sharer(text, add_special_tokens=False, return_offsets_mapping=True)
    both = p.sharer_index[unk_r[1]]  # "☃": unknown to both, the sharer's <unk> at the same character
    assert p.sharer_ids[both] == sharer.unk_token_id and s_enc["offset_mapping"][both] == (14, 15)
    # the same in a chat: the first message's <unk> never reads the second message's sharer <unk>
    msgs = [{"role": "user", "content": "abc ж def"}, {"role": "user", "content": "xyz ☃ end"}]
    q = al.align_messages(msgs)
    check_invariants(q)
    unk_q = [k for k, i in enumerate(q.receiver_ids) if i == receiver.unk_token_id]
    assert q.sharer_index[unk_q[0]] == -1 and q.sharer_ids[q.sharer_index[unk_q[1]]] == sharer.unk_token_id
    for strategy in ("longest", "first"):  # one sharer token per fused receiver token, in order
        check_invariants(TokenAligner(receiver, sharer, strategy=strategy).align_messages(msgs))


def test_offsets_never_reads_into_a_later_message() -> None:
    """A template that puts nothing between two contents lets one sharer token span both: a row of the first
    message must not read it (it has read the second message); rows of the second message may."""
    cat = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    receiver = build_tokenizer(None, 270, model="bpe", chat_template=cat)  # nearly bytes: "q", "u", ...
    sharer = build_tokenizer(None, 900, model="bpe", chat_template=cat)  # "Ġquick" is one token
    p = TokenAligner(receiver, sharer, strategy="offsets").align_messages(
        [{"role": "user", "content": "The qu"}, {"role": "user", "content": "ick brown"}]
    )
    check_invariants(p)
    quick = sharer.convert_tokens_to_ids("Ġquick")
    assert quick in p.sharer_ids
    q = p.sharer_ids.index(quick)
    pieces = receiver.convert_ids_to_tokens(p.receiver_ids)
    assert pieces[:7] == ["The", "Ġ", "q", "u", "i", "c", "k"]
    assert p.sharer_index[1:4] == [-1, -1, -1]  # "Ġ", "q", "u" (first message): "Ġquick" reads ahead
    assert p.sharer_index[4:7] == [q, q, q]  # "i", "c", "k" (second message)


def test_identity_alignment_has_full_stats(recv) -> None:
    ids = recv.encode("Hello there", add_special_tokens=False) + [recv.eos_token_id]
    p = AlignedPrompt.identity(ids, special_ids=recv.all_special_ids)
    check_invariants(p)
    assert p.sharer_ids == p.receiver_ids == ids and p.sharer_index == list(range(len(ids)))
    stats = p.stats
    assert (stats.n_fused, stats.n_one_to_one, stats.n_special, stats.share_one_to_one) == (len(ids), len(ids), 1, 1.0)
    assert AlignedPrompt.identity([]).stats.n_receiver_tokens == 0


def test_lone_surrogates_are_refused_clearly(recv, shar) -> None:
    for strategy in STRATEGIES:
        al = TokenAligner(recv, shar, strategy=strategy)
        with pytest.raises(ValueError, match=r"lone surrogate \(U\+D800\) at character 1.*not valid Unicode"):
            al.align_text("a\ud800b")
        with pytest.raises(ValueError, match=r"message 1's content contains a lone surrogate"):
            al.align_messages([{"role": "user", "content": "ok"}, {"role": "user", "content": "\udfff"}])
        with pytest.raises(TypeError, match="align_ids"):
            al.align_text([1, 2, 3])  # type: ignore[arg-type]


# ---------------------------------------------------------------- chat templates


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_chat_alignment_fuses_content_only(recv, shar, strategy: str) -> None:
    al = TokenAligner(recv, shar, strategy=strategy)
    p = al.align_messages(MSGS, add_generation_prompt=True, enable_thinking=False)
    check_invariants(p)
    r_text = recv.apply_chat_template(MSGS, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    s_text = shar.apply_chat_template(MSGS, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert p.receiver_ids == recv.encode(r_text, add_special_tokens=False)
    # template rows unfused, content rows fused
    fused_text = recv.decode([rid for rid, i in zip(p.receiver_ids, p.sharer_index) if i >= 0])
    template_text = recv.decode([rid for rid, i in zip(p.receiver_ids, p.sharer_index) if i < 0])
    assert fused_text == "Be brief.What is 12 + 30? Answer with one number."
    assert "<|im_start|>" in template_text and "Be brief" not in template_text
    assert p.stats.n_template > 0 and p.stats.n_unmapped == 0
    # the sharer reads its own template
    header = shar.convert_tokens_to_ids("<|start_header_id|>")
    assert p.sharer_ids[0] == shar.bos_token_id
    assert p.sharer_ids.count(header) == 3
    assert "<|im_start|>" not in shar.decode(p.sharer_ids)
    if strategy == "offsets":
        assert p.sharer_ids == shar.encode(s_text, add_special_tokens=False)
    else:
        # sharer template pieces + one aligned token per receiver content token
        s_template = shar.encode(s_text, add_special_tokens=False)
        n_s_content = len(shar.encode("Be brief.", add_special_tokens=False)) + len(
            shar.encode("What is 12 + 30? Answer with one number.", add_special_tokens=False)
        )
        assert len(p.sharer_ids) == len(s_template) - n_s_content + p.stats.n_fused
        assert shar.decode(p.sharer_ids).startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
        assert shar.decode(p.sharer_ids).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_chat_generation_prompt_and_thinking_change_template_rows_only(recv, shar) -> None:
    al = TokenAligner(recv, shar)
    a = al.align_messages(MSGS, add_generation_prompt=True, enable_thinking=False)
    b = al.align_messages(MSGS, add_generation_prompt=True, enable_thinking=True)
    c = al.align_messages(MSGS, add_generation_prompt=False)
    for p in (a, b, c):
        check_invariants(p)
    assert len(a.receiver_ids) > len(b.receiver_ids) > len(c.receiver_ids)
    assert a.stats.n_fused == b.stats.n_fused == c.stats.n_fused
    assert a.stats.n_template > b.stats.n_template > c.stats.n_template


def test_chat_content_with_template_like_text_and_trimming(recv, shar) -> None:
    """Content that looks like a role header or a template marker, and whitespace a template trims."""
    msgs = [
        {"role": "user", "content": "user"},
        {"role": "assistant", "content": "  assistant\n<|im_end|> tricky  "},
        {"role": "user", "content": ""},
        {"role": "user", "content": None},
    ]
    for strategy in STRATEGIES:
        for r, s in ((recv, shar), (shar, recv)):
            p = TokenAligner(r, s, strategy=strategy).align_messages(msgs)
            check_invariants(p)
            assert p.stats.n_fused > 0


def test_templates_that_transform_or_drop_content(recv, shar) -> None:
    upper = build_tokenizer(
        None, 450, chat_template="{% for m in messages %}[{{ m['role'] }}] {{ m['content'] | upper }}\n{% endfor %}"
    )
    p = TokenAligner(upper, shar).align_messages([{"role": "user", "content": "hello there"}])
    check_invariants(p)
    fused = upper.decode([rid for rid, i in zip(p.receiver_ids, p.sharer_index) if i >= 0])
    assert fused == "HELLO THERE"
    dropping = build_tokenizer(None, 450, chat_template="{{ 'no content here' }}")
    with pytest.raises(ValueError, match="cannot be located"):
        TokenAligner(dropping, recv).align_messages([{"role": "user", "content": "hi"}])


def test_no_chat_template_is_refused_for_chat_messages(recv) -> None:
    """One rule everywhere: chat messages on a tokenizer without a chat template raise a clear error (the
    aligner used to fall back silently to "role: content" lines). Plain text still aligns."""
    plain = build_tokenizer(None, 450, model="unigram", chat_template=None)
    for strategy in STRATEGIES:
        for r, s, side in ((plain, recv, "receiver"), (recv, plain, "sharer")):
            al = TokenAligner(r, s, strategy=strategy)
            with pytest.raises(ValueError, match=f"the {side} tokenizer .*has no chat template; pass plain text"):
                al.align_messages(MSGS)
            check_invariants(al.align_text("Be brief. What is 12 + 30?"))


def test_bad_messages_raise_clear_errors(recv, shar) -> None:
    al = TokenAligner(recv, shar)
    with pytest.raises(TypeError, match="text content only"):
        al.align_messages([{"role": "user", "content": [{"type": "text", "text": "x"}]}])
    with pytest.raises(TypeError, match="'role'"):
        al.align_messages([{"content": "x"}])
    with pytest.raises(ValueError, match="strategy"):
        TokenAligner(recv, shar, strategy="middle")  # type: ignore[arg-type]


# ---------------------------------------------------------------- robustness


def test_empty_inputs(recv, shar) -> None:
    for strategy in STRATEGIES:
        al = TokenAligner(recv, shar, strategy=strategy)
        for p in (al.align_text("", add_special_tokens=False), al.align_ids([]), al.align_messages([])):
            assert p.receiver_ids == p.sharer_ids == p.sharer_index == []
            assert p.stats.n_receiver_tokens == 0 and p.stats.share_one_to_one == 0.0
        p = al.align_text("")  # only the receiver's special tokens, if any
        check_invariants(p)
        p = al.align_messages([{"role": "user", "content": ""}])
        check_invariants(p)
        assert p.stats.n_fused == 0 and p.stats.n_template == len(p.receiver_ids) > 0


def test_ids_beyond_the_vocabulary_are_unfused_and_negative_ids_rejected(recv, shar) -> None:
    ids = [*recv.encode("hi there", add_special_tokens=False), len(recv) + 100, recv.encode("x")[-1]]
    for strategy in STRATEGIES:
        for sharer in (shar, recv):
            p = TokenAligner(recv, sharer, strategy=strategy).align_ids(ids)
            check_invariants(p)
            assert p.sharer_index[-2] == -1 and p.stats.n_unmapped == 1
        with pytest.raises(ValueError, match="negative"):
            TokenAligner(recv, shar, strategy=strategy).align_ids([5, -100])


# Open-ended inputs (arbitrary unicode, emoji, unknown characters...) are fuzzed in test_fuzz.py.


def test_align_ids_matches_align_text(recv, shar) -> None:
    text = " ".join(default_corpus()[:20]) + " 😀 日本"
    for strategy in ("longest", "first"):
        al = TokenAligner(recv, shar, strategy=strategy)
        a = al.align_text(text, add_special_tokens=False)
        b = al.align_ids(a.receiver_ids)
        assert (a.sharer_ids, a.sharer_index) == (b.sharer_ids, b.sharer_index)
    # offsets from ids: the sharer reads its natural tokenization of the decoded text
    al = TokenAligner(recv, shar, strategy="offsets")
    b = al.align_ids(recv.encode(text, add_special_tokens=False))
    assert b.sharer_ids == shar.encode(text, add_special_tokens=False)


def test_long_prompt_takes_milliseconds(recv, shar) -> None:
    ids = recv.encode(" ".join(default_corpus()), add_special_tokens=False)[:2048]
    assert len(ids) == 2048
    for strategy in STRATEGIES:
        al = TokenAligner(recv, shar, strategy=strategy)
        al.align_ids(ids)  # fills the per-token caches
        start = time.perf_counter()
        p = al.align_ids(ids)
        elapsed = time.perf_counter() - start
        check_invariants(p)
        assert elapsed < 0.25, f"{strategy}: {elapsed * 1000:.1f} ms for 2048 tokens"


def test_concurrent_alignment_shares_caches_safely(recv, shar) -> None:
    texts = [" ".join(default_corpus()[i : i + 5]) + " 😀" for i in range(0, 60, 5)]
    for strategy in STRATEGIES:
        serial = [TokenAligner(recv, shar, strategy=strategy).align_text(t) for t in texts]
        shared = TokenAligner(recv, shar, strategy=strategy, cache_size=16)
        with ThreadPoolExecutor(max_workers=4) as pool:
            parallel = list(pool.map(shared.align_text, texts * 3))
        for a, b in zip(serial * 3, parallel):
            assert (a.sharer_ids, a.sharer_index) == (b.sharer_ids, b.sharer_index)


def test_cache_is_bounded(recv, shar) -> None:
    al = TokenAligner(recv, shar, cache_size=8)
    p = al.align_text(" ".join(default_corpus()[:20]))
    check_invariants(p)
    assert len(al._text_cache) <= 8 and len(al._choice_cache) <= 8
    assert p.sharer_ids == TokenAligner(recv, shar).align_text(" ".join(default_corpus()[:20])).sharer_ids


# ---------------------------------------------------------------- fingerprint


def test_fingerprint(recv, shar, tmp_path) -> None:
    assert fingerprint(recv) == fingerprint(recv)
    recv.save_pretrained(tmp_path)
    assert fingerprint(AutoTokenizer.from_pretrained(tmp_path)) == fingerprint(recv)
    assert fingerprint(recv) != fingerprint(shar)
    assert fingerprint(recv) != fingerprint(build_tokenizer(None, 501, model="bpe", chat_template="chatml"))
    assert fingerprint(recv) != fingerprint(build_tokenizer(None, 500, model="bpe", chat_template="llama3"))
    other = AutoTokenizer.from_pretrained(tmp_path)
    other.chat_template = "{{ messages[0]['content'] }}"
    assert fingerprint(other) != fingerprint(recv)
    assert len(fingerprint(recv)) == 64
