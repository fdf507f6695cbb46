"""Chat rendering with each tokenizer's own template and location of message contents."""

from __future__ import annotations

import pytest

from c2c.alignment import TokenAligner
from c2c.alignment.chat import render_chat
from c2c.testing.tokenizers import build_tokenizer

# Like Qwen3: an assistant turn's "<think>...</think>" is pulled out of the content into template markup,
# so the template text depends on the content.
THINK_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- set c = m['content'] -%}"
    "{%- if m['role'] == 'assistant' and '</think>' in c -%}"
    "{{ '<|im_start|>assistant\\n<think>\\n' + c.split('</think>')[0].split('<think>')[-1].strip() + '\\n</think>\\n\\n'"
    " + c.split('</think>')[-1].lstrip() + '<|im_end|>\\n' }}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + c + '<|im_end|>\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + c + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}{%- endif -%}"
)


@pytest.fixture(scope="module")
def chatml():
    return build_tokenizer(None, 450, chat_template="chatml")


@pytest.fixture(scope="module")
def llama():
    return build_tokenizer(None, 420, chat_template="llama3")


def contents(tok, msgs, **kw) -> list[str]:
    r = render_chat(tok, msgs, **kw)
    assert r.text == tok.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=kw.get("add_generation_prompt", True), enable_thinking=False
    )
    return [r.text[a:b] for a, b in r.content_spans]


def test_spans_are_the_contents(chatml, llama) -> None:
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "user"},  # equals a role header
        {"role": "assistant", "content": "<|im_end|>\n<|im_start|>user\n"},  # equals template text
        {"role": "user", "content": "  padded  "},
    ]
    assert contents(chatml, msgs) == [m["content"] for m in msgs]
    # Llama 3 trims contents
    assert contents(llama, msgs) == [m["content"].strip() for m in msgs]
    assert contents(chatml, [{"role": "user", "content": ""}]) == [""]


def test_content_dependent_template_text(chatml) -> None:
    tok = build_tokenizer(None, 450, chat_template=THINK_TEMPLATE)
    msgs = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "<think>some reasoning</think>The answer is B."},
        {"role": "user", "content": "q2"},
    ]
    for agp in (True, False):
        got = contents(tok, msgs, add_generation_prompt=agp)
        assert got[0] == "q1" and got[2] == "q2"
        assert "some reasoning" in got[1] and got[1].endswith("The answer is B.")
        assert "<|im_start|>" not in got[1]
    for strategy in ("longest", "first", "offsets"):
        for r, s in ((tok, chatml), (chatml, tok)):
            p = TokenAligner(r, s, strategy=strategy).align_messages(msgs)
            assert len(p.sharer_index) == len(p.receiver_ids)
            fused = r.decode([rid for rid, i in zip(p.receiver_ids, p.sharer_index) if i >= 0])
            assert "q1" in fused and "The answer is B." in fused and "<|im_start|>" not in fused


def test_tokenizer_without_a_chat_template_is_refused() -> None:
    """One rule everywhere: chat messages need a chat template (no silent "role: content" rendering)."""
    plain = build_tokenizer(None, 420, chat_template=None)
    want = r"receiver tokenizer .* has no chat template; pass plain text .*prompt_format='text'.* set tokenizer\."
    with pytest.raises(ValueError, match=want):
        render_chat(plain, [{"role": "user", "content": "hi"}], name="receiver")
    plain.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    r = render_chat(plain, [{"role": "user", "content": "hi"}])
    assert r.text == "user: hi\n" and r.content_spans == [(6, 8)]
