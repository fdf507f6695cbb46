"""The sharer reads its own special-token frame (e.g. its BOS) around a whole prompt, in every strategy.

Bug: with "longest"/"first" the sharer read each receiver token re-encoded piece by piece and nothing else.
A receiver that adds no BOS (Qwen-style) then fed a BOS-trained sharer (Llama-style) a prompt without its
BOS, an input it never saw in training (in the demo its next-token recall fell from 96.5% to 1%). The
sharer's frame rows are read by the sharer, never fused.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from c2c import C2CModel, FuserConfig
from c2c.alignment import AlignedPrompt, TokenAligner
from c2c.cache import backbone, layer_rows, new_cache
from c2c.testing.models import tiny_model
from c2c.testing.tokenizers import build_tokenizer, default_corpus
from c2c.train.render import ExampleRenderer

STRATEGIES = ("longest", "first", "offsets")
TEXT = "Where is the old mill? Prices rose by 3.5% -- Café 😀 naïve! " + " ".join(default_corpus()[:3])


@pytest.fixture(scope="module")
def chatml():
    """Qwen-like receiver: adds no special token on encode."""
    return build_tokenizer(None, 500, model="bpe", chat_template="chatml")


@pytest.fixture(scope="module")
def llama():
    """Llama-like sharer: Unigram, adds its BOS on encode, Llama-3 template (which writes the BOS)."""
    return build_tokenizer(None, 350, model="unigram", byte_level=False, chat_template="llama3")


@pytest.fixture(scope="module")
def bert():
    """BERT-like: [CLS] (its bos) in front and [SEP] (its eos) behind every text."""
    return build_tokenizer(None, 420, model="wordpiece", byte_level=False, bert=True, chat_template="chatml")


def check(p: AlignedPrompt) -> None:
    assert len(p.sharer_index) == len(p.receiver_ids)
    assert all(i == -1 or 0 <= i < len(p.sharer_ids) for i in p.sharer_index)
    fused = [i for i in p.sharer_index if i >= 0]
    assert fused == sorted(fused)
    assert p.stats is not None and p.stats.n_sharer_tokens == len(p.sharer_ids)
    assert p.stats.n_fused + p.stats.n_unmapped + p.stats.n_template == p.stats.n_receiver_tokens


def test_builders_frame_as_the_families_do(chatml, llama, bert) -> None:
    assert chatml.encode("hi") == chatml.encode("hi", add_special_tokens=False)
    assert llama.encode("hi") == [llama.bos_token_id, *llama.encode("hi", add_special_tokens=False)]
    assert bert.encode("hi") == [bert.bos_token_id, *bert.encode("hi", add_special_tokens=False), bert.eos_token_id]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sharer_reads_its_bos_unfused_when_the_receiver_adds_none(chatml, llama, strategy: str) -> None:
    al = TokenAligner(chatml, llama, strategy=strategy)
    p = al.align_text(TEXT)
    check(p)
    bos = llama.bos_token_id
    assert p.receiver_ids == chatml.encode(TEXT)
    assert p.sharer_ids[0] == bos and p.sharer_ids.count(bos) == 1
    assert 0 not in p.sharer_index  # the BOS row is prefilled, not fused
    assert p.stats.n_special == 0 and p.stats.n_unmapped == 0
    if strategy == "offsets":
        assert p.sharer_ids == llama.encode(TEXT)  # the sharer's natural encoding, BOS included
    else:  # the content mapping is the piece-by-piece one, one position further on
        q = al.align_text(TEXT, add_special_tokens=False)
        assert p.sharer_ids == [bos, *q.sharer_ids]
        assert p.sharer_index == [i + 1 if i >= 0 else -1 for i in q.sharer_index]
        assert p.stats.n_one_to_one == q.stats.n_one_to_one and p.stats.n_fused == q.stats.n_fused
    # the same prompt given as ids, said to be whole, reads the same; as a piece it is not framed
    assert al.align_ids(p.receiver_ids, sharer_specials=True).sharer_ids[0] == bos
    if strategy != "offsets":  # (offsets re-encodes decoded text: it may cut it differently from the text)
        whole = al.align_ids(p.receiver_ids, sharer_specials=True)
        assert (whole.sharer_ids, whole.sharer_index) == (p.sharer_ids, p.sharer_index)
    piece = al.align_ids(p.receiver_ids)  # this receiver adds no BOS: its ids cannot tell, so a piece
    assert bos not in piece.sharer_ids
    assert al.align_ids(p.receiver_ids[:1], sharer_specials=False).sharer_ids[0] != bos  # one token


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_receiver_bos_given_explicitly_is_not_doubled(chatml, llama, strategy: str) -> None:
    """A receiver special that maps to the sharer's BOS by role already supplies it."""
    ids = [chatml.bos_token_id, *chatml.encode("hello there")]
    p = TokenAligner(chatml, llama, strategy=strategy).align_ids(ids, sharer_specials=True)
    check(p)
    assert p.sharer_ids.count(llama.bos_token_id) == 1 and p.sharer_ids[0] == llama.bos_token_id
    assert p.sharer_index[0] == 0 and p.stats.n_special == 1


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_bos_receiver_ids_are_whole_prompts_by_default(llama, chatml, strategy: str) -> None:
    """Ids that start with the receiver's own BOS were encoded with special tokens: a whole prompt."""
    sharer = build_tokenizer(None, 600, model="bpe", chat_template="llama3")  # another Llama-like vocabulary
    al = TokenAligner(llama, sharer, strategy=strategy)
    ids = llama.encode("hello there")
    p = al.align_ids(ids)
    assert p.sharer_ids[0] == sharer.bos_token_id and p.sharer_index[0] == 0  # BOS reads BOS
    assert p.sharer_ids.count(sharer.bos_token_id) == 1
    # a sharer that adds no BOS reads none, and the receiver's BOS is not fused (as "offsets" does on text)
    p = TokenAligner(llama, chatml, strategy=strategy).align_ids(ids)
    check(p)
    assert p.sharer_index[0] == -1 and chatml.bos_token_id not in p.sharer_ids


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_trailing_specials_frame_the_sharer_as_its_tokenizer_does(chatml, llama, bert, strategy: str) -> None:
    # BERT-like sharer: [CLS] ... [SEP] around the text, neither read by a receiver token
    p = TokenAligner(chatml, bert, strategy=strategy).align_text(TEXT)
    check(p)
    assert p.sharer_ids[0] == bert.bos_token_id and p.sharer_ids[-1] == bert.eos_token_id
    assert 0 not in p.sharer_index and len(p.sharer_ids) - 1 not in p.sharer_index
    if strategy == "offsets":
        assert p.sharer_ids == bert.encode(TEXT)
    # BERT-like receiver, Llama-like sharer: [CLS] (bos role) reads the BOS; [SEP] (eos role) has no
    # counterpart among what the sharer adds, so the sharer does not read an end-of-text mid-prompt
    q = TokenAligner(bert, llama, strategy=strategy).align_text("hello there")
    check(q)
    assert q.receiver_ids[0] == bert.bos_token_id and q.receiver_ids[-1] == bert.eos_token_id
    assert q.sharer_ids[0] == llama.bos_token_id and q.sharer_index[0] == 0
    assert q.sharer_index[-1] == -1 and llama.eos_token_id not in q.sharer_ids
    assert q.stats.n_special == 2


