"""The command line's bad-input catalogue: every ordinary user error (a missing folder, a wrong pair, a bad
file, a bad option) ends with exit code 2 and one ``error: ...`` line naming the problem and the fix, never a
traceback. Runs the real ``c2c`` app (typer's CliRunner), and the console entry point once as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from c2c import C2CModel, FuserConfig
from c2c.cli import app
from c2c.convert import export_reference
from c2c.testing.models import tiny_model
from c2c.testing.tokenizers import build_tokenizer, default_special_tokens

FIXTURES = Path(__file__).resolve().parent / "fixtures"
runner = CliRunner()


@pytest.fixture(scope="module")
def root(tmp_path_factory, tok_chatml, tok_llama3) -> Path:
    """Saved tiny models, fusers and reference checkpoints; never modified by the cases (each case that needs a
    broken file builds it in its own tmp_path)."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("cli_bad")
    plain_tok = build_tokenizer(None, 400, chat_template=None, special_tokens=default_special_tokens("chatml"))
    specs = {
        "receiver": ("qwen3", tok_chatml, {"num_layers": 2}),
        "receiver_plain": ("qwen3", plain_tok, {"num_layers": 2}),  # the same model, a tokenizer without template
        "receiver3": ("qwen3", tok_chatml, {"num_layers": 3}),  # another depth, the same head shapes
        "other": ("qwen3", tok_chatml, {"num_layers": 2, "num_kv_heads": 1, "head_dim": 8}),  # other cache shapes
        "sharer": ("llama", tok_llama3, {"num_layers": 2, "num_kv_heads": 1, "head_dim": 32}),
    }
    for name, (family, tok, kw) in specs.items():
        tiny_model(family, seed=1, vocab_size=len(tok) + 8, **kw).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    for name, r_name, r_tok in (("fuser", "receiver", tok_chatml), ("fuser_plain", "receiver_plain", plain_tok)):
        model = C2CModel.from_models(
            AutoModelForCausalLM.from_pretrained(root / r_name),
            AutoModelForCausalLM.from_pretrained(root / "sharer"),
            fuser_config=FuserConfig(hidden_size=16, intermediate_size=16),
            receiver_tokenizer=r_tok,
            sharer_tokenizer=tok_llama3,
            seed=0,
        )
        model.save_pretrained(str(root / name))
    export_reference(C2CModel.from_pretrained(root / "fuser").fusers[0], root / "reference")
    (root / "empty").mkdir()
    (root / "a_file.txt").write_text("not a folder")
    return root


def _broken_copy(src: Path, dst: Path, name: str, content: bytes) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(content if f.name == name else f.read_bytes())
    return dst


def _taken(tmp: Path) -> Path:
    (tmp / "taken").mkdir()
    (tmp / "taken" / "mine.txt").write_text("keep")
    return tmp / "taken"


