"""The architecture matrix: real timm / torchvision CNNs, random weights, both subsample modes."""

import pytest
import torch
from torch import nn

import njetify
from njetify.recipes import resolve_recipe
from njetify import NJetConv2d, SafeSubsample
from njetify.layers import SafePool2d

from surgery_models import leaf_shapes

timm = pytest.importorskip("timm")
tvm = pytest.importorskip("torchvision.models")

FAST = {
    "timm/resnet18": lambda: timm.create_model("resnet18"),
    "tv/mobilenet_v3_small": lambda: tvm.mobilenet_v3_small(),
}
SLOW = {
    "timm/mobilenetv3_small_100": lambda: timm.create_model("mobilenetv3_small_100"),
    "timm/convnext_atto": lambda: timm.create_model("convnext_atto"),
    "tv/resnet18": lambda: tvm.resnet18(),
    "timm/regnetx_002": lambda: timm.create_model("regnetx_002"),
    "timm/resnet50d": lambda: timm.create_model("resnet50d"),
    "timm/efficientnet_b0": lambda: timm.create_model("efficientnet_b0"),
    "timm/densenet121": lambda: timm.create_model("densenet121"),
    "tv/vgg11_bn": lambda: tvm.vgg11_bn(),
    "tv/googlenet": lambda: tvm.googlenet(init_weights=False, aux_logits=False),
}
# default run: every fast model in safe mode and one in keep mode; the rest is marked slow
CASES = [
    pytest.param(n, mode, id=f"{n}-{mode}", marks=() if n in FAST and (mode == "safe" or n == "timm/resnet18")
                 else pytest.mark.slow)
    for n in [*FAST, *SLOW] for mode in ("safe", "keep")
]
BUILD = {**FAST, **SLOW}
SKIP = (nn.Conv2d, NJetConv2d, nn.MaxPool2d, nn.AvgPool2d, SafePool2d, SafeSubsample)


NO_GATE = resolve_recipe(max_fit_error=float("inf"))


def _build(name):
    torch.manual_seed(0)
    model = BUILD[name]()
    with torch.no_grad():  # timm zero-inits the last BN of residual blocks: give every branch a gradient
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("name, mode", CASES)
def test_architecture_matrix(name, mode):
    model = _build(name)
    x = torch.randn(2, 3, 32, 32)
    # no fidelity gate: the matrix is about the surgery, so every convertible conv is converted (random 5×5/7×7
    # kernels fit poorly in weight space and would stay plain convs with the default gate)
    conv, report = njetify.convert(model, subsample=mode, example_inputs=x, recipe=NO_GATE)
    assert report.tracing["mode"] == "fx"
    assert not report.notes or all("converted model's output" not in n for n in report.notes)
    convs = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert {r.path for r in report.select("conv")} == convs  # every conv accounted for
    assert report.converted > 0
    if mode == "safe":  # every strided op is either made safe or reported as kept
        assert report.select("subsample", "subsampled")
        want, ref = leaf_shapes(model, x, SKIP)
        got, out = leaf_shapes(conv, x, SKIP)
        # r="auto": original feature-map sizes everywhere at σ₀ (modules outside torch.nn, e.g. timm's
        # LayerNorm2d, are traced through and no longer called as modules: compare the rest)
        common = got.keys() & want.keys()
        assert len(common) >= len(want) // 2
        assert {k: got[k] for k in common} == {k: want[k] for k in common}
    else:
        assert not report.select("subsample")
        with torch.no_grad():
            ref, out = model(x), conv(x)
    assert out.shape == ref.shape
    conv.train()
    conv(x).square().mean().backward()
    layers = [m for m in conv.modules() if isinstance(m, NJetConv2d)]
    assert len(layers) == report.converted
    assert all(m.log_sigma.grad is not None and torch.isfinite(m.log_sigma.grad).all() for m in layers)
    assert sum(bool(m.log_sigma.grad.abs().sum() > 0) for m in layers) >= 0.9 * len(layers)


@pytest.mark.parametrize("size", [33, pytest.param(65, marks=pytest.mark.slow)])
def test_odd_sizes_exact_on_real_models(size):
    """3×3-only networks at order 4: the converted model gives the original outputs at odd sizes."""
    x = torch.randn(1, 3, size, size)
    for name in ("timm/regnetx_002",):
        model = _build(name)
        conv = njetify.njetify(model, order=4)
        want, ref = leaf_shapes(model, x, SKIP)
        got, out = leaf_shapes(conv, x, SKIP)
        assert got == want and len(got) > 20
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["timm/resnet50d", "tv/vgg11_bn"])
def test_exact_outputs_real_models_order4(name):
    model = _build(name)
    x = torch.randn(1, 3, 65, 65)
    conv = njetify.njetify(model, order=4)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), model(x), atol=1e-4, rtol=1e-3)
