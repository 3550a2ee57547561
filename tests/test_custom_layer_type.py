"""A σ layer type of your own, added in one file with one registration in the converter table.

``BlurConv`` is a user's depthwise blur conv (an ``nn.Conv2d`` with its own forward, which njetify does not
convert by itself); ``GaussBlur`` is its σ form (a :class:`SigmaModule`: a depthwise Gaussian of learned
σ). One ``register_converter`` call makes the surgery convert it, and everything that asks the protocol
(σ parameters and optimiser groups, tracing, bake, save/load) takes it.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import njetify
from njetify.basis import half_width
from njetify.layers import SigmaModule, sigma_layers, sigma_parameters
from njetify.layers.convertible import Converter, conv_kind, is_convertible, register_converter


class BlurConv(nn.Conv2d):
    """A depthwise k×k conv with its own forward (njetify does not know its semantics)."""

    def forward(self, x):
        return super().forward(x)


class GaussBlur(SigmaModule):
    """Depthwise Gaussian blur of learned σ (pixels), filter size 2·⌈extent·σ⌉+1, "same" output size."""

    def __init__(self, channels: int, sigma: float, extent: float = 2.0):
        super().__init__()
        self.channels, self.extent = channels, extent
        self.log_sigma = nn.Parameter(torch.tensor([math.log(sigma)]))

    @property
    def sigma(self) -> torch.Tensor:
        return self.log_sigma.exp()

    @property
    def kernel_size(self) -> tuple[int, int]:
        s = 2 * half_width(float(self.sigma.detach()), self.extent) + 1
        return (s, s)

    def scale_parameter(self) -> nn.Parameter:
        return self.log_sigma

    def filters(self) -> torch.Tensor:
        h = self.kernel_size[0] // 2
        x = torch.arange(-h, h + 1, dtype=self.log_sigma.dtype)
        g = torch.exp(-0.5 * (x / self.sigma) ** 2)
        g = g / g.sum()
        return (g[:, None] * g[None, :]).expand(self.channels, 1, -1, -1)

    def forward(self, x):
        return F.conv2d(x, self.filters(), padding=self.kernel_size[0] // 2, groups=self.channels)

    def baked(self) -> nn.Module:
        s = self.kernel_size[0]
        conv = nn.Conv2d(self.channels, self.channels, s, padding=s // 2, groups=self.channels, bias=False)
        with torch.no_grad():
            conv.weight.copy_(self.filters())
        return conv


def _blur_check(m: BlurConv) -> str:
    ok = m.groups == m.in_channels == m.out_channels and m.bias is None and m.stride == (1, 1)
    return "ok" if ok else "BlurConv: only a depthwise, bias-free, stride-1 blur becomes a GaussBlur"


def _build_blur(m: BlurConv, settings, order: int, sigma: float | None) -> GaussBlur:
    return GaussBlur(m.in_channels, sigma or (m.kernel_size[0] - 1) / (2 * settings.extent), settings.extent)


register_converter(Converter(BlurConv, _blur_check, _build_blur, kind="blur", layers=(GaussBlur,)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.blur = BlurConv(4, 4, 5, padding=2, groups=4, bias=False)
        self.odd = BlurConv(4, 4, 3, padding=1, bias=False)  # not depthwise: stays, with the check's reason
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.odd(self.blur(torch.relu(self.conv(x))))
        return self.head(x.mean((2, 3)))


def _convert(**kw):
    torch.manual_seed(0)
    return njetify.convert(Net(), max_fit_error=float("inf"), example_inputs=torch.randn(2, 3, 16, 16), **kw)


def test_the_registered_type_converts():
    net, report = _convert()
    assert isinstance(net.blur, GaussBlur) and float(net.blur.sigma.detach()) == pytest.approx(1.0)
    assert conv_kind(Net().blur) == "blur" and is_convertible(Net().blur) and not is_convertible(Net().odd)
    rows = {r.path: r for r in report.select("conv")}
    assert rows["blur"].action == "converted" and rows["blur"].size == 5
    assert rows["odd"].action == "kept" and "only a depthwise" in rows["odd"].reason
    assert set(sigma_layers(net)) == {"conv", "blur"} and net.blur.log_sigma in sigma_parameters(net)
    from njetify.train.optim import split_parameters

    assert any(p is net.blur.log_sigma for p in split_parameters(net)["sigma"])


def test_calibration_runs_and_leaves_the_layer_to_its_own_rule():
    batches = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    torch.manual_seed(0)
    net, report = njetify.convert(Net(), calibration_data=batches, max_fit_error=float("inf"), sigma_init="kernel")
    assert isinstance(net.blur, GaussBlur) and float(net.blur.sigma.detach()) == pytest.approx(1.0)
    assert report.calibration["fit"] == "output-matching" and report.rows[0].extra["fit"] == "output-matching"


def test_bake():
    net, _ = _convert()
    x = torch.randn(2, 3, 20, 20)
    net.eval()
    baked = njetify.bake.bake(net)
    assert type(baked.blur) is nn.Conv2d and baked.blur.kernel_size == (5, 5)
    torch.testing.assert_close(baked(x), net(x))


def test_save_and_load(tmp_path):
    net, _ = _convert()
    with torch.no_grad():
        net.blur.log_sigma.fill_(math.log(1.7))
    path = njetify.save(net, tmp_path / "blur.safetensors")
    back = njetify.load(path, model=Net()).eval()
    x = torch.randn(1, 3, 16, 16)
    assert isinstance(back.blur, GaussBlur) and float(back.blur.sigma.detach()) == pytest.approx(1.7)
    torch.testing.assert_close(back(x), net.eval()(x))


def test_summary_and_plots_ask_the_protocol(tmp_path):
    """The user's layer describes itself through SigmaModule's defaults: a summary row and a filter plot."""
    from njetify.plots import plot_filters, plot_summary
    from njetify.summary import summarize

    net, _ = _convert()
    s = summarize(net, (3, 16, 16))
    row = next(r for r in s.layers if r.path == "blur")
    assert row.kind == "njet" and row.op == "GaussBlur σ" and row.size == 5 and row.sigma == pytest.approx(1.0)
    assert {r.path for r in s.njet_layers} == {"conv", "blur"}
    assert net.blur.basis_images() == (None, [])
    png = plot_filters(net.blur, tmp_path / "blur.png", name="blur")
    assert png.read_bytes()[:4] == b"\x89PNG"
    paths = plot_summary(s, net, tmp_path / "all", layer="blur")
    assert any(p.name == "filters_blur.png" for p in paths)
