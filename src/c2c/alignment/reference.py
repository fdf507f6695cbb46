"""The reference implementation's row layout for a pair that shares one tokenization.

c2c's own chat layout (``layout="content"``) renders each model's own template and fuses message content
only. The reference implementation (thu-nics/C2C, package ``rosetta``) lays a same-vocabulary pair out
differently, and a fuser trained there reads rows laid out its way:

- Training (``rosetta/train/dataset_adapters.py``, ``ChatDataset.__getitem__`` with the receiver's
  tokenizer, used when ``is_do_alignment`` is off): the instruction is ``messages[:-1]`` rendered once with
  the **receiver's** chat template (``add_generation_prompt=True, enable_thinking=False``) and tokenized
  with ``add_special_tokens=False``; ``generate_kv_cache_index(len(instruction), len(full))`` marks the
  first ``len(instruction) - 1`` rows ``[1, 0]`` (fused) and the last instruction row and the response
  ``[-1, 0]`` (not fused).
- Inference (``script/playground/inference_example.py`` ``run_inference_example``;
  ``rosetta/utils/evaluate.py`` ``generate_answer_with_logits``): the prompt is rendered with the receiver's
  template and the generation prompt; ``kv_cache_index = [[1, 0] * (L - 1), [[-1, 0]]]``.
- ``rosetta/model/wrapper.py`` ``RosettaModel.forward``: given one ``input_ids`` tensor, every model reads
  the same ids; for each section but the last, receiver and sharer prefill it and the projector rewrites
  the receiver's rows of that section when its flag is not -1; the last section (the last prompt row) is
  run by the receiver alone.

So: one rendering with the receiver's template, system prompt and generation prompt (with its empty think
block) as that template writes them; the sharer reads the receiver's ids, never its own template; every
row but the last is fused, template rows included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .chat import chat_template_of, normalise_messages

if TYPE_CHECKING:
    from .tokens import AlignedPrompt, TokenAligner

__all__ = ["align_reference", "reference_mismatch"]


def reference_mismatch(aligner: TokenAligner) -> list[str]:
    """The parts of the two tokenizers that differ (empty when they tokenize identically)."""
    from .vocab import backend_json

    a, b = backend_json(aligner.receiver_tokenizer), backend_json(aligner.sharer_tokenizer)
    return [key for key in ("normalizer", "pre_tokenizer", "model") if a.get(key) != b.get(key)]


def align_reference(
    aligner: TokenAligner,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    enable_thinking: bool = False,
) -> AlignedPrompt:
    """Align a chat in the reference implementation's layout (see the module docstring).

    Returns receiver ids = the receiver's rendering, sharer ids = the same ids, ``sharer_index[j] = j`` for
    every row but the last (-1). Ids the sharer's tokenizer does not define (e.g. Qwen3's ``<think>``, read
    by Qwen2.5) are passed as they are, as the reference does; they are not counted one-to-one.

    Raises:
        ValueError: the tokenizers do not tokenize identically (vocabulary, normaliser, pre-tokeniser), or the
            receiver has no chat template.
    """
    if not aligner.identical:
        differ = ", ".join(reference_mismatch(aligner)) or "tokenization"
        raise ValueError(
            "the reference row layout (one rendering with the receiver's chat template, read by both models "
            f"with the same ids) needs a pair that tokenizes identically; these tokenizers differ in: {differ}. "
            "Use the 'content' layout (chat_rows='content'), which aligns the two tokenizations"
        )
    msgs = normalise_messages(messages)
    if not msgs:
        return aligner._result([], [], [], [], template=[])
    tok = aligner.receiver_tokenizer
    text = tok.apply_chat_template(
        msgs,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        enable_thinking=enable_thinking,
        chat_template=chat_template_of(tok, "receiver"),
    )
    ids = list(tok.backend_tokenizer.encode(text, add_special_tokens=False).ids)
    n = len(ids)
    index = [*range(n - 1), -1] if n else []
    one = [j < n - 1 and aligner._copyable(i) for j, i in enumerate(ids)]
    return aligner._result(ids, list(ids), index, one, template=[False] * n)
