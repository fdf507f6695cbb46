"""The one fusion path: prefill, fuse, and (include-response) fuse each new token as it is read.

Every caller goes through here: generation (prompt fusion and include-response decoding), the training
forward, evaluation and the servers. :func:`fuse_rows` is the single function that adds fuser corrections
to receiver cache rows; it honours ``multi_sharer``, the gate temperature and packing in every case, and it
reads the hard gate states once per call (:func:`hard_gate_states`), never per layer.

Numerics: corrections are computed in fp32 and added to the receiver rows in fp32, then rounded once to the
cache dtype (as the reference implementation does). Under autograd the new rows are built out of place (the
fuser's gradients flow through them); without autograd they are written in place (no copy of the cache).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from c2c.alignment.tokens import TokenAligner
from c2c.batch import C2CBatch
from c2c.cache import backbone, layer_rows, new_cache, set_layer_rows
from c2c.config import C2CConfig
from c2c.fuser import C2CFuser, Corrections, LayerRows
from c2c.hf import model_device, pad_token_id, position_ids_from_mask, synchronize

__all__ = [
    "FusedPrefix",
    "FusionModel",
    "GateStates",
    "fuse_rows",
    "hard_gate_states",
    "prefill_and_fuse",
    "response_step",
    "sharer_tokens_for",
]

GateStates = list[dict[int, tuple[bool, bool]]]
"""Per sharer: ``{receiver layer: (key gate open, value gate open)}``."""


class Place(NamedTuple):
    """Where a layer's packed corrections go in the receiver rows: ``batch``/``column`` ``[N]`` indices, and
    ``span``, the same columns as a slice when the batch is one sequence read consecutively (else None)."""

    batch: Tensor
    column: Tensor
    span: slice | None


class FusionModel(Protocol):
    """What the fusion path needs from a model (``c2c.model.C2CModel`` is one)."""

    @property
    def receiver(self) -> PreTrainedModel: ...

    @property
    def sharer_models(self) -> Sequence[PreTrainedModel]: ...

    @property
    def fuser_list(self) -> Sequence[C2CFuser]: ...

    @property
    def config(self) -> C2CConfig: ...

    @property
    def aligners(self) -> Sequence[TokenAligner | None]: ...

    @property
    def sharer_tokenizers(self) -> Sequence[Any]: ...


@dataclass
class FusedPrefix:
    """The receiver cache after prompt fusion, and the sharer state that include-response continues from.

    Attributes:
        cache: receiver cache holding the (fused) rows of columns ``[0, P)``.
        sharer_caches: per sharer, the cache of what it has read (empty when nothing was fused).
        sharer_masks: per sharer, ``[B, Ts]`` attention mask of those columns.
        gates: hard gate states used for this call (None in training: Gumbel-sigmoid gates).
        timings: seconds of ``receiver_prefill``, ``sharer_prefill`` and ``fusion``.
    """

    cache: Cache
    sharer_caches: list[Cache] = field(default_factory=list)
    sharer_masks: list[Tensor] = field(default_factory=list)
    gates: GateStates | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def sharer_lengths(self) -> list[int]:
        """Columns each sharer has read (its cache length, were no rows dropped by a sliding window)."""
        return [int(m.shape[1]) for m in self.sharer_masks]


def hard_gate_states(fusers: Sequence[C2CFuser] | nn.ModuleList) -> GateStates | None:
    """Every fuser's hard gate states in one device read each; None while any fuser trains (stochastic gates)."""
    fs = [f for f in fusers if isinstance(f, C2CFuser)]
    if any(f.training for f in fs):
        return None
    return [f.hard_gates() for f in fs]


def _active(gates: GateStates | None) -> bool:
    return gates is None or any(any(state) for g in gates for state in g.values())


def _clock(device: torch.device) -> float:
    synchronize(device)
    return time.perf_counter()


# ---------------------------------------------------------------------- prompt fusion


