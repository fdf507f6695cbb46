"""Saving and loading fusers in the peft style: config + safetensors weights + model card.

A fuser folder holds only the fuser. ``fuser_config.json`` records, for the receiver and each sharer,
its name or path, revision, model type, layer count, KV heads, head dim and a tokenizer fingerprint, so a
loader can fetch the right models and refuse a pair whose caches do not match.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from c2c.cache import ModelSpec
from c2c.fuser import C2CFuser, FuserConfig, FuserGeometry

if TYPE_CHECKING:
    from c2c.model import C2CModel

CONFIG_NAME = "fuser_config.json"
WEIGHTS_NAME = "fuser_model.safetensors"
CARD_NAME = "README.md"
FORMAT_VERSION = 1


def _versions() -> dict[str, str]:
    import transformers

    from c2c import __version__

    return {"c2c": __version__, "transformers": transformers.__version__, "torch": torch.__version__}


def _fingerprint(tokenizer: Any | None) -> str | None:
    if tokenizer is None:
        return None
    from c2c.alignment.tokens import fingerprint

    return fingerprint(tokenizer)


def build_config(model: C2CModel) -> dict[str, Any]:
    """The JSON-serialisable description of ``model``'s fusers and the pair they belong to."""
    fusers = list(model.fusers)
    return {
        "format_version": FORMAT_VERSION,
        "versions": _versions(),
        "c2c_config": model.config.to_dict(),
        "fuser_config": fusers[0].config.to_dict(),
        "receiver": {**model.receiver_spec.to_dict(), "tokenizer_fingerprint": _fingerprint(model.receiver_tokenizer)},
        "sharers": [
            {**spec.to_dict(), "tokenizer_fingerprint": _fingerprint(tok)}
            for spec, tok in zip(model.sharer_specs, model.sharer_tokenizers)
        ],
        "layer_maps": [{str(r): s for r, s in f.layer_map.items()} for f in fusers],
        "fuser_configs": [f.config.to_dict() for f in fusers],
    }


def save(model: C2CModel, save_directory: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
    """Write the fuser folder atomically (a temporary folder renamed into place)."""
    target = Path(save_directory)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} already holds files; pass overwrite=True or choose another folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    config = build_config(model)
    tensors = {
        f"fusers.{k}.{name}": p.detach().to("cpu").contiguous()
        for k, fuser in enumerate(model.fusers)
        for name, p in fuser.state_dict().items()
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "c2c_format": str(FORMAT_VERSION)})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / CARD_NAME).write_text(model_card(config, tensors))
        if target.exists():
            # Keep anything else the folder holds (e.g. a trainer's files); replace ours file by file.
            for name in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME):
                os.replace(tmp / name, target / name)
            tmp.rmdir()
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
    return target


def model_card(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    n = sum(t.numel() for t in tensors.values())
    r = config["receiver"]
    sharers = ", ".join(f"`{s['name_or_path'] or s['model_type']}`" for s in config["sharers"])
    fc = config["fuser_config"]
    return f"""---
library_name: c2c
tags: [cache-to-cache, c2c, kv-cache, fuser]
---
# C2C fuser: {sharers} -> `{r['name_or_path'] or r['model_type']}`

A Cache-to-Cache fuser (Fu et al., arXiv 2510.03215): the receiver reads the sharer's KV-cache,
projected and gated into its own, instead of text.

- Receiver: `{r['name_or_path']}` ({r['model_type']}, {r['num_layers']} layers, {r['num_kv_heads']} KV heads x {r['head_dim']})
- Sharer(s): {sharers}
- Fuser: {n:,} parameters, hidden {fc['hidden_size']}, variant `{fc['variant']}`, layer map `{fc['layer_map'] if isinstance(fc['layer_map'], str) else 'explicit'}`
- Saved with c2c {config['versions']['c2c']}, transformers {config['versions']['transformers']}

```python
from c2c import C2CModel
model = C2CModel.from_pretrained("<this folder or repo>")  # loads the recorded receiver and sharer
print(model.generate("Your question"))
```
"""


def resolve_folder(fuser_dir_or_id: str | os.PathLike[str], revision: str | None = None) -> Path:
    """A local fuser folder, or a hub repo id downloaded with ``huggingface_hub``."""
    path = Path(fuser_dir_or_id)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{path} is not a c2c fuser folder: {CONFIG_NAME} is missing")
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file; give the fuser folder that holds {CONFIG_NAME}")
    looks_local = str(fuser_dir_or_id).startswith((".", "/", "~")) or os.sep in str(fuser_dir_or_id).strip("/").split("/", 1)[-1]
    if looks_local or str(fuser_dir_or_id).count("/") != 1:
        raise FileNotFoundError(f"no fuser folder at {fuser_dir_or_id!r} (and it is not a hub repo id 'owner/name')")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(str(fuser_dir_or_id), revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME])
        )
    except Exception as exc:  # offline, missing repo, auth: say which and how to fix
        raise FileNotFoundError(
            f"could not fetch fuser {fuser_dir_or_id!r} from the hub ({type(exc).__name__}: {exc}); "
            "check the id, your network, or pass a local folder"
        ) from exc


