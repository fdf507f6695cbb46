"""The top-level `c2c` command: generate, info, convert on models saved to disk."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from c2c import C2CModel, FuserConfig
from c2c.cli import app
from c2c.convert import export_reference
from c2c.testing.models import tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def fuser_dir(tmp_path_factory, tok_chatml, tok_llama3):
    root = tmp_path_factory.mktemp("cli")
    r = tiny_model("qwen3", num_layers=2, seed=1, vocab_size=len(tok_chatml) + 8)
    s = tiny_model("llama", num_layers=2, num_kv_heads=1, head_dim=32, seed=2, vocab_size=len(tok_llama3) + 8)
    for name, m, t in (("receiver", r, tok_chatml), ("sharer", s, tok_llama3)):
        m.save_pretrained(root / name)
        t.save_pretrained(root / name)
    from transformers import AutoModelForCausalLM

    model = C2CModel.from_models(
        AutoModelForCausalLM.from_pretrained(root / "receiver"),
        AutoModelForCausalLM.from_pretrained(root / "sharer"),
        fuser_config=FuserConfig(hidden_size=16, intermediate_size=16),
        receiver_tokenizer=tok_chatml,
        sharer_tokenizer=tok_llama3,
        seed=0,
    )
    model.fusers[0].layers["1"].gate_logit.data.fill_(1.0)
    model.save_pretrained(str(root / "fuser"))
    return root


def test_help_lists_every_command():
    out = runner.invoke(app, ["--help"])
    assert out.exit_code == 0
    for cmd in ("demo", "train", "eval", "generate", "serve", "chat", "info", "convert"):
        assert cmd in out.output


def test_info_describes_the_pair_and_gates(fuser_dir):
    out = runner.invoke(app, ["info", str(fuser_dir / "fuser")])
    assert out.exit_code == 0, out.output
    assert "qwen3" in out.output and "llama" in out.output and "1<-1[KV]" in out.output and "0<-0[--]" in out.output


def test_generate_prints_the_answer_the_python_api_gives(fuser_dir):
    import json

    out = runner.invoke(
        app, ["generate", str(fuser_dir / "fuser"), "hello there", "--max-new-tokens", "4", "--timings"]
    )
    assert out.exit_code == 0, out.output
    model = C2CModel.from_pretrained(str(fuser_dir / "fuser"))
    assert model.config.prompt_format == "chat"  # so the CLI sends the prompt as a user message
    want = model.generate([{"role": "user", "content": "hello there"}], max_new_tokens=4)
    assert out.stdout.splitlines() == [want]  # the answer on stdout; progress bars and timings on stderr
    timings = json.loads(out.stderr.splitlines()[-1].removesuffix("  (ms)"))
    assert {"sharer_prefill", "fusion", "receiver_prefill", "decode"} <= set(timings)
    assert all(v >= 0 for v in timings.values())
    raw = runner.invoke(app, ["generate", str(fuser_dir / "fuser"), "hello there", "--max-new-tokens", "4", "--raw"])
    assert raw.exit_code == 0 and raw.stdout.splitlines() == [model.generate("hello there", max_new_tokens=4)]


def test_convert_imports_a_reference_checkpoint(fuser_dir, tmp_path):
    model = C2CModel.from_pretrained(fuser_dir / "fuser")
    export_reference(model.fusers[0], tmp_path / "ref")
    out = runner.invoke(
        app,
        [
            "convert",
            str(tmp_path / "ref"),
            str(tmp_path / "out"),
            "--receiver",
            str(fuser_dir / "receiver"),
            "--sharer",
            str(fuser_dir / "sharer"),
        ],
    )
    assert out.exit_code == 0, out.output
    back = C2CModel.from_pretrained(tmp_path / "out")
    for a, b in zip(model.fusers.state_dict().values(), back.fusers.state_dict().values()):
        assert torch.equal(a, b)
    again = runner.invoke(
        app,
        [
            "convert",
            str(tmp_path / "ref"),
            str(tmp_path / "out"),
            "--receiver",
            str(fuser_dir / "receiver"),
            "--sharer",
            str(fuser_dir / "sharer"),
        ],
    )
    assert again.exit_code != 0 and "not empty" in again.output
