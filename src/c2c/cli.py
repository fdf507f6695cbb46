"""The ``c2c`` command: demo, train, eval, generate, serve, chat, and fuser utilities."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn, Optional, cast, get_args

import typer

from c2c.cli_options import parse_dtype

if TYPE_CHECKING:  # the commands import the library lazily, so that `c2c --help` starts fast
    from c2c.persistence import FuserRecord

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


Mode = Literal["c2c", "receiver", "sharer"]
GENERATE_MODES: tuple[str, ...] = get_args(Mode)


def fail(message: str) -> NoReturn:
    """Print ``error: <message>`` (the problem and the fix) on stderr and exit with code 2, no traceback."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _dtype(name: str | None) -> Any:
    try:
        return parse_dtype(name)
    except typer.BadParameter as exc:
        fail(f"--dtype: {exc.message}")


@app.command("generate")
def generate_command(
    fuser: Annotated[str, typer.Argument(help="Fuser folder or hub id.")],
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    receiver: Annotated[Optional[str], typer.Option(help="Receiver id or path (default: as recorded).")] = None,
    sharer: Annotated[Optional[str], typer.Option(help="Sharer id or path (default: as recorded).")] = None,
    mode: Annotated[str, typer.Option(help="c2c, receiver or sharer.")] = "c2c",
    max_new_tokens: Annotated[int, typer.Option(help="New tokens to generate.")] = 128,
    raw: Annotated[
        bool,
        typer.Option(
            help="Feed the prompt as plain text even to a fuser trained on chat prompts (default: as the "
            "fuser was trained, its recorded prompt_format)."
        ),
    ] = False,
    dtype: Annotated[Optional[str], typer.Option(help="Model dtype: float32, bfloat16, float16.")] = None,
    timings: Annotated[bool, typer.Option(help="Print per-stage timings.")] = False,
) -> None:
    """Answer one prompt with a saved fuser."""
    if mode not in GENERATE_MODES:
        fail(f"--mode {mode!r} is not a mode; use one of {', '.join(GENERATE_MODES)}")
    if max_new_tokens < 1:
        fail(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    torch_dtype = _dtype(dtype)
    from c2c.model import C2CModel

    try:
        model = C2CModel.from_pretrained(fuser, receiver=receiver, sharer=sharer, dtype=torch_dtype)
        # The fuser is prompted the way it was trained: plain text, or a user message in the chat template.
        chat = model.config.prompt_format == "chat" and not raw
        inputs = [{"role": "user", "content": prompt}] if chat else prompt
        out = model.generate(inputs, mode=cast(Mode, mode), max_new_tokens=max_new_tokens, return_dict=True)
    except (OSError, ValueError) as exc:  # missing folder, wrong pair, corrupted file, no chat template...
        message = str(exc)
        if not raw and "no chat template" in message:
            message += "; with c2c generate, add --raw to send the prompt as plain text"
        fail(message)
    typer.echo(out.texts[0] if out.texts else out.sequences[0])
    if timings:
        typer.echo(json.dumps({k: round(v * 1000, 2) for k, v in out.timings.items()}) + "  (ms)", err=True)


@app.command("info")
def info_command(fuser: Annotated[str, typer.Argument(help="Fuser folder or hub id.")]) -> None:
    """Describe a saved fuser: pair, sizes, layer map, gate states, how it is prompted."""
    from c2c.persistence import read_record, read_weights, resolve_folder

    try:
        folder = resolve_folder(fuser)
        lines = describe(folder, read_record(folder), read_weights(folder))
    except (OSError, ValueError) as exc:
        fail(str(exc))
    for line in lines:
        typer.echo(line)


def describe(folder: Path, record: FuserRecord, weights: dict[str, Any]) -> list[str]:
    """The lines ``c2c info`` prints for a fuser folder's record and weights."""
    from c2c.fuser import fuser_size

    r = record.receiver
    out = [
        f"fuser:     {folder}",
        f"receiver:  {r.name_or_path or '(in-memory)'}  [{r.model_type}, {r.num_layers} layers, "
        f"{r.num_kv_heads}x{r.head_dim} KV]",
    ]
    for k, (s, fc, geometry) in enumerate(zip(record.sharers, record.fuser_configs, record.geometries())):
        size = fuser_size(fc, geometry)
        gates = weights_gates(weights, k)
        out += [
            f"sharer {k}:  {s.name_or_path or '(in-memory)'}  [{s.model_type}, {s.num_layers} layers, "
            f"{s.num_kv_heads}x{s.head_dim} KV]",
            f"  fuser:   {size.parameters:,} parameters ({size.bytes_bf16 / 2**20:.1f} MiB bf16), "
            f"{size.flops_per_token / 1e6:.1f} MFLOP/token, family {fc.size_label()}, variant {fc.variant}",
            "  layers:  " + ", ".join(f"{a}<-{b}{gates.get(a, '')}" for a, b in geometry.layer_map.items()),
        ]
    cc = record.c2c_config
    out.append(
        f"prompts:   {cc.prompt_format} (fused chat rows: {cc.chat_rows}); token alignment {cc.token_alignment}, "
        f"shift {cc.alignment_shift}{', include response' if cc.include_response else ''}"
    )
    out.append(
        f"saved with c2c {record.versions.get('c2c', '?')}, transformers {record.versions.get('transformers', '?')}"
    )
    return out


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
    from c2c.convert import convert_reference
    from c2c.fuser import C2CFuser

    try:
        folder, model = convert_reference(reference_dir, output_dir, receiver, sharer)
    except (OSError, ValueError) as exc:  # ConversionError names the file; transformers' errors the model
        fail(str(exc))
    fuser = cast(C2CFuser, model.fusers[0])
    typer.echo(f"wrote {folder} ({len(fuser.layers)} layer fusers, {fuser.num_open_gates()} open gates)")


_register()


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