def read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{folder / CONFIG_NAME} is not valid JSON ({exc}); the folder is corrupted") from exc
    for key in ("fuser_config", "receiver", "sharers", "layer_maps"):
        if key not in config:
            raise ValueError(f"{folder / CONFIG_NAME} lacks {key!r}; not a c2c fuser config")
    return config


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; the fuser folder is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"{path} is corrupted or truncated ({exc}); re-save or re-download the fuser"
        ) from exc


def _load_model(spec_or_model: Any, record: dict[str, Any], role: str, dtype: Any, device_map: Any) -> Any:
    from transformers import AutoModelForCausalLM, PreTrainedModel

    if isinstance(spec_or_model, PreTrainedModel):
        return spec_or_model
    name = spec_or_model if spec_or_model is not None else record.get("name_or_path")
    if not name:
        raise ValueError(f"the fuser config records no {role} path (it was trained on an in-memory model); pass {role}=")
    kw: dict[str, Any] = {"revision": record.get("revision")} if spec_or_model is None and record.get("revision") else {}
    if dtype is not None:
        kw["dtype"] = dtype
    if device_map is not None:
        kw["device_map"] = device_map
    try:
        return AutoModelForCausalLM.from_pretrained(str(name), **kw)
    except OSError as exc:
        raise FileNotFoundError(f"could not load the {role} model {name!r}: {exc}") from exc


def _load_tokenizer(given: Any, model: Any, record: dict[str, Any], role: str) -> Any | None:
    if given is not None and not isinstance(given, (str, os.PathLike)):
        return given
    from transformers import AutoTokenizer

    name = given or getattr(model, "name_or_path", None) or record.get("name_or_path")
    if not name:
        return None
    try:
        return AutoTokenizer.from_pretrained(str(name))
    except (OSError, ValueError):
        if given is not None:
            raise
        return None  # a model folder without tokenizer: token ids still work


def load(
    cls: type[C2CModel],
    fuser_dir_or_id: str | os.PathLike[str],
    *,
    receiver: Any = None,
    sharer: Any = None,
    receiver_tokenizer: Any = None,
    sharer_tokenizer: Any = None,
    dtype: Any = None,
    device_map: Any = None,
    revision: str | None = None,
    fuser_dtype: torch.dtype = torch.float32,
) -> C2CModel:
    """Build a :class:`C2CModel` from a saved fuser folder (or hub id).

    ``receiver`` / ``sharer`` are loaded models, ids or paths; when omitted, the recorded ones are
    loaded. Weights load strictly; a pair whose cache shapes differ from the recorded ones is refused.
    """
    import warnings

    from c2c.model import C2CConfig, check_pair

    folder = resolve_folder(fuser_dir_or_id, revision)
    config = read_config(folder)
    n = len(config["sharers"])
    sharers_in = sharer if isinstance(sharer, (list, tuple)) else [sharer] * n if sharer is None else [sharer]
    if len(sharers_in) != n:
        raise ValueError(f"this fuser has {n} sharers; got {len(sharers_in)}")
    s_toks = sharer_tokenizer if isinstance(sharer_tokenizer, (list, tuple)) else [sharer_tokenizer] * n
    r_model = _load_model(receiver, config["receiver"], "receiver", dtype, device_map)
    s_models = [_load_model(s, rec, "sharer", dtype, device_map) for s, rec in zip(sharers_in, config["sharers"])]
    r_spec = ModelSpec.from_model(r_model)
    weights = read_weights(folder)
    fusers = []
    fuser_configs = config.get("fuser_configs") or [config["fuser_config"]] * n
    for k, (s_model, rec) in enumerate(zip(s_models, config["sharers"])):
        geometry = FuserGeometry(
            ModelSpec.from_dict(config["receiver"]),
            ModelSpec.from_dict(rec),
            {int(r): int(s) for r, s in config["layer_maps"][k].items()},
        )
        check_pair(geometry, r_spec, ModelSpec.from_model(s_model), sharer_number=k)
        # Keep the loaded models' names (paths may have moved) but the recorded shapes.
        geometry.receiver.name_or_path = r_spec.name_or_path or geometry.receiver.name_or_path
        fuser = C2CFuser(FuserConfig.from_dict(fuser_configs[k]), geometry)
        prefix = f"fusers.{k}."
        state = {name[len(prefix) :]: t for name, t in weights.items() if name.startswith(prefix)}
        try:
            fuser.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{folder / WEIGHTS_NAME} does not match its config for sharer {k}: {exc}") from exc
        fusers.append(fuser.to(device=r_model.get_input_embeddings().weight.device, dtype=fuser_dtype))
    r_tok = _load_tokenizer(receiver_tokenizer, r_model, config["receiver"], "receiver")
    s_tok = [_load_tokenizer(t, m, rec, "sharer") for t, m, rec in zip(s_toks, s_models, config["sharers"])]
    for role, tok, rec in [("receiver", r_tok, config["receiver"])] + [("sharer", t, r) for t, r in zip(s_tok, config["sharers"])]:
        want = rec.get("tokenizer_fingerprint")
        if want and tok is not None and _fingerprint(tok) != want:
            warnings.warn(f"the {role} tokenizer differs from the one this fuser was trained with", stacklevel=2)
    return cls(
        r_model,
        s_models,
        fusers,
        receiver_tokenizer=r_tok,
        sharer_tokenizers=s_tok,
        config=C2CConfig.from_dict(config.get("c2c_config", {})),
    )
