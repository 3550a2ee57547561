"""How bake picks a layer's form: measured on the layer's last input where it ran, a MAC rule where it never
ran, plain convs only with ``factorised="never"``; the outputs are the same whichever form it takes."""

import pytest
import torch
from torch import nn

from njetify.bake import FactorisedConv2d, bake
from njetify.layers import NJetConv2d, TiedNJetConv2d
from njetify.layers import path_plan


def _layer(sigma, cin=8, cout=8):
    torch.manual_seed(0)
    return NJetConv2d(cin, cout, order=2, sigma=sigma)


def _fake_times(monkeypatch, faster: str):
    """time_call answers 1 ms for the ``faster`` form's module and 2 ms for the other."""
    def fake(run, device):
        module = run.__defaults__[0]
        return 1e-3 if isinstance(module, FactorisedConv2d) == (faster == "factorised") else 2e-3
    monkeypatch.setattr(path_plan, "time_call", fake)
    path_plan.clear_plans()


@pytest.mark.parametrize("faster", ["dense", "factorised"])
def test_a_layer_that_ran_takes_the_form_measured_faster(monkeypatch, faster):
    layer = _layer(2.0).eval()
    x = torch.randn(2, 8, 24, 24)
    with torch.no_grad():
        want = layer(x)  # the layer runs: its input shape is known
    _fake_times(monkeypatch, faster)
    baked = bake(nn.Sequential(layer))[0]
    assert isinstance(baked, FactorisedConv2d) == (faster == "factorised")
    if faster == "factorised":
        assert "measured faster" in baked.reason and "(2, 8, 24, 24)" in baked.reason
    torch.testing.assert_close(baked(x), want, rtol=1e-4, atol=1e-5)


def test_a_layer_that_never_ran_follows_the_mac_rule(monkeypatch):
    monkeypatch.setattr(path_plan, "time_call", lambda run, device: pytest.fail("timed a layer that never ran"))
    small, large = _layer(1.0), _layer(6.0)  # 5×5: 2× the factorised MACs; 25×25: far over FACTORISED_RATIO
    baked = bake(nn.Sequential(small, large))
    assert type(baked[0]) is nn.Conv2d and isinstance(baked[1], FactorisedConv2d)
    assert "multiply-adds" in baked[1].reason
    assert type(bake(nn.Sequential(small), factorised=1.5)[0]) is FactorisedConv2d  # a ratio of the user's


def test_never_gives_plain_convs_and_timing_off_gives_the_rule(monkeypatch):
    layer = _layer(6.0)
    with torch.no_grad():
        layer(torch.randn(1, 8, 30, 30))
    assert type(bake(nn.Sequential(layer), factorised="never")[0]) is nn.Conv2d
    monkeypatch.setenv("NJETIFY_PATH_TIMING", "0")
    monkeypatch.setattr(path_plan, "time_call", lambda run, device: pytest.fail("timed with timing off"))
    assert isinstance(bake(nn.Sequential(layer))[0], FactorisedConv2d)


def test_tied_branches_are_measured_on_their_own_input(monkeypatch):
    torch.manual_seed(0)
    tied = TiedNJetConv2d.from_convs([nn.Conv2d(8, 8, 3, padding=r, dilation=r) for r in (1, 4)], order=2)
    model = nn.ModuleList(tied.branches).eval()
    x = torch.randn(1, 8, 20, 20)
    with torch.no_grad():
        want = [b(x) for b in model]
    _fake_times(monkeypatch, "factorised")
    baked = bake(model)
    assert type(baked[0]) is nn.Conv2d  # 3×3: the dense filter is the cheaper one, nothing to time
    assert isinstance(baked[1], FactorisedConv2d) and "measured" in baked[1].reason
    for b, w in zip(baked, want):
        torch.testing.assert_close(b(x), w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", ["sometimes", 0, -2.0, True])
def test_a_bad_rule_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="factorised must be 'auto', 'never' or a positive"):
        bake(nn.Sequential(_layer(1.0)), factorised=bad)


def test_a_bake_decision_is_saved_with_the_model_and_a_loaded_model_bakes_without_timing(monkeypatch, tmp_path):
    import njetify

    torch.manual_seed(0)
    def make():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))

    model, _ = njetify.convert(make(), example_inputs=torch.randn(1, 3, 20, 20))
    with torch.no_grad():
        model[2].log_sigma.fill_(0.5)  # σ = 1.65: a 9×9 filter, timed at bake
        model(torch.randn(2, 3, 20, 20))
    _fake_times(monkeypatch, "factorised")
    assert isinstance(bake(model)[2], FactorisedConv2d)
    njetify.save(model, tmp_path / "m.safetensors")  # the bake decision travels with the path plans
    path_plan.clear_plans()
    monkeypatch.setattr(path_plan, "time_call", lambda run, device: pytest.fail("timed again after load"))
    loaded = njetify.load(tmp_path / "m.safetensors", model=make())
    loaded[2]._plan = model[2]._plan  # as after a forward on the same input
    assert isinstance(bake(loaded)[2], FactorisedConv2d)
