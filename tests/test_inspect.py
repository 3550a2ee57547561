"""njetify.summary: feature-map sizes, receptive fields, σ, MACs and plots of a converted model."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from njetify.layers import NJetConv2d, SafeSubsample
from njetify.summary import compare_models, count_macs, default_input_size, parse_input_size, summarize
from njetify.summary.trace import RFTracker


def test_parse_input_size():
    assert parse_input_size("3x32x32") == (3, 32, 32)
    assert parse_input_size(" 1×28×28 ") == (1, 28, 28)
    assert parse_input_size([3, 8, 9]) == (3, 8, 9)
    for bad in ("3x32", "32", "axbxc", "3x0x32", "3x32x32x1", ""):
        with pytest.raises(ValueError, match="CxHxW"):
            parse_input_size(bad)


def test_receptive_field_recurrence():
    """conv3 → maxpool2 → dilated conv3 (d=2) → stride-2 slice → bilinear ×2: RF 3, 4, 12, 12, 16."""
    conv1 = nn.Conv2d(1, 2, 3, padding=1)
    conv2 = nn.Conv2d(2, 2, 3, padding=2, dilation=2)
    x = torch.randn(1, 1, 32, 32)
    tracker = RFTracker(x)
    with torch.no_grad(), tracker:
        a = conv1(x)
        b = F.max_pool2d(a, 2)
        c = conv2(b)
        d = c[..., ::2, ::2]
        e = F.relu(d) + d
        f = F.interpolate(e, scale_factor=2, mode="bilinear")
    got = [tracker.get(t) for t in (a, b, c, d, e, f)]
    assert [s.rf[0] for s in got] == [3, 4, 12, 12, 12, 16]
    assert [s.jump[1] for s in got] == [1, 2, 2, 4, 4, 2]
    assert tracker.get(torch.randn(1, 1, 4, 4)) is None  # unrelated tensors have no state


def test_receptive_field_takes_the_larger_branch_and_rect_kernels():
    x = torch.randn(1, 2, 16, 16)
    w = torch.randn(2, 2, 5, 1)
    tracker = RFTracker(x)
    with torch.no_grad(), tracker:
        y = F.conv2d(x, w, padding=(2, 0)) + x  # a residual add sees both branches
    assert tracker.get(y).rf == (5, 1)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = NJetConv2d(3, 4, order=2, sigma=0.5)
        self.down = SafeSubsample(self.conv1, stride=2, source_name="conv1")
        self.conv2 = NJetConv2d(4, 4, order=2, sigma=0.5)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = self.conv2(self.down(self.conv1(x)))
        return self.head(x.mean((2, 3)))


def test_summarize_learned_vs_original():
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        model.conv1.log_sigma.fill_(0.0)  # σ = 1: 5x5 filter, factor (1/2)^(1/0.5) = 1/4
    model.train()
    s = summarize(model, "3x17x17")
    assert model.training  # mode restored
    rows = {r.path: r for r in s.layers}
    assert [r.path for r in s.layers] == ["conv1", "down", "conv2"]  # execution order
    c1, down, c2 = rows["conv1"], rows["down"], rows["conv2"]
    assert (c1.kind, c1.sigma, c1.size, c1.out_size, c1.rf) == ("njet", pytest.approx(1.0), 5, (17, 17), (5, 5))
    assert down.kind == "subsample" and down.factor == pytest.approx(0.25) and down.source == "conv1"
    assert down.out_size == (5, 5) and down.out_size_original == (9, 9)
    assert c2.rf == (5 + 2 * 4, 5 + 2 * 4) and c2.rf_original == (5 + 2 * 2, 5 + 2 * 2)
    assert s.output_shape == (1, 3) and len(s.njet_layers) == 2
    assert s.params == sum(p.numel() for p in model.parameters())
    assert s.macs == 17 * 17 * 4 * 3 * 25 + 5 * 5 * 4 * 4 * 9 + 4 * 3
    json.dumps(s.to_dict())  # plain data


def test_summary_table_fits_80_columns():
    from rich.console import Console

    con = Console(width=80, record=True, no_color=True)
    con.print(summarize(Tiny(), (3, 16, 16)).table())
    text = con.export_text()
    assert "conv1" in text and "subsample ×0.5" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_count_macs_and_compare_models():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, groups=1), nn.Conv2d(8, 8, 3, padding=1, groups=4),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    x = torch.randn(1, 3, 10, 10)
    assert count_macs(net, x) == 100 * 8 * 27 + 100 * 8 * 2 * 9 + 8 * 5
    same = compare_models(net, net, torch.randn(2, 3, 10, 10))
    assert same.max_abs_diff == 0 and same.macs_before == same.macs_after and same.output_shape_after == (2, 5)


def test_default_input_size():
    import njetify

    assert default_input_size(njetify.create_model("resnet32")) == (3, 32, 32)
    assert default_input_size(njetify.create_model("resnet20", in_chans=1)) == (1, 32, 32)
    m = nn.Conv2d(3, 4, 3)
    m.pretrained_cfg = {"input_size": (3, 288, 288)}
    assert default_input_size(m) == (3, 288, 288)
    m.njetify_meta = {"input_shapes": [[1, 3, 40, 48]]}
    assert default_input_size(m) == (3, 40, 48)
    assert default_input_size(nn.Conv2d(5, 4, 3)) == (5, 224, 224)


def test_plots(tmp_path):
    from njetify.plots import plot_filters, plot_summary

    model = Tiny()
    s = summarize(model, (3, 16, 16))
    paths = plot_summary(s, model, tmp_path, layer="conv2")
    assert [p.name for p in paths] == ["sigma_layers.png", "sizes.png", "filters_conv2.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    with pytest.raises(ValueError, match="layer must be"):
        plot_summary(s, model, tmp_path, layer="head")
    with pytest.raises(TypeError, match="N-Jet layer"):
        plot_filters(nn.Conv2d(1, 1, 3), tmp_path / "x.png")
    with pytest.raises(ValueError, match="in_channel"):
        plot_filters(model.conv1, tmp_path / "x.png", in_channel=3)


def test_original_network_sizes_and_receptive_field():
    """s₀ is the replaced kernel's size and RF₀ the original network's receptive field, whatever σ learned."""
    import njetify

    torch.manual_seed(0)
    original = nn.Sequential(nn.Conv2d(3, 4, 5, padding=2), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                             nn.Conv2d(4, 4, 3, padding=2, dilation=2), nn.AdaptiveAvgPool2d(1))
    from njetify.recipes import resolve_recipe

    no_gate = resolve_recipe(max_fit_error=float("inf"))  # random 5×5 and dilated kernels fit poorly in weight space
    net, _ = njetify.convert(original, recipe=no_gate, example_inputs=torch.randn(1, 3, 24, 24))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, NJetConv2d):
                m.log_sigma.add_(0.3)  # every σ grew: larger filters, smaller maps
    s = summarize(net, (3, 24, 24))
    njet = s.njet_layers
    assert [r.size_original for r in njet] == [5, 3, 5] and [r.sigma0 for r in njet] == [1.0, 0.5, 1.0]
    assert all(r.size > r.size_original for r in njet)
    x = torch.randn(1, 3, 24, 24)
    tracker = RFTracker(x)
    with torch.no_grad(), tracker:
        y = original[:4](x)
    assert s.layers[-2].rf_original == tracker.get(y).rf  # the last conv: RF₀ = the original network's RF
    assert s.layers[-2].rf[0] > s.layers[-2].rf_original[0]
