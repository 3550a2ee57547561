"""The cost budget: caps planned at conversion hold while σ learns, survive save/load, and bad budgets fail early."""

import dataclasses
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import njetify
from njetify.budget import BudgetError, count_per_sample, macs_now
from njetify.layers import sigma_layers
from njetify.layers.sizes import refresh_sizes
from njetify.models import create_model
from njetify.recipes import load_recipe
from njetify.train import fit

X = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def _net():
    torch.manual_seed(0)
    return create_model("resnet20", in_chans=1, num_classes=10)


def _exact_ratio(converted, original) -> float:
    """MACs counted by running both models (dense taps), converted ÷ original."""
    return count_per_sample(converted, X)[0] / count_per_sample(original, X)[0]


def _scale_sigma(model, factor):
    params = {id(p): p for p in (m.scale_parameter() for m in sigma_layers(model).values())}
    with torch.no_grad():
        for p in params.values():
            p.add_(torch.log(torch.tensor(factor)))
    refresh_sizes(model)


def test_sigma0_keep_mode_costs_the_original():
    net = _net()
    converted, report = njetify.convert(net, example_inputs=X, subsample="keep")
    assert report.macs["after"] == report.macs["before"]
    assert converted.njetify_costs.minimum == pytest.approx(1.0)
    assert macs_now(converted) == pytest.approx(_exact_ratio(converted, net) * report.macs["before"], rel=1e-9)


@pytest.mark.parametrize("mode", ["keep", "safe"])
def test_budget_holds_whatever_sigma_does(mode):
    net = _net()
    converted, report = njetify.convert(net, example_inputs=X, subsample=mode, budget=1.3)
    assert report.macs["ceiling"] <= 1.3
    caps = report.macs["caps"]
    assert min(caps.values()) == 3 and max(caps.values()) > 3  # the budget is spent, not wasted
    for factor in (3.0, 20.0, 0.3):  # σ grows past every cap; then shrinks (safe: maps must not grow)
        _scale_sigma(converted, factor)
        assert _exact_ratio(converted, net) <= 1.3 + 1e-9
        assert macs_now(converted) <= 1.3 * report.macs["before"] + 1e-3
    if mode == "safe":
        assert converted(X).shape == net(X).shape


def test_budget_below_the_minimum_names_it():
    with pytest.raises(BudgetError, match=r"needs: 1\.\d+× .*at least 1\.\d\d"):
        njetify.convert(_net(), example_inputs=X, subsample="safe", budget=0.5)
    with pytest.raises(ValueError, match="budget"):
        njetify.convert(_net(), example_inputs=X, budget=-1)
    with pytest.raises(BudgetError, match="example_inputs"):
        njetify.convert(_net(), budget=1.5)


def test_growth_without_budget_warns():
    recipe = dataclasses.replace(load_recipe("default"), sigma_init=1.0, max_fit_error=None)  # 5×5 filters
    with pytest.warns(UserWarning, match=r"grows the MACs by \d+%.*budget"):
        _, report = njetify.convert(_net(), example_inputs=X, subsample="keep", recipe=recipe)
    assert report.macs["after"] > 2 * report.macs["before"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        recipe = dataclasses.replace(recipe, budget=2.0)
        with pytest.raises(BudgetError, match="at least"):  # σ₀ = 1 needs 25/9 of the taps
            njetify.convert(_net(), example_inputs=X, subsample="keep", recipe=recipe)


def test_budget_survives_save_and_load_and_finetune_budget_is_recorded(tmp_path):
    net = _net()
    converted, _ = njetify.convert(net, example_inputs=X, subsample="keep", budget=1.5)
    path = njetify.save(converted, tmp_path / "a.safetensors")
    loaded = njetify.load(path)
    caps = {p: m.max_size for p, m in sigma_layers(converted).items()}
    assert {p: m.max_size for p, m in sigma_layers(loaded).items()} == caps
    # a budget set after conversion (finetune --budget) is saved with the model
    njetify.set_budget(loaded, 1.2)
    tighter = {p: m.max_size for p, m in sigma_layers(loaded).items()}
    assert tighter != caps and all(tighter[p] <= caps[p] for p in caps)
    again = njetify.load(njetify.save(loaded, tmp_path / "b.safetensors"))
    assert {p: m.max_size for p, m in sigma_layers(again).items()} == tighter
    njetify.set_budget(again, 1.5)  # a larger budget lifts the caps again
    assert {p: m.max_size for p, m in sigma_layers(again).items()} == caps


def test_history_records_macs_within_budget():
    converted, report = njetify.convert(_net(), example_inputs=X, subsample="keep", budget=1.3)
    data = TensorDataset(torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,)))
    hist = fit(converted, data, data, epochs=1, batch_size=8, lr=0.01, sigma_lr=2.0, progress=False,
               evaluate_first=False)
    limit = 1.3 * report.macs["before"]
    assert hist.meta["budget"] == 1.3 and hist.meta["macs_original"] == pytest.approx(report.macs["before"])
    assert len(hist.steps) == 4 and all(0 < p["macs"] <= limit for p in hist.steps)
    assert 0 < hist.epochs[-1]["macs"] <= limit
    assert any(m.log_sigma.detach().exp().max() > 1.0 for m in sigma_layers(converted).values())  # σ did move


def test_tied_head_counts_every_branch_at_its_cap():
    class Head(nn.Module):  # summed dilated branches: a DeepLab-style ASPP head
        def __init__(self):
            super().__init__()
            self.b = nn.ModuleList(nn.Conv2d(4, 6, 3, padding=r, dilation=r) for r in (1, 2, 3))

        def forward(self, x):
            return sum(m(x) for m in self.b)

    x = torch.randn(1, 4, 24, 24)
    converted, report = njetify.convert(Head(), example_inputs=x, subsample="keep", budget=40.0)
    table = converted.njetify_costs
    tied = [layer for layer in table.layers if len(layer.sides) > 1]
    assert tied, "the three dilated branches should be one tied head"
    assert report.macs["ceiling"] <= 40.0
    _scale_sigma(converted, 10.0)
    assert count_per_sample(converted, x)[0] <= 40.0 * report.macs["before"] + 1e-6


def test_per_axis_layers_count_their_filter_area():
    class Inception(nn.Module):  # 1×7 then 7×1 (per-axis σ: the flat axis stays 1 px)
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 6, (1, 7), padding=(0, 3))
            self.b = nn.Conv2d(6, 6, (7, 1), padding=(3, 0))

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    x = torch.randn(1, 3, 20, 20)
    net = Inception()
    converted, report = njetify.convert(net, example_inputs=x, subsample="keep", budget=2.0)
    table = converted.njetify_costs
    assert sorted(layer.sides for layer in table.layers) == [((1, 7),), ((7, 1),)]
    assert table.minimum == pytest.approx(1.0, rel=1e-6)
    _scale_sigma(converted, 5.0)
    assert count_per_sample(converted, x)[0] <= 2.0 * report.macs["before"] * (1 + 1e-9)
