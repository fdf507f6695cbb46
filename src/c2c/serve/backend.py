"""The engine's view of a :class:`~c2c.model.C2CModel`: prompt measuring, tokenizers, end tokens, generation.

Four communication modes are served: ``c2c`` (receiver reads the fused cache), ``receiver`` and ``sharer``
(each model alone) and ``t2t`` (text-to-text: the sharer writes a one-sentence background note, the
receiver answers with it in its prompt; templates from :mod:`c2c.eval.prompts`, as in the evaluation).

One prompt rule for every mode (so no mode silently reads a prompt laid out unlike the others):

- a plain-text prompt (``/v1/completions``) is tokenized as is, with each model's special tokens, exactly
  as ``C2CModel.generate("text")`` and the trainer's plain-text path do;
- a conversation (``/v1/chat/completions``) is rendered with each model's own chat template. It is served
  only when the fuser was trained on chat-template prompts (``prompt_format == "chat"``) and every
  tokenizer of the pair has a chat template; otherwise chat requests are refused (:attr:`ModelInfo.chat_refusal`)
  and point to ``/v1/completions``: no made-up ``role: content`` rendering anywhere.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import StoppingCriteriaList

from c2c.eval.prompts import NOTE_CONTEXT_TEMPLATE, NOTE_TEMPLATE
from c2c.hf import encode_text, eos_token_ids, has_chat_template, render_chat
from c2c.model import C2CModel
from c2c.serve.schema import BackendOutput, ModelInfo, Prompt, PromptCost, Segment, is_text

STAGES = ("sharer_prefill", "fusion", "receiver_prefill", "decode")


def display_name(model: Any) -> str:
    """A model's name for clients: its hub id, or only the base name of a local folder (local paths say
    nothing to a client and may reveal the server's file layout)."""
    path = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if not path:
        return type(model).__name__
    path = str(path)
    local = os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1 or os.path.exists(path)
    return (os.path.basename(os.path.normpath(path)) or path) if local else path


def chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of ``messages`` in ``tokenizer``'s own chat template, with the generation prompt, as
    ``C2CModel.generate`` renders them (``enable_thinking=False``, its default)."""
    return render_chat(tokenizer, messages)


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a plain-text prompt, with the tokenizer's special tokens (as ``generate("text")``)."""
    return encode_text(tokenizer, text)


