"""Option parsing shared by every command-line entry point (``c2c``, ``c2c eval``, ``c2c serve``)."""

from __future__ import annotations

from typing import Any

import typer

DTYPES: tuple[str, ...] = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")


def parse_dtype(name: str | None) -> Any:
    """``--dtype`` value -> ``torch.dtype``; ``None`` or ``"auto"`` -> ``None`` (the checkpoint's own dtype)."""
    if name in (None, "auto"):
        return None
    import torch

    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if name not in table:
        raise typer.BadParameter(f"unknown dtype {name!r}; use auto or one of {', '.join(DTYPES)}")
    return table[name]
