"""Option parsing shared by the command-line entry points."""

from __future__ import annotations

import pytest
import torch
import typer

from c2c.cli_options import DTYPES, parse_dtype


@pytest.mark.parametrize("name", [None, "auto"])
def test_auto_keeps_the_checkpoint_dtype(name: str | None) -> None:
    assert parse_dtype(name) is None


@pytest.mark.parametrize("name,dtype", [("float32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_names_and_aliases(name: str, dtype: torch.dtype) -> None:
    assert parse_dtype(name) is dtype
    assert all(isinstance(parse_dtype(n), torch.dtype) for n in DTYPES)


def test_unknown_dtype_names_the_choices() -> None:
    with pytest.raises(typer.BadParameter, match="unknown dtype 'float8'; use auto or one of float32"):
        parse_dtype("float8")