def prefill_and_fuse(
    model: FusionModel, batch: C2CBatch, *, fuse: bool = True, gates: GateStates | None = None
) -> FusedPrefix:
    """Prefill the receiver on the prefix ``[0, P)`` and add the fusers' corrections to its rows.

    The sharers read only the columns some receiver slot reads (their backbone, no LM head); with
    ``include_response`` they read their whole prompt, since they go on reading generated tokens.

    Args:
        fuse: False runs the receiver alone through the same code (the receiver-only baseline).
        gates: hard gate states to use (default: read them now); ignored in training.
    """
    dev = model_device(model.receiver)
    p = batch.prefix_len
    cache = new_cache(model.receiver)
    out = FusedPrefix(cache, timings={"receiver_prefill": 0.0, "sharer_prefill": 0.0, "fusion": 0.0})
    if p == 0 and not (fuse and model.config.include_response):
        return out
    t0 = _clock(dev)
    if p > 0:
        ids, mask = batch.input_ids[:, :p].to(dev), batch.attention_mask[:, :p].to(dev)
        with torch.no_grad():
            backbone(model.receiver)(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids_from_mask(mask),
                cache=cache,
                use_cache=True,
            )
    out.timings["receiver_prefill"] = _clock(dev) - t0
    if not fuse:
        return out
    out.gates = (
        gates
        if gates is not None and not any(f.training for f in model.fuser_list)
        else hard_gate_states(model.fuser_list)
    )
    if not _active(out.gates):
        return out
    t0 = _clock(dev)
    whole = model.config.include_response
    for k, sharer in enumerate(model.sharer_models):
        index = batch.sharer_index[k][:, :p]
        needed = batch.sharer_input_ids[k].shape[1] if whole else (int(index.max().item()) + 1 if index.numel() else 0)
        scache = new_cache(sharer, keep_all_rows=True)
        sdev = model_device(sharer)
        s_mask = batch.sharer_attention_mask[k][:, :needed].to(sdev)
        if needed > 0:
            with torch.no_grad():
                backbone(sharer)(
                    input_ids=batch.sharer_input_ids[k][:, :needed].to(sdev),
                    attention_mask=s_mask,
                    position_ids=position_ids_from_mask(s_mask),
                    cache=scache,
                    use_cache=True,
                )
        out.sharer_caches.append(scache)
        out.sharer_masks.append(s_mask)
    out.timings["sharer_prefill"] = _clock(dev) - t0
    t0 = _clock(dev)
    if p > 0:
        fuse_rows(
            model.fuser_list,
            cache,
            out.sharer_caches,
            [ix[:, :p].to(dev) for ix in batch.sharer_index],
            out.sharer_lengths,
            multi_sharer=model.config.multi_sharer,
            gates=out.gates,
        )
    out.timings["fusion"] = _clock(dev) - t0
    return out


# ---------------------------------------------------------------------- the fusion function


def fuse_rows(
    fusers: Sequence[C2CFuser] | nn.ModuleList,
    cache: Cache,
    sharer_caches: Sequence[Cache],
    sharer_index: Sequence[Tensor],
    sharer_lengths: Sequence[int],
    *,
    multi_sharer: str,
    gates: GateStates | None,
) -> None:
    """Add each fuser's correction to the receiver rows of the last ``N`` columns the receiver has read.

    Args:
        fusers: one :class:`C2CFuser` per sharer.
        cache: the receiver cache; a layer holding fewer rows than ``N`` (a sliding window) fuses what it holds.
        sharer_caches: per sharer, its cache (columns ``[0, sharer_lengths[k])``, possibly fewer rows held).
        sharer_index: per sharer ``[B, N]``: the sharer column whose rows each of the receiver's last ``N``
            columns reads, -1 = not fused.
        sharer_lengths: columns each sharer has read.
        multi_sharer: "parallel" (every correction from the clean receiver rows, summed) or "sequential"
            (each fuser reads the rows the previous one wrote).
        gates: hard gate states (one read per call, :func:`hard_gate_states`); None in training.

    Raises:
        FloatingPointError: a correction is NaN or infinite (a broken sharer cache or fuser weights), which
            would otherwise decode as garbage without a word.
    """
    pending: list[tuple[int, dict[int, Corrections], dict[int, Place]]] = []
    for k, fuser in enumerate(fusers):
        if sharer_lengths[k] == 0:
            continue
        assert isinstance(fuser, C2CFuser)
        g = None if gates is None else gates[k]
        rows, places = _gather(fuser, g, cache, sharer_caches[k], sharer_index[k], sharer_lengths[k])
        if not rows:
            continue
        corrections = fuser(rows, g)
        _check_finite(corrections, k, sharer_caches[k], fuser)
        if multi_sharer == "sequential":
            _apply(cache, [(corrections, places)])
        else:
            pending.append((k, corrections, places))
    if pending:
        _apply(cache, [(c, pl) for _, c, pl in pending])


