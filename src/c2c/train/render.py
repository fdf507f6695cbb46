"""One conversation -> token ids: the receiver's instruction and response, and every sharer's alignment.

One example = instruction (every turn before the response; in chat mode rendered with the receiver's chat
template and the generation prompt, thinking disabled) + response (the last assistant turn). The loss
covers the response tokens only; the fuser rewrites the instruction's content rows (never template rows,
never the last instruction token); each sharer reads its aligned ids (identity when the tokenizers match).

Plain-text mode (``chat=False``: no chat template, or ``use_chat_template: false``) feeds the prompt as
text, exactly as ``C2CModel.generate("...")`` does for a ``prompt_format="text"`` fuser. A chat-layout row
whose instruction is a single user turn is converted explicitly (its content is the prompt); any other
chat-layout row (a system turn, several turns) is refused: there is no template to lay it out with, and an
invented ``role: content`` rendering would train the fuser on prompts no entry point ever sends.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, TypedDict

from transformers import PreTrainedTokenizerBase

from c2c.alignment.records import AlignedPrompt
from c2c.alignment.tokens import TokenAligner
from c2c.alignment.tokens import fingerprint as tokenizer_fingerprint
from c2c.config import ChatRows
from c2c.hf import chat_text, has_chat_template
from c2c.train.config import OnTemplateMismatch
from c2c.train.errors import DataError
from c2c.train.turns import Conversation, Fields, Turn, extract_conversation

__all__ = ["RENDER_VERSION", "ExampleRenderer", "RenderedRow"]

# bump when rendering changes, so cached renders are not reused ("3": the sharer reads its own BOS/frame)
RENDER_VERSION = "3"


class RenderedRow(TypedDict):
    """One rendered example (a row of the prepared ``datasets.Dataset``)."""

    receiver_ids: list[int]
    response_ids: list[int]
    sharer_ids: list[list[int]]  # per sharer
    sharer_index: list[list[int]]  # per sharer, per receiver instruction token: sharer column, -1 = not fused
    length: int  # receiver tokens (instruction + response)
    n_fused: int  # instruction rows the fuser rewrites
    template_fallback: bool  # trained on response content + eos (the template broke the prefix property)


class ExampleRenderer:
    """Turns one data row into token ids: receiver instruction + response, and per-sharer alignments.

    Args:
        receiver_tokenizer: fast tokenizer of the receiver (its tokens are the master).
        aligners: one ``TokenAligner`` per sharer.
        chat: render with the chat templates (every tokenizer needs one), else plain text (see the module
            docstring for chat-layout rows in plain-text mode).
        on_template_mismatch: "warn" (fall back to response content + eos, counted) or "error".
        alignment_shift: the model's ``C2CConfig.alignment_shift`` (to count the rows really fused).
        chat_rows: the model's ``C2CConfig.chat_rows``: which chat rows are fused ("content": each model's own
            template, message content only; "reference": one receiver rendering, every instruction row but the
            last), the same layout inference uses.
    """

    def __init__(
        self,
        receiver_tokenizer: PreTrainedTokenizerBase,
        aligners: Sequence[TokenAligner],
        *,
        chat: bool,
        enable_thinking: bool = False,
        on_template_mismatch: OnTemplateMismatch = "warn",
        alignment_shift: int = 0,
        fields: Fields | None = None,
        chat_rows: ChatRows = "content",
    ) -> None:
        if not aligners:
            raise ValueError("need one aligner per sharer (at least one)")
        if chat and not has_chat_template(receiver_tokenizer):
            raise DataError(
                "use_chat_template is on but the receiver tokenizer has no chat template; set a template on the "
                "tokenizer or train on plain prompt/response fields (use_chat_template: false)"
            )
        if chat and chat_rows == "content":  # the reference layout reads the receiver's rendering only
            for k, a in enumerate(aligners):
                if not has_chat_template(a.sharer_tokenizer):
                    raise DataError(
                        f"chat-template training renders each model's own template, but the tokenizer of sharer {k} "
                        f"({getattr(a.sharer_tokenizer, 'name_or_path', '') or type(a.sharer_tokenizer).__name__!r}) "
                        "has no chat template; set one on that tokenizer, or train on plain text "
                        "(use_chat_template: false)"
                    )
        self.tokenizer = receiver_tokenizer
        self.aligners = list(aligners)
        self.chat = chat
        self.enable_thinking = enable_thinking
        self.on_template_mismatch: OnTemplateMismatch = on_template_mismatch
        self.alignment_shift = alignment_shift
        self.chat_rows: ChatRows = chat_rows
        self.fields = fields or Fields()
        eos = receiver_tokenizer.eos_token_id
        self.eos_ids = [] if eos is None else [int(eos)]

    def __getstate__(self) -> dict[str, Any]:
        # TokenAligner's caches do not survive pickling (datasets' worker processes need it): send the
        # tokenizers and strategy, rebuild the aligner on arrival (its caches are only caches).
        state = dict(self.__dict__)
        state["aligners"] = [(a.receiver_tokenizer, a.sharer_tokenizer, a.strategy) for a in self.aligners]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["aligners"] = [TokenAligner(r, s, strategy=strategy) for r, s, strategy in state["aligners"]]
        self.__dict__.update(state)

    def fingerprint(self) -> str:
        """Hash of everything that decides the rendered ids (for ``datasets`` caching)."""
        payload = {
            "version": RENDER_VERSION,
            "receiver": tokenizer_fingerprint(self.tokenizer),
            "sharers": [[tokenizer_fingerprint(a.sharer_tokenizer), a.strategy, a.identical] for a in self.aligners],
            "chat": self.chat,
            "thinking": self.enable_thinking,
            "mismatch": self.on_template_mismatch,
            "shift": self.alignment_shift,
            "chat_rows": self.chat_rows,
            "fields": asdict(self.fields),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    # ------------------------------------------------------------------ rendering

    def __call__(self, row: dict[str, Any], index: int) -> RenderedRow:
        where = f"row {index}"
        conv = extract_conversation(row, self.fields, where)
        mismatch = False
        if self.chat:
            aligned, response, mismatch = self._chat(conv, where)
        else:
            prompt = self._plain_prompt(conv, where)
            aligned = [a.align_text(prompt, add_special_tokens=True) for a in self.aligners]
            response = self._encode(conv.response["content"]) + self.eos_ids
        receiver_ids = list(aligned[0].receiver_ids)
        for k, a in enumerate(aligned[1:], start=1):
            if list(a.receiver_ids) != receiver_ids:
                raise DataError(f"{where}: sharer {k}'s alignment was built on different receiver ids")
        return {
            "receiver_ids": receiver_ids,
            "response_ids": response,
            "sharer_ids": [list(a.sharer_ids) for a in aligned],
            "sharer_index": [list(a.sharer_index) for a in aligned],
            "length": len(receiver_ids) + len(response),
            "n_fused": self._n_fused(aligned),
            "template_fallback": mismatch,
        }

    def _chat(self, conv: Conversation, where: str) -> tuple[list[AlignedPrompt], list[int], bool]:
        """Chat-template rendering: the instruction with the generation prompt; the response is the rest of
        the rendered conversation (or its content + eos when the template breaks the prefix property)."""
        aligned = [
            a.align_messages(
                conv.instruction,
                add_generation_prompt=True,
                enable_thinking=self.enable_thinking,
                layout=self.chat_rows,
            )
            for a in self.aligners
        ]
        instr_text = self._render(conv.instruction, True, where)
        full_text = self._render(conv.messages, False, where)
        if aligned[0].receiver_ids != self._encode(instr_text):
            raise DataError(f"{where}: the aligner rendered a different instruction than the receiver's template")
        if full_text.startswith(instr_text):
            return aligned, self._encode(full_text[len(instr_text) :]), False
        if self.on_template_mismatch == "error":
            raise DataError(
                f"{where}: the receiver's chat template breaks the prefix property: the instruction rendered "
                "with the generation prompt is not a prefix of the rendered conversation "
                f"(they differ from character {_diverge(instr_text, full_text)}: instruction ends "
                f"{instr_text[-40:]!r}, conversation continues {full_text[len(instr_text) - 40 :][:80]!r}). "
                "Fix the template, or set on_template_mismatch: warn to train on the response content + eos"
            )
        return aligned, self._encode(conv.response["content"]) + self.eos_ids, True

    def _plain_prompt(self, conv: Conversation, where: str) -> str:
        """The plain-text prompt of a conversation: prompt/response fields as they are, a chat-layout row
        only when its instruction is a single user turn."""
        if conv.from_text_fields:
            return conv.instruction[0]["content"]
        roles = [t["role"] for t in conv.instruction]
        if roles == ["user"]:
            return conv.instruction[0]["content"]
        raise DataError(
            f"{where}: a conversation with turns {roles} before the response cannot be trained as plain text "
            "(training is in plain-text mode: the receiver tokenizer has no chat template, or use_chat_template is "
            "false); only a single user turn converts to a plain-text prompt. Train with a chat template "
            "(set tokenizer.chat_template, use_chat_template: true), or reduce such rows to one user turn or "
            "to prompt/response fields"
        )

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids)

    def _render(self, messages: list[Turn], generation_prompt: bool, where: str) -> str:
        try:
            return chat_text(
                self.tokenizer, messages, add_generation_prompt=generation_prompt, enable_thinking=self.enable_thinking
            )
        except Exception as exc:  # jinja2 TemplateError, e.g. "System role not supported"
            raise DataError(f"{where}: the receiver's chat template failed on this conversation: {exc}") from exc

    def _n_fused(self, aligned: Sequence[AlignedPrompt]) -> int:
        """Instruction rows the fuser rewrites (all sharers): slot j < n-1 reads index[j + shift] >= 0."""
        n = len(aligned[0].receiver_ids)
        fused = 0
        for j in range(n - 1):
            src = j + self.alignment_shift
            if src < n and any(a.sharer_index[src] >= 0 for a in aligned):
                fused += 1
        return fused


def _diverge(a: str, b: str) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