class C2CBackend:
    """Adapter from the engine's :class:`~c2c.serve.schema.Backend` protocol to a ``C2CModel``."""

    def __init__(self, model: Any, *, model_id: str | None = None) -> None:
        if model.receiver_tokenizer is None:
            raise ValueError("serving needs the receiver tokenizer: build the C2CModel with receiver_tokenizer=")
        self.model = model
        sharer_tok = model.sharer_tokenizers[0] if model.sharer_tokenizers else None
        self._sharer_tokenizer = sharer_tok if sharer_tok is not None else model.receiver_tokenizer
        # Sharer-only and T2T run the sharer on its own tokenization: they need its tokenizer.
        modes = ("c2c", "receiver", "sharer", "t2t") if sharer_tok is not None else ("c2c", "receiver")
        prompt_format = model.config.prompt_format
        self.info = ModelInfo(
            model_id=model_id or "c2c",
            receiver_name=display_name(model.receiver),
            sharer_names=[display_name(s) for s in model.sharers],
            modes=modes,
            prompt_format=prompt_format,
            chat_refusal=self._chat_refusal(prompt_format),
            context_length=model.receiver_spec.max_positions,
        )

    def _chat_refusal(self, prompt_format: str) -> str | None:
        if prompt_format == "text":
            return (
                "this fuser was trained on plain-text prompts (prompt_format 'text'), not on chat-template "
                "prompts; send the prompt as text to /v1/completions"
            )
        toks = [("receiver", self.model.receiver_tokenizer)]
        toks += [
            (f"sharer {k}" if len(self.model.sharers) > 1 else "sharer", t)
            for k, t in enumerate(self.model.sharer_tokenizers)
            if t is not None
        ]
        missing = [name for name, t in toks if not has_chat_template(t)]
        if missing:
            return (
                f"the {' and '.join(missing)} tokenizer has no chat template, so a conversation has no defined "
                "rendering; send the prompt as text to /v1/completions"
            )
        return None

    # -- tokens ---------------------------------------------------------------------------------------------

    def tokenizer_for(self, mode: str) -> Any:
        return self._sharer_tokenizer if mode == "sharer" else self.model.receiver_tokenizer

    def eos_token_ids(self, mode: str) -> set[int]:
        llm = self.model.sharers[0] if mode == "sharer" else self.model.receiver
        return set(eos_token_ids(llm, self.tokenizer_for(mode)))

    def _ids(self, prompt: Prompt, tokenizer: Any) -> list[int]:
        return text_ids(tokenizer, prompt) if is_text(prompt) else chat_ids(tokenizer, prompt)  # type: ignore[arg-type]

    def _receiver_tokens(self, prompt: Prompt) -> int:
        """Receiver prompt length exactly as receiver / C2C generation reads it (through ``encode``)."""
        return int(self.model.encode(prompt).input_ids.shape[1])

    def measure(self, prompt: Prompt, mode: str, *, note_tokens: int) -> PromptCost:
        """Tokenize ``prompt`` the way ``mode`` reads it (see :class:`~c2c.serve.schema.PromptCost`)."""
        m = self.model
        if not is_text(prompt) and self.info.chat_refusal is not None:
            raise ValueError(self.info.chat_refusal)
        r_ctx = m.receiver_spec.max_positions
        s_ctx = m.sharer_specs[0].max_positions
        if mode == "sharer":
            n = len(self._ids(prompt, self._sharer_tokenizer))
            cost = PromptCost(n, (Segment("sharer", n, s_ctx, True),))
        elif mode == "t2t":
            n_note = len(self._ids(self.t2t_note_prompt(prompt), self._sharer_tokenizer))
            n_answer = self._receiver_tokens(self._t2t_prompt(prompt, "")) + note_tokens
            note_seg = Segment("sharer", n_note + note_tokens, s_ctx, False)
            cost = PromptCost(n_answer, (note_seg, Segment("receiver", n_answer, r_ctx, True)))
        else:
            # Exactly what generation reads: the receiver's ids and each sharer's aligned ids.
            batch = m.encode(prompt)
            n = int(batch.input_ids.shape[1])
            grows = bool(m.config.include_response)
            segs = [Segment("receiver", n, r_ctx, True)]
            if mode == "c2c":
                segs += [
                    Segment("sharer", int(ids.shape[1]), spec.max_positions, grows)
                    for ids, spec in zip(batch.sharer_input_ids, m.sharer_specs)
                ]
            cost = PromptCost(n, tuple(segs))
        if min(s.tokens for s in cost.segments) == 0:
            raise ValueError("the prompt is empty after tokenization; send at least one character of text")
        return cost

    # -- T2T ------------------------------------------------------------------------------------------------

    def t2t_note_prompt(self, prompt: Prompt) -> Prompt:
        """The sharer's note request about the question (the last user turn of a conversation)."""
        if is_text(prompt):
            return NOTE_TEMPLATE.format(question=prompt)
        messages: list[dict[str, str]] = prompt  # type: ignore[assignment]
        question = messages[self._last_user(messages)]["content"]
        return [{"role": "user", "content": NOTE_TEMPLATE.format(question=question)}]

    @staticmethod
    def _last_user(messages: list[dict[str, str]]) -> int:
        return max((i for i, m in enumerate(messages) if m["role"] == "user"), default=len(messages) - 1)

    def _t2t_prompt(self, prompt: Prompt, note: str) -> Prompt:
        if is_text(prompt):
            return NOTE_CONTEXT_TEMPLATE.format(note=note, prompt=prompt)
        messages: list[dict[str, str]] = prompt  # type: ignore[assignment]
        out = [dict(m) for m in messages]
        last = self._last_user(messages)
        out[last]["content"] = NOTE_CONTEXT_TEMPLATE.format(note=note, prompt=messages[last]["content"])
        return out

    def t2t_answer_prompt(self, prompt: Prompt, note: str, max_tokens: int) -> tuple[Prompt, str, int]:
        tok = self.model.receiver_tokenizer
        ids: list[int] | None = None
        while True:
            answer = self._t2t_prompt(prompt, note)
            n = self._receiver_tokens(answer)
            if n <= max_tokens or not note:
                return answer, note, n
            # Rare: the note reads longer in receiver tokens than its budget; cut it at a token boundary.
            if ids is None:
                ids = list(tok(note, add_special_tokens=False)["input_ids"])
            ids = ids[: max(0, min(len(ids) - 1, len(ids) - (n - max_tokens)))]
            note = tok.decode(ids, skip_special_tokens=True).strip()

    # -- generation -----------------------------------------------------------------------------------------

    def generate(
        self,
        prompts: list[Prompt],
        *,
        mode: str,
        max_new_tokens: int,
        do_sample: bool,
        temperature: float,
        top_p: float,
        stopping: StoppingCriteriaList,
    ) -> BackendOutput:
        out = self.model.generate(
            prompts,
            mode=mode,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            stopping_criteria=stopping,
            return_dict=True,
        )
        return BackendOutput(
            texts=list(out.texts),
            sequences=[list(s) for s in out.sequences],
            timings={k: float(out.timings.get(k, 0.0)) for k in STAGES},
            prompt_tokens=[int(n) for n in out.prompt_tokens],
        )


def warmup(backend: C2CBackend) -> None:
    """One one-token generation per mode, so the first client does not pay one-off costs (kernel
    selection, allocator growth: the first C2C call is several times slower than the next)."""
    prompt: Prompt = "Hello" if backend.info.chat_refusal else [{"role": "user", "content": "Hello"}]
    for mode in backend.info.modes:
        if mode == "t2t":
            continue  # runs the sharer and the receiver, both warmed up by their own modes
        backend.generate(
            [prompt],
            mode=mode,
            max_new_tokens=1,
            do_sample=False,
            temperature=1.0,
            top_p=1.0,
            stopping=StoppingCriteriaList(),
        )


def load_backend(
    fuser: str,
    *,
    receiver: str | None = None,
    sharer: str | None = None,
    model_id: str | None = None,
    **load_kwargs: Any,
) -> C2CBackend:
    """Load a saved fuser (folder or id) with its receiver and sharer (recorded in its config unless given)."""
    kwargs = dict(load_kwargs)
    if receiver is not None:
        kwargs["receiver"] = receiver
    if sharer is not None:
        kwargs["sharer"] = sharer
    model = C2CModel.from_pretrained(fuser, **kwargs)
    name = model_id or os.path.basename(os.path.normpath(fuser)) or "c2c"
    return C2CBackend(model, model_id=name)