def _gather(
    fuser: C2CFuser,
    gates: dict[int, tuple[bool, bool]] | None,
    cache: Cache,
    scache: Cache,
    index: Tensor,
    sharer_length: int,
) -> tuple[dict[int, LayerRows], dict[int, Place]]:
    """Pack the rows one fuser reads: per receiver layer, the fused rows of the whole batch as one sequence
    ``[1, H, N_fused, D]`` (the fuser is per token, so packing drops padding and template rows, no more).
    A single sequence whose fused rows are consecutive on both sides (a plain prompt) is passed as views."""
    n = index.shape[1]
    rows: dict[int, LayerRows] = {}
    places: dict[int, Place] = {}
    packs: dict[tuple[int, int], tuple[Tensor, Tensor, Tensor]] = {}
    spans: dict[tuple[int, int], tuple[slice, slice] | None] = {}
    for rl, sl in fuser.layer_map.items():
        if gates is not None and not any(gates[rl]):
            continue  # both gates closed: the layer is skipped entirely
        keys, values = layer_rows(cache, rl)
        s_keys, s_values = layer_rows(scache, sl)
        held, s_held = keys.shape[2], s_keys.shape[2]
        where = packs.get((held, s_held))
        if where is None:
            cover = min(n, held)  # a sliding layer holds only its last rows
            idx = index[:, n - cover :]
            lost = sharer_length - s_held  # sharer columns that fell out of a sliding window
            b_idx, c_idx = (idx >= max(lost, 0)).nonzero(as_tuple=True)
            where = packs[(held, s_held)] = (b_idx, c_idx + (held - cover), idx[b_idx, c_idx] - lost)
            spans[(held, s_held)] = _spans(*where) if index.shape[0] == 1 else None
        b_idx, t_idx, s_idx = where
        if b_idx.numel() == 0:
            continue
        span = spans[(held, s_held)]
        places[rl] = Place(b_idx, t_idx, None if span is None else span[0])
        if span is not None:
            ts, ss_ = span
            rows[rl] = LayerRows(
                s_keys[:, :, ss_].to(keys.device), s_values[:, :, ss_].to(keys.device), keys[:, :, ts], values[:, :, ts]
            )
            continue
        sb, ss = b_idx.to(s_keys.device), s_idx.to(s_keys.device)
        rows[rl] = LayerRows(
            _pack(s_keys[sb, :, ss], keys.device),
            _pack(s_values[sb, :, ss], keys.device),
            _pack(keys[b_idx, :, t_idx], keys.device),
            _pack(values[b_idx, :, t_idx], keys.device),
        )
    return rows, places


def _spans(b_idx: Tensor, t_idx: Tensor, s_idx: Tensor) -> tuple[slice, slice] | None:
    """The receiver and sharer columns of a one-sequence batch as slices, when both are runs of consecutive
    columns (then the rows are read as views, not gathered); None otherwise."""
    if t_idx.numel() == 0:
        return None
    out = []
    for ix in (t_idx, s_idx):
        start = int(ix[0])
        if not torch.equal(ix, torch.arange(start, start + ix.numel(), device=ix.device, dtype=ix.dtype)):
            return None
        out.append(slice(start, start + ix.numel()))
    return out[0], out[1]


