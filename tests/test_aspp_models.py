"""ASPP detection and tying on the real DeepLab models (random weights), and in the pipeline."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from njetify import basis as B
from njetify.layers.tied import TiedNJetBranch, TiedNJetConv2d
from njetify.models.deeplabv2 import deeplabv2_resnet101
from njetify import tie_aspp


def _out(y):
    return y["out"] if isinstance(y, dict) else y


def _heads(report, action="tied"):
    return [r for r in report.select("aspp") if r.action == action]


def _check_tied(model, x, report, *, path, rates, branch_params, k):
    """One tied head with the expected rates, parameter count, shapes and σ gradients."""
    tied_rows = _heads(report)
    assert len(tied_rows) == 1, str(report)
    row = tied_rows[0]
    assert row.path == path and row.extra["rates"] == list(rates) and row.dilation == tuple(rates)
    assert row.extra["sigma0"] == [r / 2 for r in rates]  # σ₀ = d·(k−1)/(2·extent) with k=3, extent 2
    assert row.params_before == branch_params
    owner = model.get_submodule(row.extra["branches"][0]).owner
    assert isinstance(owner, TiedNJetConv2d) and owner.num_branches == k
    assert row.params_after == owner.num_params()
    assert all(isinstance(model.get_submodule(b), TiedNJetBranch) for b in row.extra["branches"])
    branch_rows = [r for r in report.select("conv", "converted") if r.extra.get("head") == path]
    assert [r.path for r in branch_rows] == row.extra["branches"]  # one ordinary conv row per branch
    model.train()
    y = _out(model(x))
    y.square().mean().backward()
    g = owner.log_sigma.grad
    assert g is not None and torch.all(torch.isfinite(g)) and torch.all(g != 0)
    return y, owner


@pytest.fixture(scope="module")
def deeplabv2():
    torch.manual_seed(0)
    return deeplabv2_resnet101(num_classes=21)


def test_deeplabv2_head(deeplabv2):
    model = deeplabv2
    x = torch.randn(2, 3, 33, 33)
    model.eval()
    with torch.no_grad():
        before = model(x).shape
    model, report = tie_aspp(model, order=3)
    nf = B.num_basis(3)
    y, _ = _check_tied(model, x, report, path="base.aspp", rates=(6, 12, 18, 24),
                       branch_params=4 * 21 * 2048 * 9 + 4 * 21, k=4)
    (row,) = _heads(report)
    assert row.params_after == nf * 21 * 2048 + 4 + 4 * 21
    assert row.extra["merge"] == "sum" and row.extra["sizes"] == [13, 25, 37, 49]
    assert y.shape == before
    keys = [k for k in model.state_dict() if ".aspp." in k]
    assert keys == ["base.aspp.c0.tied.alpha", "base.aspp.c0.tied.log_sigma", "base.aspp.c0.tied.bias"]


def test_deeplabv2_msc_one_head():
    torch.manual_seed(0)
    m = deeplabv2_resnet101(num_classes=4, msc=True)
    m, report = tie_aspp(m)
    assert [r.path for r in report.select("aspp")] == ["base.aspp"] and _heads(report)


@pytest.mark.parametrize("name", ["deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50",
                                  pytest.param("deeplabv3_resnet101", marks=pytest.mark.slow)])
def test_torchvision_deeplabv3(name):
    import torchvision.models.segmentation as seg

    torch.manual_seed(0)
    model = getattr(seg, name)(weights=None, weights_backbone=None, num_classes=5)
    cin = model.classifier[0].convs[1][0].in_channels
    x = torch.randn(2, 3, 33, 33)
    model.eval()
    with torch.no_grad():
        before = _out(model(x)).shape
    model, report = tie_aspp(model)
    y, _ = _check_tied(model, x, report, path="classifier.0.convs", rates=(12, 24, 36),
                       branch_params=3 * 256 * cin * 9, k=3)
    (row,) = _heads(report)
    assert row.extra["merge"] == "concat" and y.shape == before
    assert row.params_after == 10 * 256 * cin + 3  # bias-free branches: α + 3 σ
    assert isinstance(model.classifier[0].convs[1][1], nn.BatchNorm2d)  # per-branch BN kept


@pytest.mark.parametrize("arch,path", [("DeepLabV3", "decoder.aspp.convs"), ("DeepLabV3Plus", "decoder.aspp.0.convs")])
def test_smp_deeplab(arch, path):
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    model = getattr(smp, arch)(encoder_name="resnet18", encoder_weights=None, classes=3)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        before = model(x).shape
    model, report = tie_aspp(model)
    separable = arch == "DeepLabV3Plus"
    params = 3 * 512 * 9 if separable else 3 * 256 * 512 * 9
    y, owner = _check_tied(model, x, report, path=path, rates=(12, 24, 36), branch_params=params, k=3)
    assert y.shape == before
    if separable:  # the depthwise part is tied, the pointwise conv stays
        assert owner.groups == 512 and isinstance(model.get_submodule(f"{path}.1.0.1"), nn.Conv2d)


class _Head(nn.Module):
    """Summed dilated branches ``b.*``; with ``unused`` the last one is defined but never called;
    with ``odd`` one more branch differs in out_channels."""

    def __init__(self, odd=False, unused=False, same_rate=False):
        super().__init__()
        rates = (2, 2, 3) if same_rate else (1, 2, 3)
        self.b = nn.ModuleList(nn.Conv2d(4, 6, 3, padding=r, dilation=r) for r in rates)
        self.used = len(rates)
        if odd:
            self.b.append(nn.Conv2d(4, 7, 3, padding=4, dilation=4))
            self.used += 1
        if unused:
            self.b.append(nn.Conv2d(4, 6, 3, padding=5, dilation=5))
        self.odd = odd

    def forward(self, x):
        outs = [m(x) for m in self.b[: self.used]]
        if self.odd:
            return sum(outs[:-1]) + outs[-1][:, :6]
        return sum(outs)


def test_unused_and_mismatched_branches_are_reported():
    model, report = tie_aspp(_Head(odd=True, unused=True))
    (row,) = report.select("aspp")
    assert row.action == "tied" and row.extra["branches"] == ["b.0", "b.1", "b.2"]
    reasons = dict(row.extra["skipped"])
    assert "out_channels" in reasons["b.3"] and "never runs" in reasons["b.4"]
    assert isinstance(model.b[3], nn.Conv2d) and isinstance(model.b[4], nn.Conv2d)
    # str(report) wraps at 100 columns: compare with the line breaks read as spaces
    assert "never runs" in row.reason and "never runs" in " ".join(str(report).split())


def test_heads_that_cannot_be_tied():
    class TwoDiffer(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 6, 3, padding=1)
            self.b = nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2)

        def forward(self, x):
            return torch.cat([self.a(x), self.b(x)], 1)

    with pytest.warns(UserWarning, match="no ASPP head"):
        _, report = tie_aspp(TwoDiffer())
    (row,) = report.select("aspp")
    assert row.action == "skipped" and "groups" in row.reason
    with pytest.warns(UserWarning, match="no ASPP head"):
        _, report = tie_aspp(_Head(same_rate=True))
    (row,) = report.select("aspp")
    assert row.action == "skipped" and "rate" in row.reason


def test_no_aspp_warns():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=2, dilation=2))
    with pytest.warns(UserWarning, match="no ASPP head"):
        out, report = tie_aspp(model)
    assert report.select("aspp") == [] and out is not model and isinstance(out[2], nn.Conv2d)
    with pytest.warns(UserWarning, match="no ASPP head"):
        assert tie_aspp(model, inplace=True)[0] is model


def test_data_aware_tying_reports_output_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AvgPool2d(3, 1, 1), _Head())
    calib = [torch.randn(2, 3, 16, 16) for _ in range(2)]
    ref = [model(x).detach() for x in calib]
    ws, report_ws = tie_aspp(model)
    da, report_da = tie_aspp(model, calibration_data=calib)
    (row_ws,), (row_da,) = _heads(report_ws), _heads(report_da)
    assert row_da.extra["fit"] == "output-matching" and row_ws.extra["fit"] == "weight-space"
    assert 0 <= row_da.error_after < row_da.error_before and row_ws.error_after is None

    def err(m):
        with torch.no_grad():
            return sum(float((m(x) - r).norm() / r.norm()) for x, r in zip(calib, ref))

    assert err(da) < err(ws)


def test_pipeline_ties_with_recipe_and_warns_without_aspp():
    import njetify

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _Head())
    conv, report = njetify.convert(model, recipe="paper-deeplabv2-aspp", example_inputs=torch.randn(1, 3, 12, 12))
    rows = report.select("aspp")
    head = [r for r in rows if r.path == "1.b"]
    assert len(head) == 1 and head[0].action == "tied" and head[0].dilation == (1, 2, 3)
    assert not [r for r in rows if r.action == "skipped"]
    assert head[0].params_before == 3 * (6 * 4 * 9 + 6) and head[0].params_after == 10 * 6 * 4 + 3 + 18
    assert {r.path for r in report.select("conv", "converted")} == {"1.b.0", "1.b.1", "1.b.2"}
    assert isinstance(conv.get_submodule("1.b.1"), TiedNJetBranch)
    assert isinstance(conv.get_submodule("0"), nn.Conv2d)  # convs: false — backbone untouched
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, report = njetify.convert(nn.Sequential(nn.Conv2d(3, 4, 3)), recipe="paper-deeplabv2-aspp")
    assert any("no ASPP head" in str(w.message) for w in caught)
    assert any("no ASPP head" in n for n in report.notes)


@pytest.mark.parametrize("msc", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_create_model_with_kazuto_checkpoint_then_convert(tmp_path, msc):
    """``create_model("deeplabv2_resnet101", weights=PATH)`` + ``convert(recipe="paper-deeplabv2-aspp")``."""
    import njetify
    from njetify.models import create_model

    torch.manual_seed(0)
    ckpt = deeplabv2_resnet101(num_classes=21, msc=True).state_dict()  # kazuto1011 keys: base.…
    path = tmp_path / "deeplabv2_resnet101_msc-vocaug.pth"
    torch.save(ckpt, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = create_model("deeplabv2_resnet101", weights=path, msc=msc)
    assert torch.equal(model.base.aspp.c2.weight, ckpt["base.aspp.c2.weight"])
    x = torch.randn(1, 3, 33, 33)
    conv, report = njetify.convert(model, recipe="paper-deeplabv2-aspp", example_inputs=x)
    (head,) = [r for r in report.select("aspp") if r.path == "base.aspp"]
    assert head.action == "tied" and head.params_before == 4 * 21 * 2048 * 9 + 4 * 21
    assert head.params_after == 10 * 21 * 2048 + 4 + 4 * 21
    assert report.params_before - report.params_after == head.params_before - head.params_after
    assert {r.extra.get("head") for r in report.select("conv", "converted")} == {"base.aspp"}  # backbone untouched
    conv.eval()
    with torch.no_grad():
        assert conv(x).shape == (1, 21, 5, 5)


@pytest.mark.slow
def test_tied_model_saves_and_loads_with_learned_sigma(tmp_path):
    """``njetify.save`` / ``njetify.load`` rebuild the tied head; a moved σ comes back exactly."""
    import njetify
    from njetify.models import create_model

    torch.manual_seed(0)
    model = create_model("tv:deeplabv3_mobilenet_v3_large", num_classes=5)
    x = torch.randn(1, 3, 33, 33)
    conv, report = njetify.convert(model, recipe="paper-deeplabv2-aspp", example_inputs=x)
    assert len(report.select("aspp")) == 1  # the pass ran once
    owner = conv.classifier[0].convs[2][0].owner
    with torch.no_grad():
        owner.log_sigma.add_(0.3)
    njetify.save(conv, tmp_path / "tied.safetensors", report=report)
    back = njetify.load(tmp_path / "tied.safetensors")
    torch.testing.assert_close(back.classifier[0].convs[2][0].owner.sigma, owner.sigma)
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(x)["out"], conv.eval()(x)["out"])
