"""Saving and loading fusers in the peft style: config + safetensors weights + model card.

A fuser folder holds only the fuser. ``fuser_config.json`` is self-describing: the prompt format and the
rows that are fused (``c2c_config``), the fuser sizes, the layer maps, and for the receiver and each sharer
its name or path, revision, cache geometry, vocabulary size and a tokenizer fingerprint, so a loader can fetch
the right models, refuse a pair whose caches or vocabularies do not match, and every entry point (generate,
eval, serve, chat) can prompt the fuser the way it was trained.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub import snapshot_download
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from c2c.cache import ModelSpec
from c2c.config import C2CConfig
from c2c.fuser import C2CFuser, FuserConfig, FuserGeometry, fuser_size
from c2c.version import __version__

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "FuserRecord",
    "build_fusers",
    "fuser_state",
    "load_fuser_state",
    "read_config",
    "read_record",
    "read_weights",
    "resolve_folder",
    "save_folder",
]

CONFIG_NAME = "fuser_config.json"
WEIGHTS_NAME = "fuser_model.safetensors"
CARD_NAME = "README.md"
FORMAT_VERSION = 1
_CARD_MARK = "library_name: c2c"


@dataclass
class FuserRecord:
    """Typed content of ``fuser_config.json``.

    Attributes:
        c2c_config: how fusion is applied (prompt format, fused rows, alignment, multi-sharer rule).
        fuser_configs: one :class:`FuserConfig` per sharer.
        receiver / sharers: recorded specs (name or path, geometry, vocabulary size).
        layer_maps: per sharer ``{receiver layer: sharer layer}``.
        receiver_tokenizer / sharer_tokenizers: tokenizer fingerprints (None when none was known).
        versions: c2c / transformers / torch versions that wrote it.
    """

    c2c_config: C2CConfig
    fuser_configs: list[FuserConfig]
    receiver: ModelSpec
    sharers: list[ModelSpec]
    layer_maps: list[dict[int, int]]
    receiver_tokenizer: str | None = None
    sharer_tokenizers: list[str | None] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def geometries(self) -> list[FuserGeometry]:
        return [FuserGeometry(self.receiver, s, dict(m)) for s, m in zip(self.sharers, self.layer_maps)]

    def to_json(self) -> dict[str, Any]:
        toks = self.sharer_tokenizers or [None] * len(self.sharers)
        return {
            "format_version": self.format_version,
            "versions": self.versions,
            "c2c_config": self.c2c_config.to_dict(),
            "fuser_config": self.fuser_configs[0].to_dict(),
            "receiver": {**self.receiver.to_dict(), "tokenizer_fingerprint": self.receiver_tokenizer},
            "sharers": [{**s.to_dict(), "tokenizer_fingerprint": t} for s, t in zip(self.sharers, toks)],
            "layer_maps": [{str(r): s for r, s in m.items()} for m in self.layer_maps],
            "fuser_configs": [c.to_dict() for c in self.fuser_configs],
        }

    @classmethod
    def from_json(cls, data: Any, *, source: str = CONFIG_NAME) -> FuserRecord:
        """Parse and check a ``fuser_config.json`` mapping; every problem names the field and the file."""
        try:
            return cls._from_json(data, source)
        except ValueError as exc:
            if "upgrade c2c" in str(exc):
                raise
            raise ValueError(
                f"{exc}. The file is damaged or was edited by hand: restore it, or re-save the fuser with "
                "save_pretrained"
            ) from exc

    @classmethod
    def _from_json(cls, data: Any, source: str) -> FuserRecord:
        if not isinstance(data, dict):
            raise ValueError(f"{source} must hold a JSON object, got {type(data).__name__}")
        version = data.get("format_version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"{source}: format_version must be a positive integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{source} has format_version {version}, newer than this c2c reads ({FORMAT_VERSION}); upgrade c2c"
            )
        for key in ("fuser_config", "receiver", "sharers", "layer_maps"):
            if key not in data:
                raise ValueError(f"{source} lacks {key!r}; not a c2c fuser config (or a damaged one)")
        sharers_raw = data["sharers"]
        if not isinstance(sharers_raw, list) or not sharers_raw:
            raise ValueError(f"{source}: 'sharers' must be a non-empty list")
        n = len(sharers_raw)
        maps_raw = data["layer_maps"]
        if not isinstance(maps_raw, list) or len(maps_raw) != n:
            raise ValueError(f"{source}: 'layer_maps' must be a list with one mapping per sharer ({n})")
        fcs_raw = data.get("fuser_configs") or [data["fuser_config"]] * n
        if not isinstance(fcs_raw, list) or len(fcs_raw) != n:
            raise ValueError(f"{source}: 'fuser_configs' must be a list with one config per sharer ({n})")
        try:
            receiver = ModelSpec.from_dict(data["receiver"], source=f"{source}: receiver")
            sharers = [ModelSpec.from_dict(s, source=f"{source}: sharer {k}") for k, s in enumerate(sharers_raw)]
            fuser_configs = [
                FuserConfig.from_dict(c, source=f"{source}: fuser_configs[{k}]") for k, c in enumerate(fcs_raw)
            ]
            c2c_config = C2CConfig.from_dict(data.get("c2c_config", {}), source=f"{source}: c2c_config")
            layer_maps = [_layer_map(m, f"{source}: layer_maps[{k}]") for k, m in enumerate(maps_raw)]
        except TypeError as exc:
            raise ValueError(str(exc)) from exc
        for k, (m, s) in enumerate(zip(layer_maps, sharers)):
            bad = [(r, sl) for r, sl in m.items() if r not in receiver.kv_layers or sl not in s.kv_layers]
            if bad:
                raise ValueError(
                    f"{source}: layer_maps[{k}] maps {bad[0][0]} -> {bad[0][1]}, outside the recorded KV layers "
                    f"(receiver {receiver.kv_layers}, sharer {s.kv_layers})"
                )
        fps = [s.get("tokenizer_fingerprint") if isinstance(s, dict) else None for s in sharers_raw]
        r_fp = data["receiver"].get("tokenizer_fingerprint") if isinstance(data["receiver"], dict) else None
        raw_versions = data.get("versions")
        versions: dict[str, Any] = raw_versions if isinstance(raw_versions, dict) else {}
        return cls(
            c2c_config=c2c_config,
            fuser_configs=fuser_configs,
            receiver=receiver,
            sharers=sharers,
            layer_maps=layer_maps,
            receiver_tokenizer=r_fp if isinstance(r_fp, str) else None,
            sharer_tokenizers=[f if isinstance(f, str) else None for f in fps],
            versions={str(k): str(v) for k, v in versions.items()},
            format_version=version,
        )


def _layer_map(raw: Any, source: str) -> dict[int, int]:
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{source} must be a non-empty mapping of receiver layer -> sharer layer")
    try:
        return {int(r): int(s) for r, s in raw.items()}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source} must map layer indices to layer indices: {exc}") from exc


def versions() -> dict[str, str]:
    return {"c2c": __version__, "transformers": transformers.__version__, "torch": torch.__version__}


# ---------------------------------------------------------------------- writing


def fuser_state(fusers: list[C2CFuser]) -> dict[str, torch.Tensor]:
    """The tensors of a fuser folder: ``fusers.{k}.{parameter}`` for every sharer ``k``."""
    return {
        f"fusers.{k}.{name}": t.detach().to("cpu").contiguous()
        for k, fuser in enumerate(fusers)
        for name, t in fuser.state_dict().items()
    }


def save_folder(
    save_directory: str | os.PathLike[str],
    record: FuserRecord,
    tensors: dict[str, torch.Tensor],
    *,
    overwrite: bool = True,
) -> Path:
    """Write a fuser folder atomically (a temporary folder, then renames).

    Files of other programs in the folder are kept; so is a README.md that is not a c2c model card (it is
    the user's), in which case the card is not written.
    """
    target = Path(save_directory)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder; choose a folder path")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} already holds files; pass overwrite=True or choose another folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "c2c_format": str(FORMAT_VERSION)})
        config = record.to_json()
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        names = [WEIGHTS_NAME, CONFIG_NAME]
        card = target / CARD_NAME
        if not card.exists() or _CARD_MARK in card.read_text(errors="replace")[:200]:
            (tmp / CARD_NAME).write_text(model_card(config, tensors))
            names.append(CARD_NAME)
        if target.exists():
            for name in names:
                os.replace(tmp / name, target / name)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
    return target


def model_card(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    record = FuserRecord.from_json(config)
    n = sum(t.numel() for t in tensors.values())
    r = record.receiver
    sharers = ", ".join(f"`{s.name_or_path or s.model_type}`" for s in record.sharers)
    fc = record.fuser_configs[0]
    sizes = [fuser_size(c, g) for c, g in zip(record.fuser_configs, record.geometries())]
    flops = sum(s.flops_per_token for s in sizes)
    cc = record.c2c_config
    layer_map = fc.layer_map if isinstance(fc.layer_map, str) else "explicit"
    prompting = (
        "chat messages in each model's chat template" if cc.prompt_format == "chat" else "plain text (no chat template)"
    )
    example = (
        'model.generate([{"role": "user", "content": "Your question"}])'
        if cc.prompt_format == "chat"
        else 'model.generate("Your question")'
    )
    return f"""---
{_CARD_MARK}
tags: [cache-to-cache, c2c, kv-cache, fuser]
---
# C2C fuser: {sharers} -> `{r.name_or_path or r.model_type}`

A Cache-to-Cache fuser (Fu et al., arXiv 2510.03215): the receiver reads the sharer's KV-cache,
projected and gated into its own, instead of text.

- Receiver: `{r.name_or_path}` ({r.model_type}, {r.num_layers} layers, {r.num_kv_heads} KV heads x {r.head_dim})
- Sharer(s): {sharers}
- Fuser: {n:,} parameters, {flops / 1e6:,.1f} MFLOP per fused token, family `{fc.family}` ({fc.size_label()}),
  variant `{fc.variant}`, layer map `{layer_map}`
- Prompts: {prompting}; fused rows `{cc.chat_rows}`; token alignment `{cc.token_alignment}`, shift {cc.alignment_shift}
- Saved with c2c {record.versions.get("c2c", "?")}, transformers {record.versions.get("transformers", "?")}

```python
from c2c import C2CModel
model = C2CModel.from_pretrained("<this folder or repo>")  # loads the recorded receiver and sharer
print({example})
```
"""


# ---------------------------------------------------------------------- reading


def resolve_folder(fuser_dir_or_id: str | os.PathLike[str], revision: str | None = None) -> Path:
    """A local fuser folder, or a hub repo id downloaded with ``huggingface_hub``."""
    path = Path(fuser_dir_or_id).expanduser()
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{path} is not a c2c fuser folder: {CONFIG_NAME} is missing")
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file; give the fuser folder that holds {CONFIG_NAME}")
    text = str(fuser_dir_or_id)
    looks_local = text.startswith((".", "/", "~")) or os.sep in text.strip("/").split("/", 1)[-1]
    if looks_local or text.count("/") != 1:
        raise FileNotFoundError(f"no fuser folder at {text!r} (and it is not a hub repo id 'owner/name')")
    try:
        return Path(snapshot_download(text, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]))
    except Exception as exc:  # offline, missing repo, auth: say which and how to fix
        raise FileNotFoundError(
            f"could not fetch fuser {text!r} from the hub ({type(exc).__name__}: {exc}); "
            "check the id, your network, or pass a local folder"
        ) from exc


def read_config(folder: Path) -> dict[str, Any]:
    """The raw JSON of ``fuser_config.json`` (see :func:`read_record` for the checked, typed form)."""
    path = folder / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); the folder is corrupted") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a text file ({exc}); the folder is corrupted") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object; not a c2c fuser config")
    return config


def read_record(folder: Path) -> FuserRecord:
    return FuserRecord.from_json(read_config(folder), source=str(folder / CONFIG_NAME))


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; the fuser folder is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path} is corrupted or truncated ({exc}); re-save or re-download the fuser") from exc


def load_fuser_state(fusers: list[C2CFuser], weights: dict[str, torch.Tensor], source: str) -> None:
    """Load ``fusers.{k}.*`` tensors into each fuser, strictly, refusing NaN or infinite weights."""
    for k, fuser in enumerate(fusers):
        prefix = f"fusers.{k}."
        state = {name[len(prefix) :]: t for name, t in weights.items() if name.startswith(prefix)}
        bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            raise ValueError(
                f"{source}: fuser {k} weight {bad[0]!r} holds NaN or inf; the checkpoint is damaged or training "
                "diverged. Use an earlier checkpoint"
            )
        try:
            fuser.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{source} does not match its config for sharer {k}: {exc}") from exc
    extra = sorted({n.split(".")[1] for n in weights if n.startswith("fusers.")} - {str(k) for k in range(len(fusers))})
    if extra:
        raise ValueError(f"{source} holds weights for sharers {extra} that its config does not list")


def build_fusers(
    record: FuserRecord,
    weights: dict[str, torch.Tensor],
    *,
    source: str,
    device: Any = None,
    dtype: torch.dtype = torch.float32,
) -> list[C2CFuser]:
    """The fusers a record describes, with ``weights`` loaded."""
    fusers = [C2CFuser(c, g) for c, g in zip(record.fuser_configs, record.geometries())]
    load_fuser_state(fusers, weights, source)
    return [f.to(device=device, dtype=dtype) for f in fusers]