def _apply(cache: Cache, results: Sequence[tuple[dict[int, Corrections], dict[int, Place]]]) -> None:
    """Add the corrections (summed over ``results``) to the receiver rows, in fp32, rounded once."""
    layers = sorted({rl for corrections, _ in results for rl in corrections})
    for rl in layers:
        keys, values = layer_rows(cache, rl)
        new = []
        for which, rows in enumerate((keys, values)):
            parts = [(c[rl][which], pl[rl]) for c, pl in results if rl in c and c[rl][which] is not None]
            new.append(_add(rows, parts) if parts else rows)
        set_layer_rows(cache, rl, new[0], new[1])


def _add(rows: Tensor, parts: Sequence[tuple[Tensor | None, Place]]) -> Tensor:
    """``rows [B, H, T, D]`` plus packed corrections ``[1, H, N, D]`` at their ``(b, t)`` places, summed in
    fp32 and rounded once. Out of place under autograd, else in place."""
    acc = rows.dtype if rows.dtype in (torch.float32, torch.float64) else torch.float32
    if torch.is_grad_enabled() or len(parts) > 1:
        full = torch.zeros(rows.shape, dtype=acc, device=rows.device)
        for delta, place in parts:
            assert delta is not None
            full = _scatter_add(full, delta, place.batch, place.column)
        new = (rows.to(acc) + full).to(rows.dtype)
        if torch.is_grad_enabled():
            return new
        rows.copy_(new)
        return rows
    delta, place = parts[0]
    assert delta is not None
    if place.span is not None:
        # One sequence, consecutive columns: add into the view (no gather, no index_put, same numbers).
        view = rows[:, :, place.span]
        if rows.dtype == acc:
            view.add_(delta.to(acc))
        else:
            view.copy_((view.to(acc) + delta.to(acc)).to(rows.dtype))
        return rows
    b_idx, t_idx = place.batch, place.column
    rows[b_idx, :, t_idx] = (rows[b_idx, :, t_idx].to(acc) + delta[0].transpose(0, 1).to(acc)).to(rows.dtype)
    return rows


def _scatter_add(full: Tensor, delta: Tensor, b_idx: Tensor, t_idx: Tensor) -> Tensor:
    """``full [B, H, T, D]`` with packed ``delta [1, H, N, D]`` added at rows ``(b_idx, :, t_idx)``, out of place."""
    update = torch.zeros_like(full)
    update[b_idx, :, t_idx] = delta[0].transpose(0, 1).to(full.dtype)
    return full + update


def _pack(rows: Tensor, device: torch.device) -> Tensor:
    """``[N, H, D]`` rows picked from a batch -> one packed sequence ``[1, H, N, D]``."""
    return rows.to(device).transpose(0, 1).unsqueeze(0)


def _check_finite(corrections: dict[int, Corrections], k: int, scache: Cache, fuser: C2CFuser) -> None:
    deltas = [d for pair in corrections.values() for d in pair if d is not None]
    if not deltas:
        return
    # One sum per correction (a NaN or inf anywhere makes it non-finite) and one device read; the exact,
    # element-wise check runs only when a sum is not finite (which finite values can also cause, by overflow).
    if bool(torch.isfinite(torch.stack([d.sum() for d in deltas])).all()):
        return
    if bool(torch.stack([torch.isfinite(d).all() for d in deltas]).all()):
        return
    bad_layer = next(
        rl for rl, pair in corrections.items() if any(d is not None and not bool(torch.isfinite(d).all()) for d in pair)
    )
    sharer_bad = any(
        not bool(torch.isfinite(t).all())
        for lay in scache.layers
        for t in (getattr(lay, "keys", None), getattr(lay, "values", None))
        if isinstance(t, Tensor)
    )
    weights_bad = [n for n, p in fuser.named_parameters() if not bool(torch.isfinite(p).all())]
    if sharer_bad:
        cause = (
            f"sharer {k}'s KV-cache holds NaN or inf values (its weights, or an fp16 overflow: load it in "
            "bfloat16 or float32)"
        )
    elif weights_bad:
        cause = f"fuser {k}'s weights hold NaN or inf ({weights_bad[0]}, ...): the checkpoint is damaged or training diverged"
    else:
        cause = f"fuser {k} overflowed on these inputs (cast the fuser to float32 with model.fusers.float())"
    raise FloatingPointError(f"fusion produced non-finite corrections in receiver layer {bad_layer}: {cause}")


