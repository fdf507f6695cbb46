"""Fuser families: config, sizes (parameters and FLOPs against what runs), the stacked forward against each
layer alone, the per-layer state-dict layout, gradients, a fresh fuser's exact identity, save / load / resume."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from c2c import C2CFuser, C2CModel, FuserConfig, FuserGeometry, ModelSpec, fuser_size
from c2c.alignment.layers import terminal_map
from c2c.fuser import FAMILIES, VARIANTS, LayerRows
from c2c.testing.models import tiny_config, tiny_model
from c2c.testing.tokenizers import build_tokenizer

SMALL = {
    "full": dict(hidden_size=24, intermediate_size=40),
    "lowrank": dict(rank=8),
    "shared": dict(shared_hidden_size=16),
    "linear": {},
}


def config(family: str, variant: str = "full", **kw) -> FuserConfig:
    return FuserConfig(family=family, variant=variant, dropout=0.0, **{**SMALL[family], **kw})


def geometry(r_layers: int = 4, s_layers: int = 3) -> FuserGeometry:
    r = ModelSpec.from_config(tiny_config("qwen3", num_layers=r_layers))  # 2 KV heads x 16
    s = ModelSpec.from_config(tiny_config("llama", num_layers=s_layers, num_kv_heads=1, head_dim=32))
    return FuserGeometry(r, s, terminal_map(r.kv_layers, s.kv_layers))


def rows_for(g: FuserGeometry, lengths: dict[int, int], seed: int = 0) -> dict[int, LayerRows]:
    gen = torch.Generator().manual_seed(seed)
    hs, ds, hr, dr = g.sharer.num_kv_heads, g.sharer.head_dim, g.receiver.num_kv_heads, g.receiver.head_dim
    return {
        rl: LayerRows(*(torch.randn(1, h, n, d, generator=gen) for h, d in ((hs, ds), (hs, ds), (hr, dr), (hr, dr))))
        for rl, n in lengths.items()
    }


def opened(f: C2CFuser) -> C2CFuser:
    """``f`` with every gate open and non-trivial weights everywhere (as after training)."""
    f.set_gates(True)
    with torch.no_grad():
        for p in f.parameters():
            p.add_(0.1 * torch.randn_like(p))
        f.set_gates(True)
    return f


# ---------------------------------------------------------------------- config


def test_old_configs_load_as_the_full_family_and_new_ones_round_trip():
    old = FuserConfig().to_dict()
    for key in ("family", "rank", "shared_hidden_size", "inputs"):
        old.pop(key)
    assert FuserConfig.from_dict(old).family == "full" and FuserConfig.from_dict(old).inputs == "both"
    for family in FAMILIES:
        for c in (config(family, "no_gate"), config(family, inputs="sharer")):
            assert FuserConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert config("lowrank", inputs="sharer").size_label() == "lowrank, rank 8, sharer rows only"


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(family="tiny"), "unknown fuser family 'tiny'; choose one of full, lowrank, shared, linear"),
        (dict(rank=16), "rank=16 sizes family 'lowrank' but this fuser is family 'full'; set family='lowrank'"),
        (dict(family="lowrank", hidden_size=256), "hidden_size=256 sizes family 'full'.*sized by rank"),
        (dict(family="shared", rank=8), "rank=8 sizes family 'lowrank' but this fuser is family 'shared'"),
        (dict(family="linear", shared_hidden_size=64), "shared_hidden_size=64 sizes family 'shared'"),
        (dict(family="lowrank", rank=0), "rank must be positive"),
        (dict(family="shared", shared_hidden_size=-4), "shared_hidden_size must be positive"),
    ],
)
def test_bad_family_fields_are_refused_with_the_fix(fields, match):
    with pytest.raises(ValueError, match=match):
        FuserConfig(**fields)


def test_wrong_types_from_files_name_the_field():
    with pytest.raises(TypeError, match="field 'rank' = '16' has the wrong type"):
        FuserConfig.from_dict({"family": "lowrank", "rank": "16"}, source="fuser_config.json")
    with pytest.raises(TypeError, match="field 'family' = 3"):
        FuserConfig.from_dict({"family": 3})


# ---------------------------------------------------------------------- sizes


@pytest.mark.parametrize("inputs", ["both", "sharer"])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_size_matches_the_allocated_module_and_the_measured_flops(family, variant, inputs):
    g = geometry()
    cfg = config(family, variant, inputs=inputs)
    size = fuser_size(cfg, g)
    f = opened(C2CFuser(cfg, g)).eval()
    assert size.parameters == sum(p.numel() for p in f.parameters())
    assert size.family == family and set(size.parameters_per_layer) == set(g.layer_map)
    per_layer = {rl: lay.num_parameters() for rl, lay in ((int(k), v) for k, v in f.layers.items())}
    assert per_layer == size.parameters_per_layer
    assert size.parameters == sum(per_layer.values()) + size.shared_parameters
    assert (size.shared_parameters > 0) == (family == "shared")
    n_tokens = 7
    with FlopCounterMode(display=False) as counter:
        f(rows_for(g, dict.fromkeys(g.layer_map, n_tokens)))
    assert counter.get_total_flops() == size.flops_per_token * n_tokens


def test_compact_families_are_smaller_than_full_at_the_paper_shapes():
    from transformers import Qwen2Config, Qwen3Config

    from c2c.testing.models import QWEN2_5_0_5B_SHAPES, QWEN3_0_6B_SHAPES

    r, s = (
        ModelSpec.from_config(Qwen3Config(**QWEN3_0_6B_SHAPES)),
        ModelSpec.from_config(Qwen2Config(**QWEN2_5_0_5B_SHAPES)),
    )
    g = FuserGeometry(r, s, terminal_map(r.kv_layers, s.kv_layers))
    full = fuser_size(FuserConfig(), g)
    assert full.parameters == 477_848_056
    for cfg, at_least in [
        (FuserConfig(family="lowrank", rank=64), 50),
        (FuserConfig(family="shared", shared_hidden_size=128), 50),
        (FuserConfig(family="linear"), 50),
    ]:
        small = fuser_size(cfg, g)
        assert full.parameters / small.parameters > at_least, cfg.family
        assert full.flops_per_token / small.flops_per_token > 10, cfg.family


# ---------------------------------------------------------------------- forward


@pytest.mark.parametrize("inputs", ["both", "sharer"])
@pytest.mark.parametrize("family", FAMILIES)
def test_fresh_fuser_leaves_the_receiver_exactly_unchanged(family, inputs, tok_chatml):
    receiver = tiny_model("qwen3", vocab_size=len(tok_chatml), num_layers=3)
    sharer = tiny_model("qwen2", vocab_size=len(tok_chatml), num_layers=2, seed=1)
    model = C2CModel.from_models(
        receiver,
        sharer,
        fuser_config=FuserConfig(family=family, inputs=inputs, **SMALL[family]),
        receiver_tokenizer=tok_chatml,
        sharer_tokenizer=tok_chatml,
        seed=0,
    )
    assert model.fusers[0].active_layers() == []
    prompts = ["the cat sat on the mat", "a river"]
    fused = model.generate(prompts, max_new_tokens=4, mode="c2c", return_dict=True)
    alone = model.generate(prompts, max_new_tokens=4, mode="receiver", return_dict=True)
    assert fused.texts == alone.texts
    batch = model.encode(prompts)
    fused_cache, clean_cache = model.prefill_and_fuse(batch).cache, model.prefill_and_fuse(batch, fuse=False).cache
    for la, lb in zip(fused_cache.layers, clean_cache.layers):  # the caches themselves, bit for bit
        assert torch.equal(la.keys, lb.keys) and torch.equal(la.values, lb.values)
    opened(model.fusers[0])  # the same fuser with open gates does change them (the check above can fail)
    changed = model.prefill_and_fuse(batch).cache
    assert not all(torch.equal(la.keys, lb.keys) for la, lb in zip(changed.layers, clean_cache.layers))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    family=st.sampled_from(FAMILIES),
    lengths=st.lists(st.integers(1, 4), min_size=4, max_size=4),
    present=st.lists(st.booleans(), min_size=4, max_size=4),
    gates=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=4, max_size=4),
)
def test_stacked_forward_equals_each_layer_alone(family, lengths, present, gates):
    """Runs of layers with equal row counts are batched; layers absent, closed or of another length split the
    runs. Every layer's corrections equal those it computes alone (up to GEMM rounding)."""
    g = geometry()
    f = opened(C2CFuser(config(family), g)).eval()
    with torch.no_grad():
        f.gate_logit.copy_(torch.tensor([[1.0 if k else -1.0, 1.0 if v else -1.0] for k, v in gates]))
    rows = rows_for(g, {rl: n for rl, n, keep in zip(sorted(g.layer_map), lengths, present) if keep})
    hard = f.hard_gates()
    with torch.no_grad():
        together = f(rows, hard)
        for rl, r in rows.items():
            alone = f.layers[str(rl)](r, gates=hard[rl])
            for a, b, is_open in zip(together[rl], alone, hard[rl]):
                assert (a is None) == (b is None) == (not is_open)
                if a is not None:
                    assert a.dtype == torch.float32 and a.shape == r.receiver_keys.shape
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("inputs", ["both", "sharer"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_feature_major_inference_equals_the_row_major_forward(family, variant, inputs, monkeypatch):
    """Prompt fusion runs the paths feature-major (W @ x^T, faster with few rows); the corrections equal the
    row-major ones (training's layout) to float rounding, for a batch of two prompts and for one."""
    import c2c.fuser.modules as modules
    from c2c.fuser.stacked import is_feature_major

    g = geometry()
    f = opened(C2CFuser(config(family, variant, inputs=inputs), g)).eval()
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 2):
        rows = {
            rl: LayerRows(*(torch.randn(batch, *r.shape[1:], generator=gen) for r in lr))
            for rl, lr in rows_for(g, dict.fromkeys(g.layer_map, 5)).items()
        }
        seen: list[bool] = []
        hook = f.key.get_submodule("proj_out" if family != "linear" else "proj").register_forward_hook(
            lambda mod, args, out, seen=seen: seen.append(is_feature_major(args[0]) and is_feature_major(out))
        )
        with torch.no_grad():
            fm = f(rows, f.hard_gates())
            monkeypatch.setattr(modules, "FEATURE_MAJOR_MAX_ROWS", 0)
            rm = f(rows, f.hard_gates())
            monkeypatch.undo()
        hook.remove()
        assert seen == [family != "shared", False]  # the shared trunk is one row-major GEMM over all layers
        for rl in rows:
            for a, b in zip(fm[rl], rm[rl]):
                assert a is not None and b is not None and a.shape == b.shape == rows[rl].receiver_keys.shape
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_reaches_every_layer_and_every_shared_weight(family):
    g = geometry()
    f = opened(C2CFuser(FuserConfig(family=family, dropout=0.1, **SMALL[family]), g)).train()
    f.set_gate_temperature(0.5)
    out = f(rows_for(g, dict.fromkeys(g.layer_map, 3)))
    sum(d.square().sum() for pair in out.values() for d in pair if d is not None).backward()
    per_layer = set(f.per_layer_names)
    for name, p in f.named_parameters():
        assert p.grad is not None, name
        if name in per_layer:  # every layer's slice, K and V, gates included
            assert all(p.grad[i].abs().sum() > 0 for i in range(len(f.order))), name
        else:
            assert p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------- state dict


@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_is_per_layer_and_loads_strictly(family):
    g = geometry()
    f = opened(C2CFuser(config(family), g))
    state = {k: v.clone() for k, v in f.state_dict().items()}
    per_layer = [k for k in state if k.startswith("layers.")]
    assert {k.split(".")[1] for k in per_layer} == {str(rl) for rl in g.layer_map}
    assert f"layers.{max(g.layer_map)}.gate_logit" in state and state[
        f"layers.{max(g.layer_map)}.gate_logit"
    ].shape == (2,)
    assert all(k.startswith("layers.") for k in state) == (family != "shared")
    other = C2CFuser(config(family), g)
    other.load_state_dict(state, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(f.parameters(), other.parameters()))
    # one layer's view gives (a copy of) exactly that layer's tensors
    view = other.layers["1"].state_dict()
    assert view.keys() == {k[len("layers.1.") :] for k in per_layer if k.startswith("layers.1.")}
    assert all(
        torch.equal(view[k], state[f"layers.1.{k}"]) and view[k].untyped_storage().nbytes() == view[k].nbytes
        for k in view
    )

    missing = {
        k: v for k, v in state.items() if k != "layers.2.value.proj_out.weight" and k != "layers.2.value.proj.weight"
    }
    with pytest.raises(
        RuntimeError, match=r"Missing key\(s\) in state_dict: \"layers\.2\.value\.proj(_out)?\.weight\""
    ):
        other.load_state_dict(missing, strict=True)
    extra = {**state, "layers.9.gate_logit": torch.zeros(2)}
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"layers\.9\.gate_logit\""):
        other.load_state_dict(extra, strict=True)
    bad = {**state, "layers.0.gate_logit": torch.zeros(3)}
    with pytest.raises(RuntimeError, match=r"size mismatch for layers\.0\.gate_logit"):
        other.load_state_dict(bad, strict=True)