Case = Callable[[Path, Path], list[str]]
CASES: list[tuple[str, Case, list[str]]] = [
    # ---- c2c generate
    (
        "generate-missing-folder",
        lambda r, t: ["generate", str(t / "nope"), "hi"],
        ["no fuser folder at", "not a hub repo id"],
    ),
    (
        "generate-folder-without-config",
        lambda r, t: ["generate", str(r / "empty"), "hi"],
        ["is not a c2c fuser folder", "fuser_config.json is missing"],
    ),
    (
        "generate-file-not-folder",
        lambda r, t: ["generate", str(r / "a_file.txt"), "hi"],
        ["is a file", "give the fuser folder"],
    ),
    (
        "generate-corrupt-config",
        lambda r, t: ["generate", str(_broken_copy(r / "fuser", t / "f", "fuser_config.json", b"{oops")), "hi"],
        ["fuser_config.json is not valid JSON", "corrupted"],
    ),
    (
        "generate-truncated-weights",
        lambda r, t: [
            "generate",
            str(
                _broken_copy(
                    r / "fuser",
                    t / "f",
                    "fuser_model.safetensors",
                    (r / "fuser" / "fuser_model.safetensors").read_bytes()[:40],
                )
            ),
            "hi",
        ],
        ["fuser_model.safetensors is corrupted or truncated", "re-save or re-download"],
    ),
    (
        "generate-wrong-pair",
        lambda r, t: ["generate", str(r / "fuser"), "hi", "--receiver", str(r / "other")],
        ["built for a different model pair", "load the models it was trained with"],
    ),
    (
        "generate-swapped-pair",
        lambda r, t: [
            "generate",
            str(r / "fuser"),
            "hi",
            "--receiver",
            str(r / "sharer"),
            "--sharer",
            str(r / "receiver"),
        ],
        ["look swapped", "pass receiver=<the model that answers>"],
    ),
    (
        "generate-missing-receiver",
        lambda r, t: ["generate", str(r / "fuser"), "hi", "--receiver", str(t / "gone")],
        ["gone"],
    ),
    (
        "generate-no-chat-template",
        lambda r, t: ["generate", str(r / "fuser_plain"), "hi"],
        ["no chat template", "add --raw"],
    ),
    (
        "generate-bad-mode",
        lambda r, t: ["generate", str(r / "fuser"), "hi", "--mode", "t2t"],
        ["--mode 't2t' is not a mode", "use one of c2c, receiver, sharer"],
    ),
    (
        "generate-zero-tokens",
        lambda r, t: ["generate", str(r / "fuser"), "hi", "--max-new-tokens", "0"],
        ["--max-new-tokens must be at least 1, got 0"],
    ),
    (
        "generate-bad-dtype",
        lambda r, t: ["generate", str(r / "fuser"), "hi", "--dtype", "float8"],
        ["--dtype: unknown dtype 'float8'", "use auto or one of"],
    ),
    # ---- c2c info
    ("info-missing-folder", lambda r, t: ["info", str(t / "nope")], ["no fuser folder at", "not a hub repo id"]),
    ("info-folder-without-config", lambda r, t: ["info", str(r / "empty")], ["fuser_config.json is missing"]),
    (
        "info-corrupt-config",
        lambda r, t: ["info", str(_broken_copy(r / "fuser", t / "f", "fuser_config.json", b"[1, 2"))],
        ["fuser_config.json is not valid JSON", "corrupted"],
    ),
    (
        "info-config-lacks-a-key",
        lambda r, t: [
            "info",
            str(_broken_copy(r / "fuser", t / "f", "fuser_config.json", json.dumps({"receiver": {}}).encode())),
        ],
        ["lacks 'fuser_config'", "not a c2c fuser config"],
    ),
    (
        "info-malformed-config",
        lambda r, t: [
            "info",
            str(
                _broken_copy(
                    r / "fuser",
                    t / "f",
                    "fuser_config.json",
                    json.dumps(
                        {**json.loads((r / "fuser" / "fuser_config.json").read_text()), "layer_maps": []}
                    ).encode(),
                )
            ),
        ],
        ["fuser_config.json: 'layer_maps' must be a list with one mapping per sharer", "re-save the fuser"],
    ),
    (
        "info-empty-weights",
        lambda r, t: ["info", str(_broken_copy(r / "fuser", t / "f", "fuser_model.safetensors", b""))],
        ["fuser_model.safetensors is corrupted or truncated"],
    ),
    # ---- c2c convert
    (
        "convert-missing-reference",
        lambda r, t: [
            "convert",
            str(t / "nope"),
            str(t / "out"),
            "--receiver",
            str(r / "receiver"),
            "--sharer",
            str(r / "sharer"),
        ],
        ["nope is not a folder", "give the reference checkpoint folder"],
    ),
    (
        "convert-not-a-reference",
        lambda r, t: [
            "convert",
            str(r / "empty"),
            str(t / "out"),
            "--receiver",
            str(r / "receiver"),
            "--sharer",
            str(r / "sharer"),
        ],
        ["projector_config.json is missing", "not a reference C2C checkpoint folder"],
    ),
    (
        "convert-empty-pt",
        lambda r, t: [
            "convert",
            str(_broken_copy(r / "reference", t / "ref", "projector_1.pt", b"")),
            str(t / "out"),
            "--receiver",
            str(r / "receiver"),
            "--sharer",
            str(r / "sharer"),
        ],
        ["projector_1.pt is not a readable PyTorch state dict", "re-copy it"],
    ),
    (
        "convert-other-depth",
        lambda r, t: [
            "convert",
            str(r / "reference"),
            str(t / "out"),
            "--receiver",
            str(r / "receiver3"),
            "--sharer",
            str(r / "sharer"),
        ],
        [
            "projector_config.json: the checkpoint was trained for models of another depth",
            "2 projectors for receiver layers 0..1",
            "has 3 KV layers",
            "layer map receiver<-sharer: 0<-0, 1<-1",
            "Convert it with the receiver and sharer it was trained for",
        ],
    ),
    (
        "convert-other-shapes",
        lambda r, t: [
            "convert",
            str(r / "reference"),
            str(t / "out"),
            "--receiver",
            str(r / "other"),
            "--sharer",
            str(r / "sharer"),
        ],
        ["projector_0.json: checkpoint shapes", "do not match the models", "(--receiver / --sharer)"],
    ),
    (
        "convert-output-not-empty",
        lambda r, t: [
            "convert",
            str(r / "reference"),
            str(_taken(t)),
            "--receiver",
            str(r / "receiver"),
            "--sharer",
            str(r / "sharer"),
        ],
        ["taken is not empty", "choose a new output folder"],
    ),
    (
        "convert-missing-receiver",
        lambda r, t: [
            "convert",
            str(r / "reference"),
            str(t / "out"),
            "--receiver",
            str(t / "gone"),
            "--sharer",
            str(r / "sharer"),
        ],
        ["gone"],
    ),
    # ---- c2c eval run
    *[
        (
            f"eval-{opt.strip('-')}-{value}",
            (
                lambda o, v: (
                    lambda r, t: [
                        "eval",
                        "run",
                        str(FIXTURES / "qa_tiny.jsonl"),
                        "--modes",
                        "receiver",
                        "--receiver",
                        str(r / "receiver"),
                        "--out",
                        str(t / "res"),
                        o,
                        v,
                    ]
                )
            )(opt, value),
            [f"{opt} must be at least {low}, got {value}"],
        )
        for opt, value, low in [
            ("--batch-size", "0", 1),
            ("--batch-size", "-3", 1),
            ("--max-new-tokens", "0", 1),
            ("--note-max-tokens", "0", 1),
            ("--oracle-shots", "-1", 0),
            ("--limit", "0", 1),
        ]
    ],
    (
        "eval-seed-too-large",
        lambda r, t: ["eval", "run", str(FIXTURES / "qa_tiny.jsonl"), "--modes", "receiver", "--seed", str(2**64)],
        ["--seed must be between 0 and 2**64 - 1"],
    ),
    (
        "eval-unknown-mode",
        lambda r, t: ["eval", "run", str(FIXTURES / "qa_tiny.jsonl"), "--modes", "receiver,t3t"],
        ["unknown modes ['t3t']", "choose from receiver, sharer"],
    ),
    (
        "eval-c2c-without-fuser",
        lambda r, t: ["eval", "run", str(FIXTURES / "qa_tiny.jsonl"), "--modes", "c2c"],
        ["--modes c2c needs a saved fuser", "pass --fuser"],
    ),
    (
        "eval-bad-oracle-model",
        lambda r, t: ["eval", "run", str(FIXTURES / "qa_tiny.jsonl"), "--modes", "oracle", "--oracle-model", "judge"],
        ["--oracle-model must be 'receiver' or 'sharer'"],
    ),
    (
        "eval-bad-dtype",
        lambda r, t: ["eval", "run", str(FIXTURES / "qa_tiny.jsonl"), "--modes", "receiver", "--dtype", "int4"],
        ["--dtype: unknown dtype 'int4'"],
    ),
    (
        "eval-missing-benchmark",
        lambda r, t: ["eval", "run", str(t / "none.jsonl"), "--modes", "receiver"],
        ["no benchmark file"],
    ),
    (
        "eval-bad-format",
        lambda r, t: ["eval", "run", str(FIXTURES / "qa_tiny.jsonl"), "--modes", "receiver", "--format", "trivia"],
        ["unknown benchmark format 'trivia'", "choose one of"],
    ),
    (
        "eval-missing-fuser",
        lambda r, t: ["eval", "run", str(FIXTURES / "qa_tiny.jsonl"), "--modes", "c2c", "--fuser", str(t / "nofuser")],
        ["no fuser folder at"],
    ),
    ("eval-report-nothing", lambda r, t: ["eval", "report", str(t / "no_runs")], ["no_runs"]),
]


