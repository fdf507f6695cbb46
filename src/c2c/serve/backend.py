"""The engine's view of a :class:`~c2c.model.C2CModel`: token counting, tokenizers, end tokens, generation.

Four communication modes are served: ``c2c`` (receiver reads the fused cache), ``receiver`` and ``sharer``
(each model alone) and ``t2t`` (text-to-text: the sharer writes a one-sentence background note, the
receiver answers with it in its prompt; templates from :mod:`c2c.eval.prompts`, as in the evaluation).
"""

from __future__ import annotations

import os
from typing import Any

from c2c.eval.prompts import NOTE_CONTEXT_TEMPLATE, NOTE_TEMPLATE
from transformers import StoppingCriteria

from c2c.hf import render_chat
from c2c.serve.engine import BackendOutput

STAGES = ("sharer_prefill", "fusion", "receiver_prefill", "decode")


def _name_of(model: Any) -> str:
    path = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(path) if path else type(model).__name__


def _token_ids(value: Any) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, (list, tuple, set)):
        return {int(v) for v in value}
    return {int(value)}


class C2CBackend:
    """Adapter from the engine's :class:`~c2c.serve.engine.Backend` protocol to a ``C2CModel``."""

    def __init__(self, model: Any, *, model_id: str | None = None) -> None:
        if model.receiver_tokenizer is None:
            raise ValueError("serving needs the receiver tokenizer: build the C2CModel with receiver_tokenizer=")
        self.model = model
        self.receiver_name = _name_of(model.receiver)
        self.sharer_names = [_name_of(s) for s in model.sharers]
        self.model_id = model_id or "c2c"
        self.context_length: int | None = model.receiver_spec.max_positions
        sharer_tok = model.sharer_tokenizers[0] if model.sharer_tokenizers else None
        self._sharer_tokenizer = sharer_tok if sharer_tok is not None else model.receiver_tokenizer
        # Sharer-only and T2T need the sharer to read chat messages with its own template.
        can_share = bool(getattr(self._sharer_tokenizer, "chat_template", None))
        self.modes: tuple[str, ...] = ("c2c", "receiver", "sharer", "t2t") if can_share else ("c2c", "receiver")

    # -- tokens ---------------------------------------------------------------------------------------------

    def tokenizer_for(self, mode: str) -> Any:
        return self._sharer_tokenizer if mode == "sharer" else self.model.receiver_tokenizer

    def count_prompt_tokens(self, messages: list[dict[str, str]], mode: str) -> int:
        return len(render_chat(self.tokenizer_for(mode), messages))

    def eos_token_ids(self, mode: str) -> set[int]:
        tok = self.tokenizer_for(mode)
        llm = self.model.sharers[0] if mode == "sharer" else self.model.receiver
        ids = _token_ids(getattr(tok, "eos_token_id", None))
        ids |= _token_ids(getattr(getattr(llm, "generation_config", None), "eos_token_id", None))
        return ids

    # -- T2T ------------------------------------------------------------------------------------------------

    def t2t_messages(self, messages: list[dict[str, str]], note: str | None) -> list[dict[str, str]]:
        """``note is None``: the sharer's note request about the last user turn. Otherwise the receiver's
        conversation with the note put in front of that turn."""
        last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=len(messages) - 1)
        question = messages[last]["content"]
        if note is None:
            return [{"role": "user", "content": NOTE_TEMPLATE.format(question=question)}]
        out = [dict(m) for m in messages]
        out[last]["content"] = NOTE_CONTEXT_TEMPLATE.format(note=note, prompt=question)
        return out

    # -- generation -----------------------------------------------------------------------------------------

    def generate(
        self,
        prompts: list[list[dict[str, str]]],
        *,
        mode: str,
        max_new_tokens: int,
        do_sample: bool,
        temperature: float,
        top_p: float,
        stopping: StoppingCriteria,
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
    from transformers import StoppingCriteriaList

    messages = [{"role": "user", "content": "Hello"}]
    for mode in backend.modes:
        if mode == "t2t":
            continue  # runs the sharer and the receiver, both warmed up by their own modes
        backend.generate(
            [messages], mode=mode, max_new_tokens=1, do_sample=False, temperature=1.0, top_p=1.0,
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
    from c2c.model import C2CModel

    kwargs = dict(load_kwargs)
    if receiver is not None:
        kwargs["receiver"] = receiver
    if sharer is not None:
        kwargs["sharer"] = sharer
    model = C2CModel.from_pretrained(fuser, **kwargs)
    name = model_id or os.path.basename(os.path.normpath(fuser)) or "c2c"
    return C2CBackend(model, model_id=name)