# ---------------------------------------------------------------------- save / load / train / resume


@pytest.fixture(scope="module")
def plain_pair():
    tok = build_tokenizer(None, 380, chat_template=None)
    receiver = tiny_model("qwen3", vocab_size=len(tok), num_layers=3)
    sharer = tiny_model("llama", vocab_size=len(tok), num_layers=2, seed=1)
    return receiver, sharer, tok


def _rows(n: int) -> list[dict[str, str]]:
    return [
        {"prompt": f"where is item {i} of box {i % 3}?", "response": f"item {i} is in box {(i * 7) % 5}."}
        for i in range(n)
    ]


def _model(pair, family: str) -> C2CModel:
    receiver, sharer, tok = pair
    return C2CModel.from_models(
        receiver,
        sharer,
        fuser_config=FuserConfig(family=family, dropout=0.1, **SMALL[family]),
        receiver_tokenizer=tok,
        sharer_tokenizer=tok,
        seed=0,
    )


def _train_config(path, **kw):
    from c2c.train import TrainConfig

    base = dict(
        output_dir=str(path),
        batch_size=2,
        max_steps=2,
        save_steps=0,
        learning_rate=3e-2,
        warmup_ratio=0.0,
        seed=3,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("family", ["lowrank", "shared", "linear"])
def test_train_save_and_load_every_family(family, plain_pair, tmp_path):
    from c2c.train import train

    receiver, sharer, tok = plain_pair
    before = {k: v.clone() for k, v in _model(plain_pair, family).fusers[0].state_dict().items()}
    result = train(_model(plain_pair, family), _rows(4), _train_config(tmp_path / "run"))
    trained = result.model.fusers[0]
    assert trained.config.family == family and result.global_step == 2
    assert all(not torch.equal(before[k], v) for k, v in trained.state_dict().items() if "norm" not in k), (
        "every weight trains"
    )
    loaded = C2CModel.from_pretrained(
        result.final_dir, receiver=receiver, sharer=sharer, receiver_tokenizer=tok, sharer_tokenizer=tok
    )
    assert loaded.fusers[0].config == trained.config
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), loaded.fusers[0].state_dict().values()))
    for f in (trained, loaded.fusers[0]):
        f.set_gates(True)
    prompts = ["where is item 3 of box 0?"]
    assert loaded.generate(prompts, max_new_tokens=4) == result.model.generate(prompts, max_new_tokens=4)
    assert f"family `{family}`" in (result.final_dir / "README.md").read_text()


