"""njetify.bake: baked models compute exactly what the converted ones do, at every input size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from njetify.bake import (
    Conv2dDynamicSame,
    FixedSubsample,
    bake,
    check_onnx,
    export_onnx,
    freeze_subsampling,
    save_baked,
)
from njetify.layers import NJetConv2d, SafeSubsample
from njetify.layers.tied import TiedNJetConv2d

SIZES = (7, 16, 33)


def _set_sigma(layer, value: float) -> None:
    with torch.no_grad():
        layer.log_sigma.fill_(float(torch.tensor(value).log()))


def _assert_same(a: nn.Module, b: nn.Module, channels: int = 3, sizes=SIZES) -> None:
    a.eval()
    b.eval()
    for s in sizes:
        x = torch.randn(2, channels, s, s)
        with torch.no_grad():
            ya, yb = a(x), b(x)
        assert ya.shape == yb.shape
        assert float((ya - yb).abs().max()) <= 1e-5, s


class Residual(nn.Module):
    def __init__(self, *mods):
        super().__init__()
        self.body = nn.Sequential(*mods)

    def forward(self, x):
        return self.body(x) + x


def test_njet_layers_become_plain_convs():
    torch.manual_seed(0)
    a = NJetConv2d(3, 6, order=3, sigma=0.5, trim=1)  # a converted padding=0 conv
    b = NJetConv2d(6, 6, order=2, sigma=0.8, groups=2, padding_mode="reflect")
    c = NJetConv2d(6, 4, order=3, sigma=[0.6, 0.7, 1.1, 0.9], sigma_per="channel")
    d = NJetConv2d(4, 4, order=2, sigma=0.5, stride=2, padding="dynamic_same")
    _set_sigma(a, 1.3)  # σ moved: 7x7 filter, trim kept
    model = nn.Sequential(a, nn.ReLU(), b, c, d)
    baked = bake(model)
    kinds = [type(m) for m in baked]
    assert kinds == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.Conv2d, Conv2dDynamicSame]
    assert baked[0].kernel_size == (7, 7) and baked[0].padding == (2, 2)
    assert not any("log_sigma" in k for k in baked.state_dict())
    assert isinstance(model[0], NJetConv2d)  # not in place by default
    _assert_same(model, baked)


def test_safe_subsample_becomes_fixed_resize_for_every_interpolation():
    torch.manual_seed(0)
    for interp in ("nearest", "bilinear", "area"):
        conv = NJetConv2d(3, 4, order=2, sigma=0.5)
        model = nn.Sequential(conv, SafeSubsample(conv, stride=2, interpolation=interp))
        _set_sigma(conv, 0.8)  # factor (1/2)^(0.8/0.5) ≈ 0.33: not an integer step
        baked = bake(model)
        assert isinstance(baked[1], FixedSubsample) and baked[1].factor == pytest.approx(model[1].factor)
        _assert_same(model, baked)


def test_tied_branches_and_residuals():
    torch.manual_seed(0)
    convs = [nn.Conv2d(4, 3, 3, padding=r, dilation=r) for r in (1, 2, 3)]
    tied = TiedNJetConv2d.from_convs(convs, order=2)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = NJetConv2d(3, 4, order=2, sigma=0.5)
            self.branches = nn.ModuleList(tied.branches)

        def forward(self, x):
            x = self.stem(x)
            return sum(b(x) for b in self.branches)

    model = nn.Sequential(Head(), Residual(NJetConv2d(3, 3, order=2, sigma=0.7)))
    with torch.no_grad():
        tied.log_sigma.add_(0.3)
    with pytest.warns(UserWarning, match="branches.2 \\(11x11\\)"):  # 11×11 on 4→3: 3× the factorised MACs
        baked = bake(model, factorised=2)  # the MAC rule at 2×, not a timing
    assert [type(b).__name__ for b in baked[0].branches] == ["Conv2d", "Conv2d", "FactorisedConv2d"]
    assert [b.kernel_size[0] for b in baked[0].branches[:2]] == [tied.kernel_size(k)[0] for k in range(2)]
    _assert_same(model, baked)


def test_bake_a_converted_model_and_inplace():
    from njetify.surgery import convert

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    model, _ = convert(net, order=3, example_inputs=torch.randn(1, 3, 16, 16))
    njet = [m for m in model.modules() if isinstance(m, NJetConv2d)]
    _set_sigma(njet[0], 0.9)
    _set_sigma(njet[1], 0.3)
    baked = bake(model)
    _assert_same(model, baked, sizes=(9, 16, 21))
    same = bake(model, inplace=True)
    assert same is model and not any(isinstance(m, (NJetConv2d, SafeSubsample)) for m in model.modules())
    _assert_same(model, baked, sizes=(16,))


def test_freeze_subsampling_original_gives_the_unconverted_sizes():
    conv = NJetConv2d(3, 4, order=2, sigma=0.5)
    model = nn.Sequential(conv, SafeSubsample(conv, stride=2))
    _set_sigma(conv, 1.0)
    x = torch.randn(1, 3, 15, 15)
    assert model(x).shape[-1] == 4  # ⌈15/4⌉ at σ = 1
    orig = freeze_subsampling(model, "original")
    assert isinstance(orig[0], NJetConv2d) and orig(x).shape[-1] == 8  # ⌈15/2⌉
    with pytest.raises(ValueError, match="at must be"):
        freeze_subsampling(model, "initial")


def test_errors_name_the_problem():
    with pytest.raises(TypeError, match="nn.Module"):
        bake("model")
    with pytest.raises(ValueError, match="factor"):
        FixedSubsample(0.0)
    with pytest.raises(ValueError, match="interpolation"):
        FixedSubsample(0.5, "cubic")

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.log_sigma = nn.Parameter(torch.zeros(1))

    with pytest.raises(ValueError, match=r"odd \(Odd\)"):
        bake(nn.ModuleDict({"odd": Odd()}))
    conv = NJetConv2d(3, 4, order=2, sigma=0.5)
    with pytest.raises(ValueError, match="bake the model first"):
        export_onnx(nn.Sequential(conv), "x.onnx", torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="example_input"):
        export_onnx(nn.Sequential(nn.ReLU()), "x.onnx", torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match=".pt2"):
        save_baked(nn.ReLU(), "model.onnx", torch.randn(1, 3, 8, 8))


def _small_converted():
    torch.manual_seed(0)
    conv = NJetConv2d(3, 4, order=2, sigma=0.5)
    model = nn.Sequential(conv, nn.ReLU(), SafeSubsample(conv, stride=2), NJetConv2d(4, 2, order=2, sigma=0.7))
    _set_sigma(conv, 0.75)
    return model.eval()


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    model = _small_converted()
    baked = bake(model)
    path = export_onnx(baked, tmp_path / "m.onnx", torch.randn(1, 3, 20, 20))
    assert path.is_file()
    x = torch.randn(3, 3, 20, 20)  # another batch size: the batch axis is dynamic
    assert check_onnx(path, baked, x) < 1e-5
    assert check_onnx(path, model, x) < 1e-5  # and equal to the converted model


def test_save_baked_pt(tmp_path):
    """The pickled baked module takes any input size (the .pt2 program is checked in test_cli's round trip)."""
    model = _small_converted()
    baked = bake(model)
    whole = torch.load(save_baked(baked, tmp_path / "m.pt", torch.randn(2, 3, 12, 12)), weights_only=False)
    for s in (12, 19):
        y = torch.randn(1, 3, s, s)
        with torch.no_grad():
            assert torch.equal(whole(y), model(y))


def test_large_filters_bake_factorised_with_identical_outputs_and_export(tmp_path):
    """σ = 4 on 32→32 (17×17 filter): the dense filter would cost ~9× the factorised MACs."""
    from njetify.bake import factorised_layers

    torch.manual_seed(0)
    big = NJetConv2d(16, 32, order=3, sigma=4.0, stride=2, trim=1, padding_mode="reflect")
    per_channel = NJetConv2d(32, 8, order=2, sigma=[3.0, 4.0] * 4, sigma_per="channel")
    same = NJetConv2d(8, 8, order=2, sigma=3.0, padding="dynamic_same", stride=2)
    small = NJetConv2d(8, 4, order=3, sigma=0.5)
    model = nn.Sequential(big, nn.ReLU(), per_channel, same, small).eval()
    with pytest.warns(UserWarning, match=r"3 layer\(s\) baked as FactorisedConv2d"):
        baked = bake(model, factorised=2)  # the MAC rule at 2× (8.2× for the 13×13 dynamic-same layer)
    kinds = [type(m).__name__ for m in baked]
    assert kinds == ["FactorisedConv2d", "ReLU", "FactorisedConv2d", "FactorisedConv2d", "Conv2d"]
    assert [p for p, _ in factorised_layers(baked)] == ["0", "2", "3"]
    assert baked[2].order == "mix_first" and "multiply-adds" in baked[0].reason
    assert not any("log_sigma" in k for k in baked.state_dict())
    _assert_same(model, baked, channels=16, sizes=(33, 40))
    x = torch.randn(1, 16, 40, 40)
    program = torch.export.export(baked, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), baked(x))
    if pytest.importorskip("onnxruntime", reason="onnxruntime not installed"):
        path = export_onnx(baked, tmp_path / "f.onnx", x)
        assert check_onnx(path, model, x) < 1e-4


def test_tied_branches_with_large_filters_bake_factorised():
    torch.manual_seed(0)
    convs = [nn.Conv2d(32, 16, 3, padding=r, dilation=r) for r in (1, 12)]
    tied = TiedNJetConv2d.from_convs(convs, order=2)
    model = nn.ModuleList(tied.branches)
    with pytest.warns(UserWarning, match="FactorisedConv2d"):
        baked = bake(model)
    assert type(baked[0]) is nn.Conv2d and type(baked[1]).__name__ == "FactorisedConv2d"
    x = torch.randn(2, 32, 30, 30)
    with torch.no_grad():
        for b, m in zip(baked, model):
            torch.testing.assert_close(b(x), m(x), atol=1e-5, rtol=1e-4)
