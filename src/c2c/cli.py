"""The ``c2c`` command: demo, train, eval, generate, serve, chat, and fuser utilities."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from c2c.cli_options import parse_dtype

app = typer.Typer(
    name="c2c",
    help="Cache-to-Cache: LLMs that talk through their KV-caches (Fu et al., ICLR 2026).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _register() -> None:
    # Sub-commands live next to the code they drive; imported here so `c2c --help` lists them all.
    from c2c.demo.cli import demo_command
    from c2c.eval.cli import eval_app
    from c2c.serve.cli import chat_command, serve_command
    from c2c.train.cli import train_command

    app.command("demo")(demo_command)
    app.command("train")(train_command)
    app.add_typer(eval_app, name="eval")
    app.command("serve")(serve_command)
    app.command("chat")(chat_command)


@app.command("generate")
def generate_command(
    fuser: Annotated[str, typer.Argument(help="Fuser folder or hub id.")],
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    receiver: Annotated[Optional[str], typer.Option(help="Receiver id or path (default: as recorded).")] = None,
    sharer: Annotated[Optional[str], typer.Option(help="Sharer id or path (default: as recorded).")] = None,
    mode: Annotated[str, typer.Option(help="c2c, receiver or sharer.")] = "c2c",
    max_new_tokens: Annotated[int, typer.Option(help="New tokens to generate.")] = 128,
    raw: Annotated[bool, typer.Option(help="Feed the prompt as plain text, without the chat template.")] = False,
    dtype: Annotated[Optional[str], typer.Option(help="Model dtype: float32, bfloat16, float16.")] = None,
    timings: Annotated[bool, typer.Option(help="Print per-stage timings.")] = False,
) -> None:
    """Answer one prompt with a saved fuser."""
    from c2c.model import C2CModel

    model = C2CModel.from_pretrained(fuser, receiver=receiver, sharer=sharer, dtype=parse_dtype(dtype))
    inputs = prompt if raw else [{"role": "user", "content": prompt}]
    out = model.generate(inputs, mode=mode, max_new_tokens=max_new_tokens, return_dict=True)
    typer.echo(out.texts[0] if out.texts else out.sequences[0])
    if timings:
        typer.echo(json.dumps({k: round(v * 1000, 2) for k, v in out.timings.items()}) + "  (ms)", err=True)


@app.command("info")
def info_command(fuser: Annotated[str, typer.Argument(help="Fuser folder or hub id.")]) -> None:
    """Describe a saved fuser: pair, sizes, layer map, gate states."""
    from c2c.cache import ModelSpec
    from c2c.fuser import FuserConfig, FuserGeometry, fuser_size
    from c2c.persistence import read_config, read_weights, resolve_folder

    folder = resolve_folder(fuser)
    cfg = read_config(folder)
    weights = read_weights(folder)
    r = ModelSpec.from_dict(cfg["receiver"])
    typer.echo(f"fuser:     {folder}")
    typer.echo(f"receiver:  {r.name_or_path or '(in-memory)'}  [{r.model_type}, {r.num_layers} layers, {r.num_kv_heads}x{r.head_dim} KV]")
    for k, rec in enumerate(cfg["sharers"]):
        s = ModelSpec.from_dict(rec)
        fc = FuserConfig.from_dict((cfg.get("fuser_configs") or [cfg["fuser_config"]])[k])
        lm = {int(a): int(b) for a, b in cfg["layer_maps"][k].items()}
        size = fuser_size(fc, FuserGeometry(r, s, lm))
        gates = weights_gates(weights, k)
        typer.echo(f"sharer {k}:  {s.name_or_path or '(in-memory)'}  [{s.model_type}, {s.num_layers} layers, {s.num_kv_heads}x{s.head_dim} KV]")
        typer.echo(f"  fuser:   {size.parameters:,} parameters ({size.bytes_bf16 / 2**20:.1f} MiB bf16), "
                   f"{size.flops_per_token / 1e6:.1f} MFLOP/token, family {fc.size_label()}, variant {fc.variant}")
        typer.echo(f"  layers:  " + ", ".join(f"{a}<-{b}{gates.get(a, '')}" for a, b in lm.items()))
    typer.echo(f"saved with c2c {cfg['versions']['c2c']}, transformers {cfg['versions']['transformers']}")


def weights_gates(weights: dict, k: int) -> dict[int, str]:
    """``{receiver layer: "[KV]"}`` open-gate markers of sharer ``k`` from a loaded state dict."""
    out = {}
    for name, t in weights.items():
        parts = name.split(".")
        if parts[:2] == ["fusers", str(k)] and parts[-1] == "gate_logit":
            key, value = (t > 0).tolist()
            out[int(parts[3])] = "[" + ("K" if key else "-") + ("V" if value else "-") + "]"
    return out


@app.command("convert")
def convert_command(
    reference_dir: Annotated[Path, typer.Argument(help="Folder with projector_config.json and projector_*.pt.")],
    output_dir: Annotated[Path, typer.Argument(help="Where to write the c2c fuser folder.")],
    receiver: Annotated[str, typer.Option(help="Receiver id or path the checkpoint was trained for.")],
    sharer: Annotated[str, typer.Option(help="Sharer id or path the checkpoint was trained for.")],
) -> None:
    """Import a checkpoint of the reference implementation (thu-nics/C2C) as a c2c fuser folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from c2c.convert import import_reference
    from c2c.model import C2CModel

    if output_dir.exists() and any(output_dir.iterdir()):
        typer.echo(f"error: {output_dir} is not empty; choose a new folder", err=True)
        raise typer.Exit(2)
    r = AutoModelForCausalLM.from_pretrained(receiver)
    s = AutoModelForCausalLM.from_pretrained(sharer)
    from c2c.cache import ModelSpec

    fuser = import_reference(reference_dir, ModelSpec.from_model(r, receiver), ModelSpec.from_model(s, sharer))
    model = C2CModel(r, s, fuser, receiver_tokenizer=AutoTokenizer.from_pretrained(receiver),
                     sharer_tokenizers=AutoTokenizer.from_pretrained(sharer))
    model.save_pretrained(str(output_dir))
    typer.echo(f"wrote {output_dir} ({len(fuser.layers)} layer fusers, {fuser.num_open_gates()} open gates)")


_register()


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
