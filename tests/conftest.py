"""Shared fixtures: tiny models of real architectures and local tokenizers (all built in-process)."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    from c2c.testing.tokenizers import default_corpus

    return default_corpus()


@pytest.fixture(scope="session")
def tok_chatml(corpus):
    from c2c.testing.tokenizers import build_tokenizer

    return build_tokenizer(corpus, 400, model="bpe", chat_template="chatml")


@pytest.fixture(scope="session")
def tok_llama3(corpus):
    from c2c.testing.tokenizers import build_tokenizer

    return build_tokenizer(corpus, 520, model="bpe", chat_template="llama3")


@pytest.fixture(scope="session")
def quick_demo_dir(tmp_path_factory):
    """One `c2c demo --quick --study` run shared by every test that reads its outputs: its folder (data
    files, trained fusers, results.json, figures). Tests read it; none writes to it."""
    import typer
    from typer.testing import CliRunner

    from c2c.demo.cli import demo_command

    out = tmp_path_factory.mktemp("demo")
    app = typer.Typer()
    app.command()(demo_command)
    res = CliRunner().invoke(app, ["--quick", "--study", "--out", str(out), "--cache-dir", str(out / "cache")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return out


@pytest.fixture
def quick_demo(quick_demo_dir):
    """``(folder, results)`` of the shared quick run; the results are read afresh for every test."""
    import json

    return quick_demo_dir, json.loads((quick_demo_dir / "results.json").read_text())