@pytest.mark.parametrize(("args", "expected"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_error_line(root: Path, tmp_path: Path, args: Case, expected: list[str]) -> None:
    res = runner.invoke(app, args(root, tmp_path))
    out = res.output
    assert res.exit_code == 2, out
    assert isinstance(res.exception, SystemExit), res.exception  # handled, not an escaped exception
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out
    for text in expected:
        assert text in out, f"{text!r} not in {out!r}"
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_usage_errors_need_no_traceback(root: Path, tmp_path: Path) -> None:
    """Typer's own option checks (a missing option, a non-integer) also end with exit code 2 and a hint."""
    for args, problem in (
        (
            ["convert", str(root / "reference"), str(tmp_path / "out"), "--receiver", str(root / "receiver")],
            "Missing option '--sharer'",
        ),
        (["generate", str(root / "fuser"), "hi", "--max-new-tokens", "many"], "Invalid value for '--max-new-tokens'"),
        (["eval", "run", str(FIXTURES / "qa_tiny.jsonl"), "--batch-size", "1.5"], "Invalid value for '--batch-size'"),
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and "Traceback" not in res.output
        flat = " ".join(res.output.replace("│", " ").split())  # rich wraps the message in a box
        assert problem in flat and "--help" in flat


def test_console_entry_point_prints_one_line(tmp_path: Path) -> None:
    """The real process: stderr is the error line alone, exit status 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "c2c", "info", str(tmp_path / "missing")], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no fuser folder at") and "Traceback" not in proc.stderr
    assert proc.stdout == ""
