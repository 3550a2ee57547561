"""Surgery engine: exactness at σ₀, merges, fallbacks, σ steps, report, arguments."""

import copy
import io
import json
import warnings

import pytest
import torch
from rich.console import Console
from torch import nn

import njetify
from njetify import ConversionReport, NJetConv2d, SafeSubsample
from njetify.recipes import Recipe, Rule
from njetify.layers import PoolSpec, SafePool2d, StridelessPool2d

from surgery_models import DataDependent, InceptionDown, MnistCNN, NothingTraces, PlainCNN, TinyResNet, leaf_shapes


def _leaf_shapes(model, x):
    """Output shape of every leaf module that is neither a conv nor a pool nor new (BN, ReLU, Linear...)."""
    skip = (nn.Conv2d, NJetConv2d, nn.MaxPool2d, nn.AvgPool2d, SafePool2d, SafeSubsample)
    return leaf_shapes(model, x, skip)


@pytest.mark.parametrize("make, size", [
    (TinyResNet, 32), (TinyResNet, 33), (TinyResNet, 65), (InceptionDown, 33), (InceptionDown, 64),
])
def test_exact_sizes_and_outputs_at_sigma0(make, size):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(2, 3, size, size)
    conv, report = njetify.convert(model, order=4)  # order 4 spans every 3×3 kernel
    assert report.tracing["mode"] == "fx"
    assert report.select("subsample", "kept") == []
    want, ref = _leaf_shapes(model, x)
    got, out = _leaf_shapes(conv, x)
    assert got == want  # every BN / ReLU / Linear sees the original feature-map size
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_merges_share_one_sigma_source():
    _, report = njetify.convert(TinyResNet())
    src = {r.path: r.extra["source"] for r in report.select("subsample", "subsampled")}
    assert src["layer2.down.0"] == src["layer2.conv1"] == "layer2.conv1"
    assert src["layer3.down.0"] == src["layer3.conv1"] == "layer3.conv1"  # ResNet-D avg-pool shortcut
    _, report = njetify.convert(InceptionDown())
    groups = {r.extra["group"] for r in report.select("subsample", "subsampled")}
    assert len(groups) == 1 and len(report.select("subsample", "subsampled")) == 3


@pytest.mark.parametrize("spec", [
    PoolSpec("max", 3, 2, 0, 1, True), PoolSpec("max", 3, 2, 1), PoolSpec("max", 2, 2),
    PoolSpec("avg", 2, 2, 0, 1, True, False), PoolSpec("avg", 3, 2, 1, 1, True, True),
    PoolSpec("avg", 3, 2, 1, 1, False, False), PoolSpec("avg", 2, 2, 0, 1, False, True, 3),
])
@pytest.mark.parametrize("size", [7, 8, 33])
def test_stride1_pool_then_pick_equals_strided_pool(spec, size):
    torch.manual_seed(0)
    x = torch.randn(1, 2, size, size + 1)
    layer = NJetConv2d(2, 2, sigma=0.5)
    pick = SafeSubsample(layer, stride=spec.stride)
    fn = nn.functional.max_pool2d if spec.kind == "max" else nn.functional.avg_pool2d
    kw = {"dilation": spec.dilation} if spec.kind == "max" else {
        "count_include_pad": spec.count_include_pad, "divisor_override": spec.divisor_override}
    ref = fn(x, spec.kernel, spec.stride, spec.padding, ceil_mode=spec.ceil_mode, **kw)
    torch.testing.assert_close(pick(StridelessPool2d(spec)(x)), ref)


