"""Importing reference (thu-nics/C2C) checkpoints: every bad checkpoint is refused at convert time with an
error naming its file; a converted fuser records the reference's row layout and loads back bit-exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from c2c import C2CModel, FuserConfig
from c2c.cache import ModelSpec
from c2c.convert import ConversionError, convert_reference, export_reference, import_reference
from c2c.testing.models import tiny_model
from c2c.testing.tokenizers import build_tokenizer


def _save(root: Path, name: str, family: str, tok, num_layers: int, seed: int) -> Path:
    model = tiny_model(family, num_layers=num_layers, seed=seed, vocab_size=len(tok) + 8)
    model.save_pretrained(root / name)
    tok.save_pretrained(root / name)
    return root / name


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Receivers of depth 2, 3 and 4 with the same head shapes; sharers of depth 2 (same vocabulary as the
    receivers, Qwen2.5-like template) and 2 (another vocabulary)."""
    root = tmp_path_factory.mktemp("convert_models")
    qwen3 = build_tokenizer(None, 420, chat_template="qwen3")
    qwen25 = build_tokenizer(None, 420, chat_template="qwen25")
    llama = build_tokenizer(None, 380, chat_template="llama3")
    return {
        "receiver2": _save(root, "receiver2", "qwen3", qwen3, 2, 1),
        "receiver3": _save(root, "receiver3", "qwen3", qwen3, 3, 1),
        "receiver4": _save(root, "receiver4", "qwen3", qwen3, 4, 1),
        # qwen3 family on purpose: AutoTokenizer on a "qwen2" model folder rebuilds the tokenizer as Qwen2Tokenizer
        # (NFC, its own split regex), which no longer tokenizes like the receiver
        "sharer_same_vocab": _save(root, "sharer_same_vocab", "qwen3", qwen25, 2, 2),
        "sharer_other_vocab": _save(root, "sharer_other_vocab", "llama", llama, 2, 3),
    }


def _spec(path: Path) -> ModelSpec:
    from transformers import AutoConfig

    return ModelSpec.from_config(AutoConfig.from_pretrained(path), str(path))


@pytest.fixture(scope="module")
def reference_dir(models, tmp_path_factory) -> Path:
    """A reference checkpoint for receiver3 <- sharer_same_vocab (3 projectors), gates of layer 2 open."""
    from transformers import AutoModelForCausalLM

    r = AutoModelForCausalLM.from_pretrained(models["receiver3"])
    s = AutoModelForCausalLM.from_pretrained(models["sharer_same_vocab"])
    model = C2CModel.from_models(r, s, fuser_config=FuserConfig(hidden_size=16, intermediate_size=16), seed=0)
    model.fusers[0].layers["2"].gate_logit.data.fill_(1.0)
    out = tmp_path_factory.mktemp("ref") / "ckpt"
    export_reference(model.fusers[0], out)
    return out


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_convert_writes_a_fuser_that_records_the_reference_rows(models, reference_dir, tmp_path) -> None:
    out, model = convert_reference(
        reference_dir, tmp_path / "out", str(models["receiver3"]), str(models["sharer_same_vocab"])
    )
    cfg = json.loads((out / "fuser_config.json").read_text())
    assert cfg["c2c_config"]["chat_rows"] == "reference"  # same tokenization: one rendering, all rows but last
    back = C2CModel.from_pretrained(out)
    for (name, a), b in zip(model.fusers.state_dict().items(), back.fusers.state_dict().values()):
        assert torch.equal(a, b), name
    assert back.fusers[0].num_open_gates() == 2
    # the imported weights are the exported ones, bit for bit
    again = import_reference(reference_dir, _spec(models["receiver3"]), _spec(models["sharer_same_vocab"]))
    for a, b in zip(again.state_dict().values(), back.fusers[0].state_dict().values()):
        assert torch.equal(a, b)


