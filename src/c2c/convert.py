"""Import (and export) checkpoints in the reference implementation's layout (thu-nics/C2C, ``rosetta``).

Reference layout of a fuser folder::

    projector_config.json   {"0": {"1": {"<receiver layer>": [[<sharer layer>, <projector index>]]}}}
    projector_{i}.json      {"class": "C2CProjector", "init_args": {...}}
    projector_{i}.pt        the projector's state dict (read with ``torch.load(weights_only=True)``)

``C2CProjector`` parameters map one to one onto :class:`c2c.fuser.LayerFuser` (see ``_KEY_MAP``), so
the imported fuser computes the same function (inference gates: logit > 0 in both).

Every problem with a checkpoint is a :class:`ConversionError` naming the file it is about. A converted
fuser records the reference's row layout (``c2c_config.chat_rows``): ``"reference"`` for a pair that
tokenizes identically (one rendering with the receiver's template, every row but the last fused; see
:mod:`c2c.alignment.reference`), ``"content"`` otherwise (the reference's aligned datasets fuse message
content only, as c2c does).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from c2c.alignment.tokens import TokenAligner
from c2c.cache import ModelSpec
from c2c.config import C2CConfig, ChatRows
from c2c.fuser import C2CFuser, FuserConfig, FuserGeometry
from c2c.hf import load_causal_lm, load_tokenizer
from c2c.model import C2CModel

__all__ = [
    "ConversionError",
    "convert_reference",
    "export_reference",
    "fuser_config_from_init_args",
    "import_reference",
    "ours_to_reference",
    "read_reference_layer_map",
    "reference_to_ours",
]

# reference prefix -> ours, for each of key/value
_KEY_MAP = [
    (r"^{p}_in\.", "{q}.input."),
    (r"^{p}_mlp1\.blocks\.0\.", "{q}.trunk."),
    (r"^{p}_proj_mlp2\.blocks\.(\d+)\.", "{q}.proj_blocks.\\1."),
    (r"^{p}_proj_out\.", "{q}.proj_out."),
    (r"^{p}_scalar_mlp2\.blocks\.0\.", "{q}.weight_block."),
    (r"^{p}_scalar_head\.", "{q}.weight_out."),
]
# The same rules, formatted for the key path then the value path, in each direction: reference -> ours, and
# ours -> reference (the inverted pattern; a blocks index carried over).
_TO_OURS = [(pat.format(p=p), rep.format(q=p)) for p in ("key", "value") for pat, rep in _KEY_MAP]
_TO_REFERENCE = [
    (
        "^" + re.escape(rep).replace(re.escape("\\1"), r"(\d+)"),
        pat.lstrip("^").replace(r"\.", ".").replace(r"(\d+)", r"\1"),
    )
    for pat, rep in _TO_OURS
]
_SUPPORTED = "C2CProjector"


class ConversionError(ValueError):
    """A reference checkpoint that cannot be converted; the message names the file and the fix."""


def fuser_config_from_init_args(args: dict[str, Any]) -> FuserConfig:
    num_layers = int(args.get("num_layers", 3))
    if num_layers < 3:
        raise ValueError(f"C2CProjector needs num_layers >= 3, checkpoint has {num_layers}")
    return FuserConfig(
        hidden_size=int(args.get("hidden_dim", 1024)),
        intermediate_size=int(args.get("intermediate_dim", 1024)),
        weight_intermediate_size=int(args.get("hidden_dim", 1024)),
        num_projection_blocks=num_layers - 2,
        dropout=float(args.get("dropout", 0.1)),
        activation="gelu",
        rms_norm_eps=1e-6,
        variant="full",
        gate_init=0.0,
        temperature_start=float(args.get("initial_temperature", 1.0)),
        temperature_end=float(args.get("final_temperature", 0.001)),
    )


def reference_to_ours(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a ``C2CProjector`` state dict to a :class:`LayerFuser` state dict."""
    out: dict[str, Tensor] = {}
    for name, t in state.items():
        if name == "gate_temperature":
            continue  # a training-time buffer; inference uses hard gates
        if name in ("key_gate_logit", "value_gate_logit"):
            continue
        new = _rename(name, _TO_OURS)
        if new is None:
            raise ValueError(f"unexpected parameter {name!r} in a C2CProjector state dict")
        out[new] = t
    if "key_gate_logit" not in state or "value_gate_logit" not in state:
        raise ValueError("C2CProjector state dict lacks key_gate_logit / value_gate_logit")
    out["gate_logit"] = torch.stack([state["key_gate_logit"].reshape(()), state["value_gate_logit"].reshape(())])
    return out