def _grow_sigma(model, steps=3, lr=0.5):
    sigmas = [p for n, p in model.named_parameters() if n.endswith("log_sigma")]
    opt = torch.optim.SGD(sigmas, lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        (-sum(s.sum() for s in sigmas)).backward()  # push every σ up
        opt.step()


@pytest.mark.parametrize("r", ["auto", 4.0])
def test_sigma_steps_change_sizes_and_model_still_runs(r):
    torch.manual_seed(0)
    conv = njetify.njetify(TinyResNet(), r=r).train()
    x = torch.randn(2, 3, 33, 33)
    layers = [m for m in conv.modules() if isinstance(m, NJetConv2d)]
    subs = [m for m in conv.modules() if isinstance(m, SafeSubsample)]
    sizes0 = [m.kernel_size for m in layers]
    factors0 = [m.factor for m in subs]
    opt = torch.optim.SGD(conv.parameters(), lr=0.01)
    for _ in range(2):  # ordinary training steps run
        opt.zero_grad()
        conv(x).square().mean().backward()
        assert all(m.log_sigma.grad is not None for m in layers)
        opt.step()
    _grow_sigma(conv)
    assert [m.kernel_size for m in layers] != sizes0
    assert all(f < f0 for f, f0 in zip([m.factor for m in subs], factors0))
    assert conv(x).shape == (2, 5)


def test_flatten_linear_guard_keeps_head_working():
    torch.manual_seed(0)
    model = MnistCNN().eval()
    x = torch.randn(3, 1, 28, 28)
    conv, report = njetify.convert(model, example_inputs=x)
    (row,) = report.select("guard")
    assert "7x7" in row.reason
    _grow_sigma(conv)
    assert conv(x).shape == (3, 10)
    conv4 = njetify.njetify(model, r=4)  # the paper's r: sizes differ at σ₀ already, size inferred
    assert conv4(x).shape == (3, 10)


def test_every_layer_subsampling():
    rec = Recipe(order=2, max_fit_error=None,  # as the paper recipes that subsample after every layer
                 subsample=njetify.recipes.SubsampleConfig(r=4, where="every_layer"))
    conv, report = njetify.convert(PlainCNN(), recipe=rec)
    assert len(report.select("subsample", "subsampled")) == 3 and report.converted == 3
    assert all(m.source is not None for m in conv.modules() if isinstance(m, SafeSubsample))
    assert conv(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    # residual blocks: branches that subsample a different number of times keep their strides
    conv, report = njetify.convert(TinyResNet(), recipe=rec)
    assert conv(torch.randn(1, 3, 33, 33)).shape == (1, 5)
    assert any("different number" in (r.reason or "") for r in report.select("subsample", "kept"))


def test_partial_tracing_and_module_swap_fallbacks():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 33, 33)
    model = DataDependent().eval()
    conv, report = njetify.convert(model, order=4)
    assert report.tracing["mode"] == "fx-partial"
    assert set(report.tracing["regions"]) == {"a", "b"}
    assert "Traceback" not in json.dumps(report.to_dict())
    assert type(conv) is DataDependent  # the root keeps its class and forward
    torch.testing.assert_close(conv(x), model(x), atol=1e-5, rtol=1e-4)

    model = NothingTraces().eval()
    conv, report = njetify.convert(model, order=4)
    assert report.tracing["mode"] == "swap"
    assert isinstance(conv.g1.conv, NJetConv2d) and conv.g1.conv.stride == 2
    (kept,) = report.select("subsample", "kept")
    assert "module swap" in kept.reason
    torch.testing.assert_close(conv(x), model(x), atol=1e-5, rtol=1e-4)


def test_conv2d_same_keeps_tf_padding():
    timm_layers = pytest.importorskip("timm.layers")
    torch.manual_seed(0)
    model = nn.Sequential(timm_layers.Conv2dSame(3, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    conv, report = njetify.convert(model, order=4)
    assert conv[0].padding == "dynamic_same" and conv[0].stride == 2 and len(conv) == 3
    assert "TF-SAME" in report.select("subsample", "kept")[0].reason
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(conv(x), model(x), atol=1e-5, rtol=1e-4)


def test_copy_inplace_mode_dtype_and_deepcopy():
    torch.manual_seed(0)
    model = TinyResNet().double().eval()
    before = copy.deepcopy(model.state_dict())
    conv = njetify.njetify(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input untouched
    assert type(model.layer1.conv1) is nn.Conv2d
    assert not conv.training and conv.layer1.conv1.alpha.dtype == torch.float64
    assert conv(torch.randn(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64
    clone = copy.deepcopy(conv)
    assert clone.state_dict().keys() == conv.state_dict().keys()
    assert type(clone.layer1) is type(model.layer1)  # container classes survive the copy
    assert "layer1.conv1.alpha" in conv.state_dict() and "layer1.bn1.running_mean" in conv.state_dict()
    buf = io.BytesIO()
    torch.save(conv, buf)  # whole-model pickling keeps the hierarchy too
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded.layer1) is type(model.layer1) and type(loaded).__name__ == "TinyResNet"
    x = torch.randn(1, 3, 33, 33, dtype=torch.float64)
    torch.testing.assert_close(loaded(x), conv(x))
    train_model = TinyResNet().train()
    assert njetify.njetify(train_model).training
    same = njetify.njetify(train_model, inplace=True)
    assert isinstance(train_model.layer1.conv1, NJetConv2d) and same.layer1.conv1 is train_model.layer1.conv1


def test_conversion_is_deterministic_for_reload():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    a, rep = njetify.convert(model)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.01)
    b, _ = njetify.convert(model, recipe=njetify.recipes.recipe_from_dict(rep.recipe))
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 33, 33)
    torch.testing.assert_close(b(x), a(x))
    assert rep.subsample == {"mode": "safe", "r": "auto", "where": "original", "interpolation": "nearest"}


def test_report_table_json_and_totals():
    model = TinyResNet()
    conv, report = njetify.convert(model, example_inputs=torch.randn(1, 3, 32, 32))
    assert isinstance(report, ConversionReport)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(r.path for r in report.select("conv")) == sorted(convs)
    assert report.params_before == sum(p.numel() for p in model.parameters())
    assert report.params_after == sum(p.numel() for p in conv.parameters())
    d = json.loads(report.to_json())
    assert d["tracing"]["mode"] == "fx" and d["example_input_shape"] == [[1, 3, 32, 32]]
    row = next(r for r in d["rows"] if r["path"] == "layer2.conv1" and r["kind"] == "conv")
    assert row["action"] == "converted" and row["kernel"] == 3 and row["stride"] == 2 and row["sigma0"] == 0.5
    assert row["size"] == 3 and 0 <= row["fit_error"] < 1 and row["params_after"] > 0
    buf = io.StringIO()
    Console(file=buf, width=80).print(report)
    assert max(len(line) for line in buf.getvalue().splitlines()) <= 80
    assert "layer2.conv1" in buf.getvalue() and "layer2.conv1" in str(report)


def test_recipe_rules_names_and_overrides():
    rec = Recipe(order=2, rules=[Rule(match="layer1.*", skip=True), Rule(match="post", order=4)])
    conv, report = njetify.convert(TinyResNet(), recipe=rec, order=3)
    rows = {r.path: r for r in report.select("conv")}
    assert rows["layer1.conv1"].action == "skipped" and "rule" in rows["layer1.conv1"].reason
    assert rows["post"].order == 4 and rows["layer2.conv2"].order == 3  # keyword beats recipe, rule beats both
    assert report.recipe["order"] == 3
    _, report = njetify.convert(PlainCNN(), recipe="paper-nin")
    assert report.subsample["where"] == "every_layer" and report.subsample["r"] == 4


def test_sigma_per_channel_and_calibration():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    data = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    conv, report = njetify.convert(model, recipe=Recipe(sigma_per="channel"), calibration_data=data)
    assert conv.layer1.conv1.sigma.shape == (8,)
    assert report.calibration["fit"] == "output-matching" and report.calibration["calibrated"] == report.converted
    assert all(r.extra.get("fit") == "output-matching" for r in report.select("conv", "converted"))
    assert conv(data[0]).shape == (4, 5)


def test_no_convertible_conv_returns_model_unchanged():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.LazyLinear(2))
    with pytest.warns(UserWarning, match="no convertible convolution"):
        conv, report = njetify.convert(model)
    assert report.converted == 0 and any("unchanged" in n for n in report.notes)
    assert report.rows[0].action == "kept" and "1x1" in report.rows[0].reason
    assert type(conv) is nn.Sequential


@pytest.mark.parametrize("kwargs, exc, word", [
    ({"order": 9}, ValueError, "order"),
    ({"order": 2.0}, ValueError, "order"),
    ({"subsample": "fancy"}, ValueError, "subsample"),
    ({"r": 0}, ValueError, "r must"),
    ({"r": "big"}, ValueError, "r must"),
    ({"recipe": 42}, TypeError, "recipe"),
    ({"example_inputs": "x"}, TypeError, "example_inputs"),
    ({"calibration_data": 3}, TypeError, "calibration_data"),
    ({"calibration_data": []}, ValueError, "calibration_data"),
    ({"recipe": Recipe(subsample=njetify.recipes.SubsampleConfig(where="every_layer"))}, ValueError, "r"),
])
def test_bad_arguments(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        njetify.convert(TinyResNet(), **kwargs)


def test_not_a_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        njetify.njetify(lambda x: x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        njetify.njetify(TinyResNet())  # a clean conversion does not warn