def test_resume_restores_a_compact_fuser_exactly(plain_pair, tmp_path):
    """A run stopped after step 3 (checkpoint at 2) and resumed ends with the weights of an uninterrupted run
    (family "shared": per-layer and shared parameters, dropout on, Gumbel gates)."""
    from c2c.train import train

    whole = train(_model(plain_pair, "shared"), _rows(8), _train_config(tmp_path / "a", max_steps=4, save_steps=2))
    final = {k: v.clone() for k, v in whole.model.fusers[0].state_dict().items()}

    def crash(info) -> None:
        if info.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            _model(plain_pair, "shared"),
            _rows(8),
            _train_config(tmp_path / "b", max_steps=4, save_steps=2),
            callbacks=[crash],
        )
    resumed = train(
        _model(plain_pair, "shared"), _rows(8), _train_config(tmp_path / "b", max_steps=4, save_steps=2, resume=True)
    )
    assert resumed.resumed_from is not None and resumed.resumed_from.name.endswith("2")
    state = resumed.model.fusers[0].state_dict()
    assert state.keys() == final.keys() and all(torch.equal(final[k], state[k]) for k in final)


@pytest.mark.parametrize("family", ["lowrank", "shared", "linear"])
def test_compact_fusers_learn(family, plain_pair, tmp_path):
    """Gates held open (variant no_gate): the training loss falls as it does for the full fuser."""
    from c2c.train import train

    receiver, sharer, tok = plain_pair
    model = C2CModel.from_models(
        receiver,
        sharer,
        fuser_config=FuserConfig(family=family, variant="no_gate", dropout=0.0, **SMALL[family]),
        receiver_tokenizer=tok,
        sharer_tokenizer=tok,
        seed=0,
    )
    steps = []
    train(
        model,
        _rows(4),
        _train_config(tmp_path, max_steps=12, batch_size=4, learning_rate=1e-2),
        callbacks=[steps.append],
    )
    assert steps[-1].loss < steps[0].loss - 0.2, [s.loss for s in steps]
