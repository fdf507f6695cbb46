"""Saving and loading fusers; refusing mismatched pairs; corrupted files; reference-layout conversion."""

from __future__ import annotations

import json

import pytest
import torch

from c2c import C2CModel, FuserConfig
from c2c.convert import export_reference, import_reference
from c2c.fuser import LayerRows
from c2c.persistence import CONFIG_NAME, WEIGHTS_NAME
from c2c.testing.models import tiny_model

FUSER = FuserConfig(hidden_size=32, intermediate_size=32, dropout=0.0)
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory, tok_chatml, tok_llama3):
    """A receiver and a sharer saved to disk with their tokenizers, as a user's local checkpoints."""
    root = tmp_path_factory.mktemp("models")
    r = tiny_model("qwen3", num_layers=3, seed=1, vocab_size=len(tok_chatml) + 8)
    s = tiny_model("llama", num_layers=2, num_kv_heads=1, head_dim=32, seed=2, vocab_size=len(tok_llama3) + 8)
    r.save_pretrained(root / "receiver")
    tok_chatml.save_pretrained(root / "receiver")
    s.save_pretrained(root / "sharer")
    tok_llama3.save_pretrained(root / "sharer")
    return root


@pytest.fixture()
def trained(saved_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    r = AutoModelForCausalLM.from_pretrained(saved_models / "receiver")
    s = AutoModelForCausalLM.from_pretrained(saved_models / "sharer")
    model = C2CModel.from_models(
        r,
        s,
        fuser_config=FUSER,
        seed=0,
        receiver_tokenizer=AutoTokenizer.from_pretrained(saved_models / "receiver"),
        sharer_tokenizer=AutoTokenizer.from_pretrained(saved_models / "sharer"),
    )
    with torch.no_grad():  # an "opened" fuser with non-trivial weights, as after training
        model.fusers[0].set_gates(logit=0.5)
        for p in model.fusers[0].parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def test_round_trip_by_recorded_paths(trained, tmp_path):
    trained.save_pretrained(tmp_path / "fuser")
    files = sorted(p.name for p in (tmp_path / "fuser").iterdir())
    assert files == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
    cfg = json.loads((tmp_path / "fuser" / CONFIG_NAME).read_text())
    for role in (cfg["receiver"], cfg["sharers"][0]):
        assert {
            "name_or_path",
            "revision",
            "model_type",
            "num_layers",
            "num_kv_heads",
            "head_dim",
            "tokenizer_fingerprint",
        } <= set(role)
    assert cfg["versions"]["transformers"] and cfg["versions"]["c2c"]
    loaded = C2CModel.from_pretrained(tmp_path / "fuser")  # loads receiver and sharer from the recorded paths
    for a, b in zip(trained.fusers.state_dict().values(), loaded.fusers.state_dict().values()):
        assert torch.equal(a, b)
    convs = [[{"role": "user", "content": "hello there"}], [{"role": "user", "content": "2 + 2 ="}]]
    assert loaded.generate(convs, max_new_tokens=5) == trained.generate(convs, max_new_tokens=5)
    assert "C2C fuser" in (tmp_path / "fuser" / "README.md").read_text()


def test_loading_with_given_models_and_ids(trained, saved_models, tmp_path):
    trained.save_pretrained(tmp_path / "fuser")
    by_model = C2CModel.from_pretrained(tmp_path / "fuser", receiver=trained.receiver, sharer=trained.sharers[0])
    by_path = C2CModel.from_pretrained(
        str(tmp_path / "fuser"), receiver=str(saved_models / "receiver"), sharer=str(saved_models / "sharer")
    )
    assert by_model.generate(PROMPTS, max_new_tokens=4) == by_path.generate(PROMPTS, max_new_tokens=4)


def test_mismatched_and_swapped_pairs_are_refused(trained, tmp_path):
    trained.save_pretrained(tmp_path / "fuser")
    other = tiny_model("qwen3", num_layers=4, seed=5, vocab_size=trained.receiver.config.vocab_size)
    with pytest.raises(ValueError, match=r"different model pair:\n  receiver num_layers: recorded 3, got 4"):
        C2CModel.from_pretrained(tmp_path / "fuser", receiver=other, sharer=trained.sharers[0])
    with pytest.raises(ValueError, match="look swapped"):
        C2CModel.from_pretrained(tmp_path / "fuser", receiver=trained.sharers[0], sharer=trained.receiver)
    with pytest.raises(ValueError, match="look swapped"):
        C2CModel(trained.sharers[0], trained.receiver, trained.fusers[0])


def test_unknown_path_and_corrupted_files(trained, tmp_path):
    with pytest.raises(FileNotFoundError, match="no fuser folder"):
        C2CModel.from_pretrained(tmp_path / "nowhere", receiver=trained.receiver, sharer=trained.sharers[0])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="fuser_config.json is missing"):
        C2CModel.from_pretrained(tmp_path / "empty", receiver=trained.receiver, sharer=trained.sharers[0])
    folder = tmp_path / "fuser"
    trained.save_pretrained(folder)
    weights = folder / WEIGHTS_NAME
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        C2CModel.from_pretrained(folder, receiver=trained.receiver, sharer=trained.sharers[0])
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="corrupted or truncated"):
        C2CModel.from_pretrained(folder, receiver=trained.receiver, sharer=trained.sharers[0])
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        C2CModel.from_pretrained(folder, receiver=trained.receiver, sharer=trained.sharers[0])
    (folder / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        C2CModel.from_pretrained(folder, receiver=trained.receiver, sharer=trained.sharers[0])


def test_weights_load_strictly(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "fuser"
    trained.save_pretrained(folder)
    tensors = load_file(str(folder / WEIGHTS_NAME))
    tensors.pop(next(iter(tensors)))
    save_file(tensors, str(folder / WEIGHTS_NAME))
    with pytest.raises(ValueError, match="does not match its config"):
        C2CModel.from_pretrained(folder, receiver=trained.receiver, sharer=trained.sharers[0])


def test_save_is_atomic_and_keeps_other_files(trained, tmp_path):
    folder = tmp_path / "fuser"
    folder.mkdir()
    (folder / "trainer_state.json").write_text("{}")
    trained.save_pretrained(folder)
    assert (folder / "trainer_state.json").exists() and (folder / WEIGHTS_NAME).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fuser.")]  # no temp folder left


def _reference_fusion(state: dict, init: dict, sk, sv, rk, rv):
    """Independent re-implementation of the reference C2CProjector inference forward."""
    import torch.nn.functional as F

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    def block(x, p):
        return x + F.linear(
            F.gelu(F.linear(rms(x, state[p + "norm.weight"]), state[p + "w1.weight"])), state[p + "w2.weight"]
        )

    def path(pre, s, r):
        b, hs, n, ds = s.shape
        _, ht, _, dt = r.shape
        x = torch.cat([s.transpose(1, 2).reshape(b, n, -1), r.transpose(1, 2).reshape(b, n, -1)], -1)
        h = block(F.linear(x, state[pre + "_in.weight"], state[pre + "_in.bias"]), pre + "_mlp1.blocks.0.")
        p = h
        for i in range(init["num_layers"] - 2):
            p = block(p, f"{pre}_proj_mlp2.blocks.{i}.")
        proj = (
            F.linear(p, state[pre + "_proj_out.weight"], state[pre + "_proj_out.bias"])
            .view(b, n, ht, dt)
            .transpose(1, 2)
        )
        w = F.linear(
            block(h, pre + "_scalar_mlp2.blocks.0."),
            state[pre + "_scalar_head.weight"],
            state[pre + "_scalar_head.bias"],
        )
        w = torch.sigmoid(w.permute(0, 2, 1).unsqueeze(-1))
        gate = (state[pre + "_gate_logit"] > 0).float()
        return r + gate * w * proj

    return path("key", sk, rk), path("value", sv, rv)


def test_reference_layout_round_trip_is_numerically_identical(trained, tmp_path):
    fuser = trained.fusers[0]
    export_reference(fuser, tmp_path / "ref")
    assert (tmp_path / "ref" / "projector_config.json").exists()
    imported = import_reference(tmp_path / "ref", trained.receiver_spec, trained.sharer_specs[0])
    for a, b in zip(fuser.state_dict().items(), imported.state_dict().items()):
        assert a[0] == b[0] and torch.equal(a[1], b[1])
    # our layer fuser computes exactly what the reference projector computes
    init = json.loads((tmp_path / "ref" / "projector_0.json").read_text())["init_args"]
    state = torch.load(tmp_path / "ref" / "projector_0.pt", weights_only=True)
    torch.manual_seed(0)
    sk, sv = torch.randn(2, 1, 5, 32), torch.randn(2, 1, 5, 32)
    rk, rv = torch.randn(2, 2, 5, 16), torch.randn(2, 2, 5, 16)
    ref_k, ref_v = _reference_fusion(state, init, sk, sv, rk, rv)
    imported.eval()
    dk, dv = imported.layers["0"](LayerRows(sk, sv, rk, rv))
    torch.testing.assert_close(rk + dk, ref_k, rtol=0, atol=1e-6)
    torch.testing.assert_close(rv + dv, ref_v, rtol=0, atol=1e-6)
    # and a C2CModel built on the imported fuser generates what the original does
    model = C2CModel(
        trained.receiver,
        trained.sharers[0],
        imported,
        receiver_tokenizer=trained.receiver_tokenizer,
        sharer_tokenizers=trained.sharer_tokenizers[0],
    )
    assert model.generate(PROMPTS, max_new_tokens=5) == trained.generate(PROMPTS, max_new_tokens=5)


def test_reference_import_refuses_other_shapes(trained, tmp_path):
    export_reference(trained.fusers[0], tmp_path / "ref")
    with pytest.raises(ValueError, match="do not match the models"):
        import_reference(tmp_path / "ref", trained.sharer_specs[0], trained.receiver_spec)
    (tmp_path / "ref" / "projector_0.json").write_text(json.dumps({"class": "AllInOneProjector", "init_args": {}}))
    with pytest.raises(ValueError, match="not supported"):
        import_reference(tmp_path / "ref", trained.receiver_spec, trained.sharer_specs[0])