def test_identical_pairs_copy_ids_unframed(chatml, llama, tmp_path) -> None:
    """Same tokenization (the paper's Qwen pair, the reference's layout): ids are copied, nothing added."""
    for tok in (chatml, llama):
        tok.save_pretrained(tmp_path / "t")
        copy = AutoTokenizer.from_pretrained(tmp_path / "t")
        for strategy in STRATEGIES:
            al = TokenAligner(tok, copy, strategy=strategy)
            assert al.identical
            for p in (al.align_text(TEXT), al.align_ids(tok.encode(TEXT), sharer_specials=True)):
                assert p.sharer_ids == p.receiver_ids == tok.encode(TEXT)
                assert p.sharer_index == list(range(len(p.receiver_ids)))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_chat_sharer_reads_the_bos_its_template_writes_once(chatml, llama, strategy: str) -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is the old mill?"}]
    p = TokenAligner(chatml, llama, strategy=strategy).align_messages(msgs)
    check(p)
    assert p.sharer_ids[0] == llama.bos_token_id and p.sharer_ids.count(llama.bos_token_id) == 1
    rendered = llama.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert llama.decode(p.sharer_ids[:2]) == rendered[: len(llama.decode(p.sharer_ids[:2]))]
    # a Llama-like receiver: its template's BOS is a template row, and the sharer still reads one BOS
    q = TokenAligner(llama, chatml, strategy=strategy).align_messages(msgs)
    check(q)
    assert q.receiver_ids.count(llama.bos_token_id) == 1 and q.sharer_index[0] == -1


# ---------------------------------------------------------------------- C2CModel and the trainer


def test_c2c_model_prefills_the_sharer_on_its_bos(tok_chatml, tok_llama3) -> None:
    """Plain-text prompts and prompts given as ids: the sharer's prefill is its own run on BOS + the
    aligned pieces, and the fuser reads the content rows after the BOS; the trainer renders the same."""
    r = tiny_model("qwen3", num_layers=2, seed=1, vocab_size=len(tok_chatml) + 8)
    s = tiny_model("llama", num_layers=2, seed=2, vocab_size=len(tok_llama3) + 8)
    model = C2CModel.from_models(
        r,
        s,
        fuser_config=FuserConfig(hidden_size=32, intermediate_size=32, dropout=0.0),
        receiver_tokenizer=tok_chatml,
        sharer_tokenizer=tok_llama3,
        seed=0,
    )
    model.fusers[0].set_gates(True)
    text = "The old mill stands by the river."
    aligned = model.aligners[0].align_text(text)
    assert model.aligners[0].strategy == "longest"
    bos = tok_llama3.bos_token_id
    assert aligned.sharer_ids[0] == bos and 0 not in aligned.sharer_index
    for prompt in (text, tok_chatml.encode(text)):
        batch = model.encode(prompt)
        assert batch.sharer_input_ids[0][0].tolist() == aligned.sharer_ids
        n = len(aligned.receiver_ids)
        assert batch.sharer_index[0][0, :n].tolist() == aligned.sharer_index
        prefix = model.prefill_and_fuse(batch)
        needed = max(aligned.sharer_index[: n - 1]) + 1
        direct = new_cache(s, keep_all_rows=True)
        ids = torch.tensor([aligned.sharer_ids[:needed]])
        with torch.no_grad():
            backbone(s)(input_ids=ids, cache=direct, use_cache=True)
        for layer in range(2):
            got, want = layer_rows(prefix.sharer_caches[0], layer)[0], layer_rows(direct, layer)[0]
            assert got.shape == want.shape
            torch.testing.assert_close(got, want)
    # the trainer's plain-text rendering gives the sharer the same ids and reads
    row = ExampleRenderer(tok_chatml, [model.aligners[0]], chat=False)({"prompt": text, "response": "Yes."}, 0)
    assert row["receiver_ids"] == aligned.receiver_ids
    assert row["sharer_ids"][0] == aligned.sharer_ids and row["sharer_index"][0] == aligned.sharer_index
