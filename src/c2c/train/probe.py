"""A measured check that the training forward computes what inference computes.

Training prefills the receiver on the prompt and then reads the response on that cache in one call
(``C2CModel.forward``); with ``include_response`` it reads the response one token at a time, and so do the
sharers. For attention caches this equals one plain forward over the whole sequence. Some caches do not
continue a multi-token prefill correctly (in transformers 5, Jamba's Mamba layers and RecurrentGemma's
recurrent layers differ from one forward by up to several units in the logits), and a fuser trained there
learns a function that inference never computes. :func:`check_continued_prefill` measures this on a short
random sequence, with no list of model names, and refuses such a model with the measured numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel

from c2c.cache import ModelSpec, backbone, new_cache
from c2c.hf import model_device, position_ids_from_mask
from c2c.model import C2CModel
from c2c.train.errors import UnsupportedModelError

__all__ = ["ContinuationGap", "check_continued_prefill", "continuation_gap", "tolerance_for"]

_LENGTH = 12  # tokens of the probe sequence
_PREFIX = 7  # of which the prefix prefilled first
# Mean |logit difference| / mean |logit| allowed: rounding of another call split, per dtype. Attention
# models measure ~1e-6 in float32 (0 in bfloat16 on CPU); the recurrent caches above measure 3e-2 to 4e-1.
_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6, torch.float16: 1e-2, torch.bfloat16: 2e-2}


@dataclass
class ContinuationGap:
    """How far "prefill a prefix, then continue on its cache" is from one plain forward.

    Attributes:
        relative: mean |difference| / mean |logit| over the continued positions.
        max_abs: the largest |difference| of a logit.
        tolerance: the allowed ``relative`` for the model's dtype.
        step: tokens per continuation call (0: the whole rest in one call).
        dtype: the model's dtype (the tolerance follows it).
    """

    relative: float
    max_abs: float
    tolerance: float
    step: int
    dtype: torch.dtype

    @property
    def ok(self) -> bool:
        return self.relative <= self.tolerance


def tolerance_for(dtype: torch.dtype) -> float:
    return _TOLERANCE.get(dtype, 2e-2)


@torch.no_grad()
def continuation_gap(model: PreTrainedModel, *, step: int = 0) -> ContinuationGap:
    """Compare one plain forward of a random sequence with the trainer's way of reading it: the prefix
    prefilled into a fresh cache (as :func:`c2c.fusion.prefill_and_fuse` does), then the rest read on that
    cache ``step`` tokens per call (0: all at once, as ``C2CModel.forward``). Two rows, one left-padded as
    training batches are. The model must be in eval mode (the trainer's LLMs always are)."""
    dev = model_device(model)
    embeddings = model.get_input_embeddings()
    assert isinstance(embeddings, torch.nn.Module) and isinstance(embeddings.weight, Tensor)
    vocab = int(embeddings.weight.shape[0])
    limit = ModelSpec.from_model(model).max_positions
    length = min(_LENGTH, limit) if limit else _LENGTH
    if length < 3:  # no room for a prefix and a continuation of two tokens
        raise UnsupportedModelError(f"{type(model).__name__} holds {length} positions; training needs a longer context")
    p = max(1, round(length * _PREFIX / _LENGTH))
    gen = torch.Generator().manual_seed(0)  # private: the global RNG (dropout, gate noise) stays untouched
    ids = torch.randint(0, vocab, (2, length), generator=gen).to(dev)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    pos = position_ids_from_mask(mask)
    full = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, p:].float()
    cache = new_cache(model)
    backbone(model)(
        input_ids=ids[:, :p], attention_mask=mask[:, :p], position_ids=pos[:, :p], cache=cache, use_cache=True
    )
    parts = []
    c = p
    while c < length:
        e = length if step == 0 else min(length, c + step)
        out = model(
            input_ids=ids[:, c:e], attention_mask=mask[:, :e], position_ids=pos[:, c:e], cache=cache, use_cache=True
        )
        parts.append(out.logits.float())
        c = e
    diff = (torch.cat(parts, dim=1) - full).abs()
    scale = float(full.abs().mean().clamp(min=1e-6))
    dtype = embeddings.weight.dtype
    return ContinuationGap(float(diff.mean()) / scale, float(diff.max()), tolerance_for(dtype), step, dtype)


def check_continued_prefill(c2c: C2CModel) -> None:
    """Refuse to train a pair whose training forward would differ from inference (see the module docstring).

    The receiver is checked as training reads it (the response in one call, or one token at a time with
    ``include_response``); sharers only read more than one prefill with ``include_response`` (one token at a
    time), so only then are they checked.

    Raises:
        UnsupportedModelError: with the measured difference and the tolerance.
    """
    stepwise = c2c.config.include_response
    models = [("receiver", c2c.receiver)]
    if stepwise:
        models += [(f"sharer {k}", s) for k, s in enumerate(c2c.sharers) if isinstance(s, PreTrainedModel)]
    for role, model in models:
        gap = continuation_gap(model, step=1 if stepwise else 0)
        if gap.ok:
            continue
        how = "one token at a time (include_response)" if stepwise else "the whole response in one call"
        note = ""
        if not stepwise and continuation_gap(model, step=1).ok:
            note = " Reading one token at a time (decoding) matches, so only training is affected."
        path = getattr(model, "name_or_path", "")
        raise UnsupportedModelError(
            f"the {role} ({type(model).__name__}{f' {path!r}' if path else ''}) cannot be trained: its cache does not "
            f"continue a prefill exactly. Training prefills the prompt and then reads {how} on that cache; on a "
            f"random {_LENGTH}-token sequence this differs from one plain forward by {gap.relative:.2g} of the "
            f"mean logit (tolerance {gap.tolerance:g} for {str(gap.dtype).removeprefix('torch.')}), up to "
            f"{gap.max_abs:.3g} in a logit, so the fuser would learn a function that inference never computes.{note} "
            "Models with recurrent or state-space cache layers (Jamba's Mamba layers, RecurrentGemma's recurrent "
            "layers in transformers 5) behave this way; choose a receiver whose cache continues exactly"
        )
