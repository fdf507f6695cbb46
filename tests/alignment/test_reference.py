"""The reference implementation's row layout for a same-vocabulary pair (``layout="reference"``).

The expected rows below are written from the reference code (thu-nics/C2C, package ``rosetta``), not from
c2c's implementation:

- ``script/playground/inference_example.py``, ``run_inference_example`` (and ``rosetta/utils/evaluate.py``,
  ``generate_answer_with_logits``): ``input_text = tokenizer.apply_chat_template(prompt, tokenize=False,
  add_generation_prompt=True, enable_thinking=False)`` with the receiver's (``slm``) tokenizer, then
  ``instruction_index = [1, 0] * (L - 1)``, ``label_index = [[-1, 0]]``: rows ``0 .. L-2`` fused, row ``L-1``
  not.
- ``rosetta/model/wrapper.py``, ``RosettaModel.forward``: one ``input_ids`` tensor is read by every model
  ("same input_ids and attention_mask for all models"), so the sharer reads the receiver's ids.
- ``rosetta/train/dataset_adapters.py``, ``ChatDataset.__getitem__`` + ``generate_kv_cache_index``: the
  instruction is ``messages[:-1]`` rendered with the generation prompt; its first ``len - 1`` rows are fused.
"""

from __future__ import annotations

import pytest

from c2c.alignment import TokenAligner
from c2c.batch import collate
from c2c.testing.tokenizers import SpecialTokens, build_tokenizer, default_special_tokens

USER = [{"role": "user", "content": "What is 12 + 30? Answer with one number."}]
CHAT = [*USER, {"role": "assistant", "content": "42"}]


@pytest.fixture(scope="module")
def qwen3():
    """Receiver, Qwen3-like (empty think block in the generation prompt with thinking off)."""
    return build_tokenizer(None, 500, chat_template="qwen3")


@pytest.fixture(scope="module")
def qwen25():
    """Sharer, Qwen2.5-like: the same vocabulary, its own template (default system prompt) and, like
    Qwen2.5, no ``<think>`` tokens."""
    base = default_special_tokens("qwen25")
    specials = SpecialTokens(bos=base.bos, eos=base.eos, pad=base.pad, unk=base.unk, extra=base.extra, added=())
    return build_tokenizer(None, 500, chat_template="qwen25", special_tokens=specials)


def test_reference_rows_for_a_chat_prompt(qwen3, qwen25) -> None:
    al = TokenAligner(qwen3, qwen25)
    assert al.identical
    p = al.align_messages(USER, add_generation_prompt=True, enable_thinking=False, layout="reference")
    # run_inference_example: the receiver's template, generation prompt, thinking off; tokenizer(text)
    text = qwen3.apply_chat_template(USER, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # generation prompt + think block
    expected_ids = qwen3(text)["input_ids"]
    n = len(expected_ids)
    assert p.receiver_ids == expected_ids
    # RosettaModel.forward: the sharer reads the very same ids (the receiver's template, not its own)
    assert p.sharer_ids == expected_ids
    assert "You are a helpful assistant." not in qwen25.decode(p.sharer_ids)
    # kv_cache_index = [[1, 0] * (L - 1), [[-1, 0]]]: every row but the last fused, template rows included
    fused = [k for k, i in enumerate(p.sharer_index) if i >= 0]
    assert fused == list(range(n - 1))
    assert all(p.sharer_index[k] == k for k in fused) and p.sharer_index[-1] == -1
    assert qwen3.convert_ids_to_tokens(p.receiver_ids[0]) == "<|im_start|>"  # a template row, fused
    assert p.stats.n_fused == n - 1 and p.stats.n_template == 0 and p.stats.n_unmapped == 1
    # <think> / </think> are ids the sharer's tokenizer does not define: passed as the reference does, not
    # counted one to one
    think = [qwen3.convert_tokens_to_ids(t) for t in ("<think>", "</think>")]
    assert qwen25.convert_tokens_to_ids("<think>") in (None, qwen25.unk_token_id)
    n_think = sum(1 for k in fused if p.receiver_ids[k] in think)
    assert n_think == 2 and p.stats.n_one_to_one == n - 1 - n_think

    # c2c's own layout differs: each model's template, message content only
    c = al.align_messages(USER, add_generation_prompt=True, enable_thinking=False)
    assert c.receiver_ids == p.receiver_ids
    assert "You are a helpful assistant." in qwen25.decode(c.sharer_ids)
    assert c.stats.n_template > 0 and c.stats.n_fused < p.stats.n_fused


def test_reference_training_instruction_rows(qwen3, qwen25) -> None:
    """ChatDataset: instruction = messages[:-1] with the generation prompt; generate_kv_cache_index fuses its
    first len(instruction) - 1 rows; the response follows, unfused."""
    al = TokenAligner(qwen3, qwen25)
    p = al.align_messages(CHAT[:-1], add_generation_prompt=True, enable_thinking=False, layout="reference")
    instruction = qwen3.apply_chat_template(
        CHAT[:-1], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    full = qwen3.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=False, enable_thinking=False)
    instruction_ids = qwen3(instruction, add_special_tokens=False)["input_ids"]
    assert full.startswith(instruction)  # the reference's labels assume this prefix property
    assert p.receiver_ids == instruction_ids
    assert [k for k, i in enumerate(p.sharer_index) if i >= 0] == list(range(len(instruction_ids) - 1))
    # collated for a forward pass: the prefix (all but the last row) is exactly the fused rows, each reading
    # the sharer's own position
    batch = collate([[p]], pad_id=0, sharer_pad_ids=[0])
    assert batch.prefix_len == len(instruction_ids) - 1
    assert bool(batch.fuse_mask.all())
    assert batch.sharer_index[0][0, : batch.prefix_len].tolist() == list(range(batch.prefix_len))
    assert batch.sharer_input_ids[0][0].tolist() == instruction_ids


def test_reference_layout_is_refused_for_other_tokenizations(qwen3) -> None:
    llama = build_tokenizer(None, 520, chat_template="llama3")
    for strategy in ("longest", "first", "offsets"):
        want = r"tokenizes identically; these tokenizers differ in: model.*'content' layout"
        with pytest.raises(ValueError, match=want):
            TokenAligner(qwen3, llama, strategy=strategy).align_messages(USER, layout="reference")
    unigram = build_tokenizer(None, 400, model="unigram", byte_level=False, chat_template="qwen25")
    with pytest.raises(ValueError, match="normalizer, pre_tokenizer, model"):
        TokenAligner(qwen3, unigram).align_messages(USER, layout="reference")
    with pytest.raises(ValueError, match="unknown chat layout 'rosetta'"):
        TokenAligner(qwen3, qwen3).align_messages(USER, layout="rosetta")  # type: ignore[arg-type]


def test_reference_layout_needs_a_receiver_chat_template(qwen3) -> None:
    plain = build_tokenizer(None, 500, chat_template=None, special_tokens=default_special_tokens("qwen3"))
    assert TokenAligner(plain, qwen3).identical
    with pytest.raises(ValueError, match="receiver tokenizer .*has no chat template; pass plain text"):
        TokenAligner(plain, qwen3).align_messages(USER, layout="reference")
    # the sharer's template is never used by this layout
    p = TokenAligner(qwen3, plain).align_messages(USER, layout="reference")
    assert p.sharer_ids == p.receiver_ids
    assert TokenAligner(qwen3, plain).align_messages([], layout="reference").receiver_ids == []