# ---------------------------------------------------------------------- include-response


def sharer_tokens_for(model: FusionModel, k: int, receiver_tokens: Tensor) -> Tensor:
    """The token sharer ``k`` reads for each receiver token ``[B]`` (include-response): the same id for a
    shared vocabulary, else the sharer token the aligner's strategy picks for the receiver token read on its
    own, as a piece (``align_ids([t], sharer_specials=False)``: a generated token is never a whole prompt, so
    no sharer frame is added, even for a receiver BOS; pad when it maps to none). Exactly one sharer token
    per receiver token: the one the alignment reads (for "offsets", the token covering the last character,
    not the first of the pieces the sharer splits the text into)."""
    sharer = model.sharer_models[k]
    aligner = model.aligners[k]
    sdev = model_device(sharer)
    if aligner is None or aligner.identical:
        return receiver_tokens.to(sdev)
    pad = pad_token_id(sharer, model.sharer_tokenizers[k])
    out = []
    for t in receiver_tokens.tolist():
        one = aligner.align_ids([int(t)], sharer_specials=False)
        pos = one.sharer_index[0]
        out.append(one.sharer_ids[pos] if pos >= 0 else pad)
    return torch.tensor(out, dtype=torch.long, device=sdev)


def response_step(
    model: FusionModel, prefix: FusedPrefix, tokens: Tensor, attention_mask: Tensor, *, first_index: list[Tensor] | None
) -> Tensor:
    """One include-response step: the receiver reads ``tokens [B, 1]`` (its own rows unfused while it reads
    them), then those rows are fused with the sharers' rows of the same token, so every later token reads
    them fused. In training and decoding alike.

    Args:
        prefix: the state after :func:`prefill_and_fuse`; its sharer caches and masks are extended.
        attention_mask: ``[B, T]`` receiver mask including ``tokens``' column.
        first_index: for the last prompt token (the first step), per sharer ``[B, 1]`` the prompt column it
            is aligned to (-1 = none); None for a generated token, which the sharers read first.

    Returns:
        ``[B, V]`` receiver logits of ``tokens``.
    """
    dev = model_device(model.receiver)
    width = tokens.shape[1]
    pos = position_ids_from_mask(attention_mask)[:, -width:]
    logits = model.receiver(
        input_ids=tokens, attention_mask=attention_mask, position_ids=pos, cache=prefix.cache, use_cache=True
    ).logits[:, -1]
    if not _active(prefix.gates) or not prefix.sharer_caches:
        return logits
    index = []
    for k, sharer in enumerate(model.sharer_models):
        if first_index is not None:
            index.append(first_index[k].to(dev))
            continue
        s_tok = sharer_tokens_for(model, k, tokens[:, -1])
        mask = torch.cat([prefix.sharer_masks[k], torch.ones_like(prefix.sharer_masks[k][:, :1])], dim=1)
        with torch.no_grad():
            backbone(sharer)(
                input_ids=s_tok[:, None],
                attention_mask=mask,
                position_ids=position_ids_from_mask(mask)[:, -1:],
                cache=prefix.sharer_caches[k],
                use_cache=True,
            )
        prefix.sharer_masks[k] = mask
        index.append(torch.full((tokens.shape[0], 1), mask.shape[1] - 1, dtype=torch.long, device=dev))
    fuse_rows(
        model.fuser_list,
        prefix.cache,
        prefix.sharer_caches,
        index,
        prefix.sharer_lengths,
        multi_sharer=model.config.multi_sharer,
        gates=prefix.gates,
    )
    return logits
