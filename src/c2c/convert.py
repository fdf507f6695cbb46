"""Import (and export) checkpoints in the reference implementation's layout (thu-nics/C2C, ``rosetta``).

Reference layout of a fuser folder::

    projector_config.json   {"0": {"1": {"<receiver layer>": [[<sharer layer>, <projector index>]]}}}
    projector_{i}.json      {"class": "C2CProjector", "init_args": {...}}
    projector_{i}.pt        the projector's state dict (read with ``torch.load(weights_only=True)``)

``C2CProjector`` parameters map one to one onto :class:`c2c.fuser.LayerFuser` (see ``_KEY_MAP``), so
the imported fuser computes the same function (inference gates: logit > 0 in both).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from c2c.cache import ModelSpec
from c2c.fuser import C2CFuser, FuserConfig, FuserGeometry, LayerFuser

# reference prefix -> ours, for each of key/value
_KEY_MAP = [
    (r"^{p}_in\.", "{q}.input."),
    (r"^{p}_mlp1\.blocks\.0\.", "{q}.trunk."),
    (r"^{p}_proj_mlp2\.blocks\.(\d+)\.", "{q}.proj_blocks.\\1."),
    (r"^{p}_proj_out\.", "{q}.proj_out."),
    (r"^{p}_scalar_mlp2\.blocks\.0\.", "{q}.weight_block."),
    (r"^{p}_scalar_head\.", "{q}.weight_out."),
]
_SUPPORTED = "C2CProjector"


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
        for p, q in (("key", "key"), ("value", "value")):
            for pat, rep in _KEY_MAP:
                new, n = re.subn(pat.format(p=p), rep.format(q=q), name)
                if n:
                    out[new] = t
                    break
            else:
                continue
            break
        else:
            raise ValueError(f"unexpected parameter {name!r} in a C2CProjector state dict")
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
        for p, q in (("key", "key"), ("value", "value")):
            for pat, rep in _KEY_MAP:
                # Invert the pattern: ours (rep) -> reference (pat); blocks index carried over.
                ours_pat = "^" + re.escape(rep.format(q=q)).replace(re.escape("\\1"), r"(\d+)")
                ref_rep = pat.format(p=p).lstrip("^").replace(r"\.", ".").replace(r"(\d+)", r"\1")
                new, n = re.subn(ours_pat, ref_rep, name)
                if n:
                    out[new] = t
                    break
            else:
                continue
            break
        else:
            raise ValueError(f"unexpected parameter {name!r} in a LayerFuser state dict")
    out["gate_temperature"] = torch.tensor(float(temperature))
    return out


def read_reference_layer_map(folder: Path) -> dict[int, tuple[int, int]]:
    """``{receiver layer: (sharer layer, projector index)}`` from ``projector_config.json``."""
    path = folder / "projector_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; not a reference C2C checkpoint folder")
    raw = json.loads(path.read_text())
    try:
        (target,) = raw.values()
        (edges,) = target.values()
    except ValueError as exc:
        raise ValueError(f"{path}: expected exactly one receiver and one sharer model, got {list(raw)}") from exc
    out: dict[int, tuple[int, int]] = {}
    for r_layer, pairs in edges.items():
        if len(pairs) != 1:
            raise ValueError(f"{path}: receiver layer {r_layer} has {len(pairs)} sources; c2c fuses one per layer per sharer")
        s_layer, proj = pairs[0]
        out[int(r_layer)] = (int(s_layer), int(proj))
    return out


def import_reference(folder: str | Path, receiver: ModelSpec, sharer: ModelSpec) -> C2CFuser:
    """Build a :class:`C2CFuser` from a reference checkpoint folder for the given model geometries."""
    folder = Path(folder)
    layer_map = read_reference_layer_map(folder)
    configs: dict[int, dict[str, Any]] = {}
    for _, proj in layer_map.values():
        meta_path = folder / f"projector_{proj}.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} is missing")
        meta = json.loads(meta_path.read_text())
        if meta.get("class") != _SUPPORTED:
            raise ValueError(f"{meta_path}: class {meta.get('class')!r} is not supported; only {_SUPPORTED}")
        configs[proj] = meta.get("init_args", {})
    first = configs[min(configs)]
    config = fuser_config_from_init_args(first)
    for proj, args in configs.items():
        if fuser_config_from_init_args(args) != config:
            raise ValueError(f"projector_{proj}.json has different sizes from the others; c2c needs one fuser config")
    a = first
    want = (int(a.get("source_dim", sharer.head_dim)), int(a.get("source_num_heads", sharer.num_kv_heads)),
            int(a.get("target_dim", receiver.head_dim)), int(a.get("target_num_heads", receiver.num_kv_heads)))
    got = (sharer.head_dim, sharer.num_kv_heads, receiver.head_dim, receiver.num_kv_heads)
    if want != got:
        raise ValueError(
            f"checkpoint shapes (sharer head_dim, heads, receiver head_dim, heads) = {want} do not match the models {got}"
        )
    geometry = FuserGeometry(receiver, sharer, {r: s for r, (s, _) in sorted(layer_map.items())})
    fuser = C2CFuser(config, geometry)
    states: dict[int, dict[str, Tensor]] = {}
    for r_layer, (_, proj) in layer_map.items():
        if proj not in states:
            path = folder / f"projector_{proj}.pt"
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing")
            states[proj] = reference_to_ours(torch.load(path, map_location="cpu", weights_only=True))
        layer: LayerFuser = fuser.layers[str(r_layer)]
        layer.load_state_dict(states[proj], strict=True)
    return fuser


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
            source_dim=g.sharer.head_dim, target_dim=g.receiver.head_dim,
            source_num_heads=g.sharer.num_kv_heads, target_num_heads=g.receiver.num_kv_heads,
            intermediate_dim=c.intermediate_size, hidden_dim=c.hidden_size, num_layers=c.num_projection_blocks + 2,
            dropout=c.dropout, initial_temperature=c.temperature_start, final_temperature=c.temperature_end,
        )
        (folder / f"projector_{i}.json").write_text(json.dumps({"class": _SUPPORTED, "init_args": init_args}, indent=2))
        edges[str(r_layer)] = [[s_layer, i]]
    (folder / "projector_config.json").write_text(json.dumps({"0": {"1": edges}}, indent=2))
    return folder
