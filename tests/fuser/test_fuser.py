"""The fuser network: sizes, variants, gates, identity at initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Qwen2Config, Qwen3Config

from c2c import C2CFuser, FuserConfig, FuserGeometry, ModelSpec, fuser_size, gate_temperature
from c2c.alignment.layers import terminal_map
from c2c.fuser import LayerRows
from c2c.fuser.gates import gumbel_sigmoid, hard_gate
from c2c.testing.models import tiny_config


def _geometry(r_cfg, s_cfg) -> FuserGeometry:
    r, s = ModelSpec.from_config(r_cfg), ModelSpec.from_config(s_cfg)
    return FuserGeometry(r, s, terminal_map(r.kv_layers, s.kv_layers))


def test_parameter_count_of_the_paper_pair_without_allocating():
    receiver = Qwen3Config(
        hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128
    )
    sharer = Qwen2Config(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2)
    geometry = _geometry(receiver, sharer)
    size = fuser_size(FuserConfig(hidden_size=1024), geometry)
    assert size.parameters == 477_848_056
    assert len(size.parameters_per_layer) == 28
    assert size.bytes_bf16 == 2 * 477_848_056
    # About one receiver forward per fused token (0.6B params -> ~1.2 GFLOP); ours is ~0.96 GFLOP.
    assert 0.9e9 < size.flops_per_token < 1.0e9


@pytest.mark.parametrize("variant", ["full", "no_gate", "no_dynamic_weight", "projection_only"])
def test_meta_count_matches_allocated_module(variant):
    g = _geometry(tiny_config("qwen3", num_layers=3), tiny_config("llama", num_layers=2, num_kv_heads=1, head_dim=32))
    cfg = FuserConfig(hidden_size=32, intermediate_size=48, variant=variant)
    real = C2CFuser(cfg, g)
    assert fuser_size(cfg, g).parameters == sum(p.numel() for p in real.parameters())
    has_gate = variant in ("full", "no_dynamic_weight")
    assert all((lay.gate_logit is not None) == has_gate for lay in real.layers.values())
    assert (real.key.weight_out is not None) == (variant in ("full", "no_gate"))


def test_projection_only_reads_only_the_sharer():
    g = _geometry(tiny_config("qwen3", num_layers=2), tiny_config("llama", num_layers=2, num_kv_heads=1, head_dim=32))
    f = C2CFuser(FuserConfig(hidden_size=16, intermediate_size=16, variant="projection_only"), g).eval()
    assert f.key.input.in_features == 32  # sharer width only
    sk, sv = torch.randn(1, 1, 5, 32), torch.randn(1, 1, 5, 32)
    rk, rv = torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16)
    dk, _ = f.layers["0"](LayerRows(sk, sv, rk, rv))
    replaced = rk + dk
    dk2, _ = f.layers["0"](LayerRows(sk, sv, rk * 3, rv))  # receiver rows do not change the replacement
    torch.testing.assert_close(replaced, rk * 3 + dk2)


@pytest.mark.parametrize("family", ["full", "lowrank", "shared", "linear"])
def test_sharer_inputs_read_only_the_sharer_and_still_add_a_gated_weighted_correction(family):
    g = _geometry(tiny_config("qwen3", num_layers=2), tiny_config("llama", num_layers=2, num_kv_heads=1, head_dim=32))
    sizes = {"full": {"hidden_size": 16, "intermediate_size": 16}, "lowrank": {"rank": 8}}
    sizes["shared"] = {"shared_hidden_size": 8}
    both = C2CFuser(FuserConfig(family=family, **sizes.get(family, {})), g)
    f = C2CFuser(FuserConfig(family=family, inputs="sharer", **sizes.get(family, {})), g).eval()
    assert fuser_size(f.config, g).parameters < fuser_size(both.config, g).parameters  # narrower input
    assert f.num_open_gates() == 0 and f.key.weight_out is not None  # gates and dynamic weights kept
    f.set_gates(True)
    torch.manual_seed(0)
    sk, sv = torch.randn(1, 1, 5, 32), torch.randn(1, 1, 5, 32)
    rk, rv = torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16)
    dk, dv = f.layers["0"](LayerRows(sk, sv, rk, rv))
    dk3, dv3 = f.layers["0"](LayerRows(sk, sv, rk * 3, rv * 3))
    # The correction does not depend on the receiver rows, and it is added, not substituted.
    torch.testing.assert_close((dk, dv), (dk3, dv3))
    assert dk.abs().sum() > 0
    dk_other, _ = f.layers["0"](LayerRows(sk + torch.randn_like(sk), sv, rk, rv))
    assert not torch.allclose(dk, dk_other)  # it reads the sharer (another row, not a rescaled one: norms)
    with pytest.raises(ValueError, match="unknown fuser inputs"):
        FuserConfig(inputs="receiver")


def test_fresh_fuser_has_closed_gates_and_computes_nothing_at_inference():
    g = _geometry(tiny_config("qwen3", num_layers=2), tiny_config("qwen2", num_layers=3))
    f = C2CFuser(FuserConfig(hidden_size=16, intermediate_size=16), g).eval()
    assert f.active_layers() == []
    assert f.num_open_gates() == 0
    x = torch.randn(2, 2, 4, 16)
    assert f.layers["1"](LayerRows(x, x, x, x)) == (None, None)
    assert f({1: LayerRows(x, x, x, x)}, f.hard_gates()) == {1: (None, None)}
    f.set_gates(True)
    dk, dv = f.layers["1"](LayerRows(x, x, x, x))
    assert dk.dtype == torch.float32  # corrections are combined in fp32
    assert dk.shape == x.shape and dv.shape == x.shape and dk.abs().sum() > 0


def test_temperature_schedule_is_exponential_from_start_to_end():
    assert gate_temperature(0, 100) == pytest.approx(1.0)
    assert gate_temperature(100, 100) == pytest.approx(0.001)
    assert gate_temperature(50, 100) == pytest.approx(math.sqrt(0.001))
    assert gate_temperature(500, 100) == pytest.approx(0.001)


def test_gumbel_sigmoid_is_a_relaxed_bernoulli_of_sigmoid_logit():
    torch.manual_seed(0)
    logit = torch.tensor(0.7)
    hard = gumbel_sigmoid(logit, 1e-3, (20000,))
    # At low temperature the samples are ~0/1 with P(1) = sigmoid(logit): logistic noise, not Gumbel.
    assert ((hard < 0.01) | (hard > 0.99)).float().mean() > 0.99
    assert hard.round().mean().item() == pytest.approx(torch.sigmoid(logit).item(), abs=0.015)
    assert hard_gate(torch.tensor(0.0)) == 0 and hard_gate(torch.tensor(1e-6)) == 1


def test_training_gates_are_soft_and_differentiable():
    g = _geometry(tiny_config("qwen3", num_layers=2), tiny_config("qwen2", num_layers=2))
    f = C2CFuser(FuserConfig(hidden_size=16, intermediate_size=16, dropout=0.0), g).train()
    x = torch.randn(1, 2, 3, 16)
    dk, dv = f.layers["0"](LayerRows(x, x, x, x), temperature=0.5)
    (dk.sum() + dv.sum()).backward()
    assert (
        f.gate_logit.grad is not None and f.gate_logit.grad[0].abs().sum() > 0 and f.gate_logit.grad[1].abs().sum() == 0
    )


def test_config_validation_errors_name_the_fix():
    with pytest.raises(ValueError, match="unknown fuser variant"):
        FuserConfig(variant="bogus")
    with pytest.raises(ValueError, match="temperature"):
        FuserConfig(temperature_start=0.1, temperature_end=1.0)
    with pytest.raises(ValueError, match="unknown FuserConfig fields"):
        FuserConfig.from_dict({"hidden_size": 8, "colour": "red"})
    assert FuserConfig.from_dict(FuserConfig(layer_map={1: 0}).to_dict()).layer_map == {1: 0}


def test_input_noise_perturbs_training_only_and_scales_with_the_rows():
    g = _geometry(tiny_config("qwen3", num_layers=2), tiny_config("llama", num_layers=2, num_kv_heads=1, head_dim=32))
    cfg = dict(hidden_size=16, intermediate_size=16, dropout=0.0, variant="no_gate")
    torch.manual_seed(0)
    noisy = C2CFuser(FuserConfig(input_noise=0.5, **cfg), g)
    clean = C2CFuser(FuserConfig(**cfg), g)
    clean.load_state_dict(noisy.state_dict())
    x = torch.randn(1, 2, 4, 16)
    rows = LayerRows(torch.randn(1, 1, 4, 32), torch.randn(1, 1, 4, 32), x, x)
    ref = clean.train().layers["0"](rows, temperature=1.0)
    # In training the noise changes the corrections; twice the same call gives different samples.
    a, b = noisy.train().layers["0"](rows, temperature=1.0), noisy.layers["0"](rows, temperature=1.0)
    assert not torch.allclose(a[0], ref[0]) and not torch.allclose(a[0], b[0])
    # At inference the noisy fuser is exactly the clean one.
    for got, want in zip(noisy.eval().layers["0"](rows), clean.eval().layers["0"](rows)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # The noise is relative to each row's RMS: through a linear fuser, rows 1000x larger with the same noise
    # sample change the output exactly 1000x as much (absolute noise would change it as much).
    lin = C2CFuser(FuserConfig(family="linear", variant="projection_only", input_noise=0.5), g).train()
    big = LayerRows(rows.sharer_keys * 1000, rows.sharer_values * 1000, x, x)

    def change(r: LayerRows) -> torch.Tensor:
        torch.manual_seed(1)
        with_noise = lin.layers["0"](r, temperature=1.0)[0]
        lin.config.input_noise = 0.0
        without = lin.layers["0"](r, temperature=1.0)[0]
        lin.config.input_noise = 0.5
        return with_noise - without

    small_change, big_change = change(rows), change(big)
    assert small_change.abs().max() > 0
    torch.testing.assert_close(big_change, 1000 * small_change, rtol=1e-3, atol=1e-3)


def test_input_noise_must_be_non_negative():
    with pytest.raises(ValueError, match="input_noise"):
        FuserConfig(input_noise=-0.1)
    with pytest.raises(ValueError, match="input_noise"):
        FuserConfig(input_noise=float("nan"))