def ours_to_reference(state: dict[str, Tensor], temperature: float = 1.0) -> dict[str, Tensor]:
    """Inverse of :func:`reference_to_ours` (for exporting to the reference code)."""
    out: dict[str, Tensor] = {}
    for name, t in state.items():
        if name == "gate_logit":
            out["key_gate_logit"], out["value_gate_logit"] = t[0].clone(), t[1].clone()
            continue
        new = _rename(name, _TO_REFERENCE)
        if new is None:
            raise ValueError(f"unexpected parameter {name!r} in a LayerFuser state dict")
        out[new] = t
    out["gate_temperature"] = torch.tensor(float(temperature))
    return out


def _rename(name: str, rules: list[tuple[str, str]]) -> str | None:
    """``name`` renamed by the first rule whose pattern matches it; None when none does."""
    for pattern, replacement in rules:
        new, n = re.subn(pattern, replacement, name)
        if n:
            return new
    return None


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise ConversionError(f"{path} is missing; {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path} is not valid JSON ({exc}); re-export it from the reference code") from None


def read_reference_layer_map(folder: Path) -> dict[int, tuple[int, int]]:
    """``{receiver layer: (sharer layer, projector index)}`` from ``projector_config.json``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(
            f"{folder} is not a folder; give the reference checkpoint folder (projector_config.json, "
            "projector_<i>.json, projector_<i>.pt)"
        )
    path = folder / "projector_config.json"
    raw = _read_json(path, "not a reference C2C checkpoint folder (projector_config.json, projector_<i>.pt)")
    try:
        (target,) = raw.values()
        (edges,) = target.values()
    except (AttributeError, ValueError):
        raise ConversionError(
            f"{path}: expected {{target model: {{source model: {{receiver layer: [[sharer layer, projector]]}}}}}} "
            f"with exactly one receiver and one sharer model, got {json.dumps(raw)[:120]}"
        ) from None
    if not isinstance(edges, dict) or not edges:
        raise ConversionError(f"{path}: no receiver layer is mapped; the file lists no projectors")
    out: dict[int, tuple[int, int]] = {}
    for r_layer, pairs in edges.items():
        if not isinstance(pairs, list) or len(pairs) != 1:
            n = len(pairs) if isinstance(pairs, list) else "no list of"
            raise ConversionError(
                f"{path}: receiver layer {r_layer} has {n} sources; c2c fuses one sharer layer per receiver "
                "layer (the reference's aggregators are not supported)"
            )
        try:
            s_layer, proj = pairs[0]
            out[int(r_layer)] = (int(s_layer), int(proj))
        except (TypeError, ValueError):
            raise ConversionError(
                f"{path}: receiver layer {r_layer!r} maps to {pairs[0]!r}; expected [sharer layer, projector index]"
            ) from None
    return out


def _load_projector_state(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise ConversionError(f"{path} is missing; the checkpoint folder is incomplete")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # EOFError (empty file), pickle/zip errors, weights_only refusals
        raise ConversionError(
            f"{path} is not a readable PyTorch state dict ({type(exc).__name__}: {str(exc)[:200] or 'empty file'}); "
            "re-copy it from the reference checkpoint"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConversionError(f"{path} does not hold a state dict of tensors (got {type(state).__name__})")
    try:
        return reference_to_ours(state)
    except ValueError as exc:
        raise ConversionError(f"{path}: {exc}") from None


def _check_layers(
    layer_map: dict[int, tuple[int, int]], receiver: ModelSpec, sharer: ModelSpec, path: Path, allow_partial_map: bool
) -> None:
    """Refuse a layer map written for models of another depth (it would fail at the first fusion)."""
    r_layers = sorted(layer_map)
    s_layers = sorted({s for s, _ in layer_map.values()})
    bad_r = [r for r in r_layers if r not in receiver.kv_layers]
    bad_s = [s for s in s_layers if s not in sharer.kv_layers]
    shown = ", ".join(f"{r}<-{s}" for r, (s, _) in sorted(layer_map.items()))
    if bad_r or bad_s or (not allow_partial_map and len(r_layers) != len(receiver.kv_layers)):
        problems = []
        if bad_r or len(r_layers) != len(receiver.kv_layers):
            problems.append(
                f"{len(layer_map)} projectors for receiver layers {r_layers[0]}..{r_layers[-1]}, but the receiver "
                f"({receiver.name_or_path or receiver.model_type}) has {len(receiver.kv_layers)} KV layers"
            )
        if bad_s:
            problems.append(
                f"sharer layers {bad_s} do not exist: the sharer ({sharer.name_or_path or sharer.model_type}) has "
                f"{len(sharer.kv_layers)} KV layers"
            )
        raise ConversionError(
            f"{path}: the checkpoint was trained for models of another depth: "
            + "; ".join(problems)
            + f" (layer map receiver<-sharer: {shown}). Convert it with the receiver and sharer it was trained for"
        )


def import_reference(
    folder: str | Path, receiver: ModelSpec, sharer: ModelSpec, *, allow_partial_map: bool = False
) -> C2CFuser:
    """Build a :class:`C2CFuser` from a reference checkpoint folder for the given model geometries.

    The layer map must name existing layers of both models and, unless ``allow_partial_map``, give every
    receiver KV layer a projector (the reference trains one per receiver layer; fewer means the checkpoint
    belongs to a model of another depth).

    Raises:
        ConversionError: naming the file at fault (missing, unreadable, another class, other shapes or depth).
    """
    folder = Path(folder)
    layer_map = read_reference_layer_map(folder)
    config_path = folder / "projector_config.json"
    configs: dict[int, dict[str, Any]] = {}
    for _, proj in layer_map.values():
        meta_path = folder / f"projector_{proj}.json"
        meta = _read_json(meta_path, f"{config_path} names projector {proj}; copy its projector_{proj}.json too")
        if not isinstance(meta, dict) or meta.get("class") != _SUPPORTED:
            got = meta.get("class") if isinstance(meta, dict) else type(meta).__name__
            raise ConversionError(f"{meta_path}: class {got!r} is not supported; only {_SUPPORTED}")
        args = meta.get("init_args", {})
        if not isinstance(args, dict):
            raise ConversionError(f"{meta_path}: init_args must be a mapping, got {type(args).__name__}")
        try:
            fuser_config_from_init_args(args)
        except (TypeError, ValueError) as exc:
            raise ConversionError(f"{meta_path}: {exc}") from None
        configs[proj] = args
    first_proj = min(configs)
    first = configs[first_proj]
    config = fuser_config_from_init_args(first)
    for proj, args in configs.items():
        if fuser_config_from_init_args(args) != config:
            raise ConversionError(
                f"{folder / f'projector_{proj}.json'} has different sizes from projector_{first_proj}.json; "
                "c2c needs one fuser config for all layers"
            )
    got = (sharer.head_dim, sharer.num_kv_heads, receiver.head_dim, receiver.num_kv_heads)
    for proj, a in configs.items():
        keys = ("source_dim", "source_num_heads", "target_dim", "target_num_heads")
        try:
            want = tuple(int(a.get(k, g)) for k, g in zip(keys, got))
        except (TypeError, ValueError):
            raise ConversionError(
                f"{folder / f'projector_{proj}.json'}: {', '.join(keys)} must be integers, got "
                f"{[a.get(k) for k in keys]}"
            ) from None
        if want != got:
            raise ConversionError(
                f"{folder / f'projector_{proj}.json'}: checkpoint shapes (sharer head_dim, heads, receiver head_dim, "
                f"heads) = {want} do not match the models {got}; convert it with the receiver and sharer it was "
                "trained for (--receiver / --sharer), in that order"
            )
    _check_layers(layer_map, receiver, sharer, config_path, allow_partial_map)
    geometry = FuserGeometry(receiver, sharer, {r: s for r, (s, _) in sorted(layer_map.items())})
    fuser = C2CFuser(config, geometry)
    states: dict[int, dict[str, Tensor]] = {}
    for r_layer, (_, proj) in layer_map.items():
        path = folder / f"projector_{proj}.pt"
        if proj not in states:
            states[proj] = _load_projector_state(path)
        layer = fuser.layers[str(r_layer)]
        try:
            layer.load_state_dict(states[proj], strict=True)
        except RuntimeError as exc:
            raise ConversionError(
                f"{path} does not fit receiver layer {r_layer}'s fuser (shapes or keys differ from "
                f"projector_{proj}.json's init_args): {str(exc).splitlines()[0]}"
            ) from None
    return fuser


def convert_reference(
    reference_dir: str | Path,
    output_dir: str | Path,
    receiver: str,
    sharer: str,
    *,
    allow_partial_map: bool = False,
) -> tuple[Path, C2CModel]:
    """Import a reference checkpoint for ``receiver`` <- ``sharer`` (hub ids or local folders) and write it as a
    c2c fuser folder that records the reference's row layout (``c2c_config.chat_rows``).

    The checkpoint is checked before any model is loaded and again against the models; ``output_dir`` must
    not exist or be empty, and is written only once everything succeeded.

    Raises:
        ConversionError: a problem with the checkpoint (the message names the file) or with ``output_dir``.
        OSError / ValueError: from transformers when a model or tokenizer cannot be loaded.
    """
    reference_dir, output_dir = Path(reference_dir), Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ConversionError(f"{output_dir} is not empty (or not a folder); choose a new output folder")
    read_reference_layer_map(reference_dir)  # fail on a bad folder before loading any model
    r_model = load_causal_lm(receiver, role="receiver")
    s_model = load_causal_lm(sharer, role="sharer")
    r_tok = load_tokenizer(receiver, role="receiver", required=True)
    s_tok = load_tokenizer(sharer, role="sharer", required=True)
    fuser = import_reference(
        reference_dir,
        ModelSpec.from_model(r_model, receiver),
        ModelSpec.from_model(s_model, sharer),
        allow_partial_map=allow_partial_map,
    )
    identical = (
        bool(getattr(r_tok, "is_fast", False) and getattr(s_tok, "is_fast", False))
        and TokenAligner(r_tok, s_tok).identical
    )
    chat_rows: ChatRows = "reference" if identical else "content"
    config = C2CConfig(prompt_format="chat", chat_rows=chat_rows)
    model = C2CModel(r_model, s_model, fuser, receiver_tokenizer=r_tok, sharer_tokenizers=s_tok, config=config)
    model.save_pretrained(str(output_dir))
    return output_dir, model


def export_reference(fuser: C2CFuser, folder: str | Path) -> Path:
    """Write ``fuser`` in the reference layout (one projector per receiver layer)."""
    if fuser.config.family != "full" or fuser.config.variant != "full" or fuser.config.activation != "gelu":
        raise ValueError(
            "the reference C2CProjector is the 'full' family, 'full' variant, with GELU; this fuser is family "
            f"{fuser.config.family!r}, variant {fuser.config.variant!r}, {fuser.config.activation}"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = fuser.geometry
    c = fuser.config
    edges = {}
    for i, (r_layer, s_layer) in enumerate(sorted(g.layer_map.items())):
        state = {k: v.detach().cpu() for k, v in fuser.layers[str(r_layer)].state_dict().items()}
        torch.save(ours_to_reference(state, c.temperature_start), folder / f"projector_{i}.pt")
        init_args = dict(
            source_dim=g.sharer.head_dim,
            target_dim=g.receiver.head_dim,
            source_num_heads=g.sharer.num_kv_heads,
            target_num_heads=g.receiver.num_kv_heads,
            intermediate_dim=c.intermediate_size,
            hidden_dim=c.hidden_size,
            num_layers=c.num_projection_blocks + 2,
            dropout=c.dropout,
            initial_temperature=c.temperature_start,
            final_temperature=c.temperature_end,
        )
        (folder / f"projector_{i}.json").write_text(json.dumps({"class": _SUPPORTED, "init_args": init_args}, indent=2))
        edges[str(r_layer)] = [[s_layer, i]]
    (folder / "projector_config.json").write_text(json.dumps({"0": {"1": edges}}, indent=2))
    return folder