def test_convert_other_vocabulary_records_content_rows(models, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    r = AutoModelForCausalLM.from_pretrained(models["receiver2"])
    s = AutoModelForCausalLM.from_pretrained(models["sharer_other_vocab"])
    model = C2CModel.from_models(
        r,
        s,
        fuser_config=FuserConfig(hidden_size=16, intermediate_size=16),
        seed=0,
        receiver_tokenizer=AutoTokenizer.from_pretrained(models["receiver2"]),
        sharer_tokenizer=AutoTokenizer.from_pretrained(models["sharer_other_vocab"]),
    )
    export_reference(model.fusers[0], tmp_path / "ref")
    out, _ = convert_reference(
        tmp_path / "ref", tmp_path / "out", str(models["receiver2"]), str(models["sharer_other_vocab"])
    )
    assert json.loads((out / "fuser_config.json").read_text())["c2c_config"]["chat_rows"] == "content"


def test_checkpoint_of_another_depth_is_refused_at_convert_time(models, reference_dir, tmp_path) -> None:
    """Bug (issue 11): a 3-layer checkpoint converted for a 2-layer receiver with the same head shapes was
    accepted and failed with an IndexError at generate time."""
    sharer = _spec(models["sharer_same_vocab"])
    want = (
        r"projector_config\.json: the checkpoint was trained for models of another depth: 3 projectors for "
        r"receiver layers 0\.\.2, but the receiver .* has 2 KV layers \(layer map receiver<-sharer: 0<-0, 1<-0, "
        r"2<-1\)\. Convert it with the receiver and sharer it was trained for"
    )
    with pytest.raises(ConversionError, match=want):
        import_reference(reference_dir, _spec(models["receiver2"]), sharer)
    # a deeper receiver: layers 0..2 exist, but the checkpoint gives 3 of its 4 layers a projector
    with pytest.raises(ConversionError, match="3 projectors for receiver layers 0..2, but the receiver .* has 4 KV"):
        import_reference(reference_dir, _spec(models["receiver4"]), sharer)
    partial = import_reference(reference_dir, _spec(models["receiver4"]), sharer, allow_partial_map=True)
    assert sorted(partial.layer_map) == [0, 1, 2]
    # a sharer layer that does not exist
    bad = _copy(reference_dir, tmp_path / "bad_sharer")
    cfg = json.loads((bad / "projector_config.json").read_text())
    cfg["0"]["1"]["2"] = [[5, 2]]
    (bad / "projector_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match=r"sharer layers \[5\] do not exist: the sharer .* has 2 KV layers"):
        import_reference(bad, _spec(models["receiver3"]), sharer)
    # and through convert_reference: nothing is written
    with pytest.raises(ConversionError, match="another depth"):
        convert_reference(reference_dir, tmp_path / "out", str(models["receiver2"]), str(models["sharer_same_vocab"]))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("empty_pt", r"projector_1\.pt is not a readable PyTorch state dict \(EOFError"),
        ("garbage_pt", r"projector_1\.pt is not a readable PyTorch state dict"),
        ("list_pt", r"projector_1\.pt does not hold a state dict of tensors"),
        ("foreign_keys_pt", r"projector_1\.pt: unexpected parameter 'bogus'"),
        ("wrong_shape_pt", r"projector_1\.pt does not fit receiver layer 1's fuser"),
        ("missing_pt", r"projector_1\.pt is missing"),
        ("missing_json", r"projector_1\.json is missing"),
        ("bad_json", r"projector_config\.json is not valid JSON"),
        ("two_models", r"projector_config\.json: expected .* exactly one receiver and one sharer model"),
        ("no_layers", r"projector_config\.json: no receiver layer is mapped"),
        ("two_sources", r"projector_config\.json: receiver layer 1 has 2 sources"),
        ("bad_edge", r"projector_config\.json: receiver layer '1' maps to 'x'"),
        ("wrong_class", r"projector_1\.json: class 'AllInOneProjector' is not supported"),
        ("bad_init_args", r"projector_1\.json: C2CProjector needs num_layers >= 3"),
        ("other_sizes", r"projector_1\.json has different sizes from projector_0\.json"),
        ("other_heads", r"projector_1\.json: checkpoint shapes .* do not match the models"),
        ("not_a_folder", r"ckpt is not a folder; give the reference checkpoint folder"),
        ("no_config", r"projector_config\.json is missing; not a reference C2C checkpoint folder"),
    ],
)
def test_bad_checkpoints_name_their_file(models, reference_dir, tmp_path, case: str, match: str) -> None:
    ref = _copy(reference_dir, tmp_path / "ckpt")
    cfg = json.loads((ref / "projector_config.json").read_text())
    meta = json.loads((ref / "projector_1.json").read_text())
    pt = ref / "projector_1.pt"
    if case == "empty_pt":
        pt.write_bytes(b"")
    elif case == "garbage_pt":
        pt.write_bytes(b"\x00not a zip or pickle" * 10)
    elif case == "list_pt":
        torch.save([torch.zeros(2)], pt)
    elif case == "foreign_keys_pt":
        torch.save({**torch.load(pt, weights_only=True), "bogus": torch.zeros(1)}, pt)
    elif case == "wrong_shape_pt":
        state = torch.load(pt, weights_only=True)
        torch.save({k: torch.zeros(3, 3) if v.dim() == 2 else v for k, v in state.items()}, pt)
    elif case == "missing_pt":
        pt.unlink()
    elif case == "missing_json":
        (ref / "projector_1.json").unlink()
    elif case == "bad_json":
        (ref / "projector_config.json").write_text("{not json")
    elif case == "two_models":
        (ref / "projector_config.json").write_text(json.dumps({"0": {"1": {}, "2": {}}}))
    elif case == "no_layers":
        (ref / "projector_config.json").write_text(json.dumps({"0": {"1": {}}}))
    elif case in ("two_sources", "bad_edge"):
        cfg["0"]["1"]["1"] = [[0, 1], [1, 1]] if case == "two_sources" else ["x"]
        (ref / "projector_config.json").write_text(json.dumps(cfg))
    elif case == "wrong_class":
        (ref / "projector_1.json").write_text(json.dumps({**meta, "class": "AllInOneProjector"}))
    elif case in ("bad_init_args", "other_sizes", "other_heads"):
        key, value = {
            "bad_init_args": ("num_layers", 2),
            "other_sizes": ("hidden_dim", 32),
            "other_heads": ("source_num_heads", 7),
        }[case]
        (ref / "projector_1.json").write_text(json.dumps({**meta, "init_args": {**meta["init_args"], key: value}}))
    elif case == "not_a_folder":
        for f in ref.iterdir():
            f.unlink()
        ref.rmdir()
        ref.write_text("a file")
    elif case == "no_config":
        (ref / "projector_config.json").unlink()
    with pytest.raises(ConversionError, match=match) as info:
        import_reference(ref, _spec(models["receiver3"]), _spec(models["sharer_same_vocab"]))
    assert str(ref) in str(info.value)  # every conversion error names the file it is about


def test_output_folder_is_never_overwritten(models, reference_dir, tmp_path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    with pytest.raises(ConversionError, match="taken is not empty .* choose a new output folder"):
        convert_reference(reference_dir, tmp_path / "taken", str(models["receiver3"]), str(models["sharer_same_vocab"]))
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["mine.txt"]
