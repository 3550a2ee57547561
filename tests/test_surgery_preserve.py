"""A converted model is still the user's model: class, methods, library APIs, state_dict keys (DESIGN §6)."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import njetify
from njetify.recipes import resolve_recipe
from njetify.layers import NJetConv2d, SafePool2d, SafeSubsample, SubsampledConv2d, sigma_parameters
from njetify.layers.traced import is_retraced

timm = pytest.importorskip("timm")
tvm = pytest.importorskip("torchvision.models")


def _grow_sigma(model, by=0.4):
    with torch.no_grad():
        for p in sigma_parameters(model):
            p.add_(by)


@pytest.mark.parametrize("mode", ["safe", "keep"])
@pytest.mark.parametrize("name", ["resnet18", pytest.param("convnext_atto", marks=pytest.mark.slow)])
def test_timm_model_keeps_its_api(name, mode):
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, 64, 64)
    # no fidelity gate: random 7×7 depthwise kernels (all of convnext_atto's) fit poorly in weight space and
    # would stay plain convs; the API must survive whatever is converted
    net, report = njetify.convert(model, subsample=mode, recipe=resolve_recipe(max_fit_error=float("inf")))
    assert type(net) is type(model) and isinstance(net, nn.Module) and net is not model
    assert report.converted > 0 and not is_retraced(net)
    feats = net.forward_features(x)
    assert feats.shape == model.forward_features(x).shape
    assert net.forward_head(feats).shape == (2, 1000)
    assert net.get_classifier() is net.get_classifier() and net.pretrained_cfg == model.pretrained_cfg
    net.reset_classifier(5)
    assert net(x).shape == (2, 5)
    if mode == "safe":  # the subsampling lives in the modules, so forward_features sees it
        assert any(isinstance(m, SafeSubsample) for m in net.modules())
        big = torch.randn(1, 3, 128, 128)
        before = net.forward_features(big).shape[-1]
        _grow_sigma(net)
        assert net.forward_features(big).shape[-1] < before or name == "convnext_atto"


def test_torchvision_resnet_is_a_resnet_and_feature_extraction_works():
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    model = tvm.resnet18().eval()
    net = njetify.njetify(model)
    assert isinstance(net, tvm.ResNet)
    x = torch.randn(1, 3, 64, 64)
    extractor = create_feature_extractor(net, {"layer2": "mid", "layer4": "out"})
    feats = extractor(x)
    with torch.no_grad():
        assert feats["mid"].shape == (1, 128, 8, 8) and feats["out"].shape == (1, 512, 2, 2)
        torch.testing.assert_close(feats["out"], net.layer4(net.layer3(net.layer2(net.layer1(
            net.maxpool(net.relu(net.bn1(net.conv1(x)))))))))


@pytest.mark.parametrize("arch", ["Unet", "FPN", "DeepLabV3Plus", "Segformer"])
def test_smp_models_keep_their_class_and_run(arch):
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    model = getattr(smp, arch)(encoder_name="resnet18", encoder_weights=None, classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ASPP filters capped at max_size
        net, report = njetify.convert(model)
    assert type(net) is type(model) and type(net.encoder) is type(model.encoder)
    assert net.encoder.output_stride == model.encoder.output_stride
    net.train()
    y = net(x)
    y.square().mean().backward()
    assert y.shape == model(x).shape
    _grow_sigma(net)  # every subsampling that was made safe still lets the branches meet
    with torch.no_grad():
        assert net.eval()(x).shape == y.shape


class Down(nn.Module):
    """A block of a user's own whose forward pools functionally."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.scale = 2

    def forward(self, x):
        return F.max_pool2d(F.relu(self.conv(x)), 2)

    def describe(self):
        return f"down x{self.scale}"


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.down = Down(8, 8)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.body(self.down(self.stem(x)))
        return self.head(x.mean((2, 3)))

    def embed(self, x):
        return self.down(self.stem(x))


def test_functional_pool_retraces_only_its_module():
    torch.manual_seed(0)
    model = UserNet().eval()
    x = torch.randn(2, 3, 17, 17)
    hook_calls = []
    hook = model.down.register_forward_hook(lambda m, i, o: hook_calls.append(o.shape))
    net, report = njetify.convert(model, order=4)  # order 4 spans every 3×3 kernel: exact at σ₀
    assert type(net) is UserNet and not is_retraced(net) and not is_retraced(net.body)
    assert is_retraced(net.down) and isinstance(net.down, Down) and net.down.describe() == "down x2"
    assert isinstance(net.down.njet_subsample_0, SafePool2d)
    (row,) = report.select("module")
    assert row.path == "down" and row.action == "retraced" and "F.max_pool2d" not in row.reason
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), atol=1e-5, rtol=1e-4)
        assert net.embed(x).shape == model.embed(x).shape == (2, 8, 8, 8)
    assert hook_calls and hook_calls[-1] == (2, 8, 8, 8)  # the user's hook came along
    net.down._forward_hooks.pop(hook.id)  # a local lambda does not pickle
    keys = list(net.state_dict())
    assert [k for k in keys if k.startswith("head.")] == ["head.weight", "head.bias"]
    assert {"stem.alpha", "down.conv.alpha", "down.conv.log_sigma", "body.0.alpha"} <= set(keys)
    assert not any("njet_subsample" in k for k in keys)  # the new children hold no tensors
    # the original is untouched, the converted model copies and pickles
    assert type(model.down) is Down and not is_retraced(model.down)
    clone = copy.deepcopy(net)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    with torch.no_grad():
        for other in (clone, loaded):
            assert isinstance(other.down, Down) and is_retraced(other.down)
            torch.testing.assert_close(other(x), net(x))
    _grow_sigma(net)
    with torch.no_grad():
        assert net.embed(x).shape[-1] < 8


def test_keep_mode_keeps_state_dict_keys_outside_converted_layers():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(4, 4, 1), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 5, 5))
    net, report = njetify.convert(model, subsample="keep")
    converted = {r.path for r in report.select("conv", "converted")}
    assert converted == {"2"}
    keep = [k for k in model.state_dict() if not k.startswith("2.")]
    assert [k for k in net.state_dict() if not k.startswith("2.")] == keep
    assert [k for k in net.state_dict() if k.startswith("2.")] == ["2.alpha", "2.log_sigma", "2.bias"]


def test_strided_modules_carry_their_subsampling():
    from surgery_models import TinyResNet

    net, report = njetify.convert(TinyResNet())
    assert isinstance(net.layer2.conv1, NJetConv2d) and net.layer2.conv1.stride == 1
    assert isinstance(net.layer2.conv1.subsample, SafeSubsample)
    shortcut = net.layer2.down[0]
    assert isinstance(shortcut, SubsampledConv2d) and isinstance(shortcut, nn.Conv2d)
    assert shortcut.subsample.source is net.layer2.conv1  # branches that meet share one σ source
    assert isinstance(net.pool, SafePool2d) and "layer2.down.0.weight" in net.state_dict()


def test_user_class_that_cannot_be_copied_gets_a_clear_error():
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.lock = __import__("threading").Lock()  # not deep-copyable

        def forward(self, x):
            return self.conv(x)

    model = Holder()
    with pytest.raises(TypeError, match="cannot be deep-copied.*inplace=True"):
        njetify.convert(model)
    net, _ = njetify.convert(model, inplace=True)
    assert net is model and isinstance(model.conv, NJetConv2d)


def test_failed_conversion_is_rolled_back():
    from njetify.surgery import DEFAULT_PASSES, Pass, insert_pass

    def boom(ctx):
        raise RuntimeError("boom")

    model = UserNet()
    before = {n: type(m) for n, m in model.named_modules()}
    passes = insert_pass(DEFAULT_PASSES, Pass("boom", boom), before="finish")
    with pytest.raises(RuntimeError, match="boom"):
        njetify.convert(model, inplace=True, passes=passes)
    assert {n: type(m) for n, m in model.named_modules()} == before and not is_retraced(model.down)


class UpMerge(nn.Module):
    """FPN-like: a strided branch upsampled by a fixed factor 2 meets its skip connection."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x):
        x = self.stem(x)
        return x + F.interpolate(self.down(x), scale_factor=2.0)


def test_fixed_factor_upsampling_keeps_the_stride_it_depends_on():
    x = torch.randn(1, 3, 16, 16)
    net, report = njetify.convert(UpMerge(), example_inputs=x)
    (row,) = report.select("subsample")  # the ×2 upsampling resizes to its partner (safe-upsampling)
    assert row.action == "subsampled", row.reason
    _grow_sigma(net)
    with torch.no_grad():
        assert net(x).shape == (1, 4, 16, 16)


class SliceMerge(nn.Module):
    """A strided conv added to a fixed ``[::2, ::2]`` slice of the input: a merge no σ can follow."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.proj = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x) + self.proj(x[:, :, ::2, ::2])


def test_a_merge_the_analysis_missed_is_reported():
    """The last line of defence: with σ grown, the example inputs must still run."""
    from njetify.surgery import DEFAULT_PASSES, Pass, insert_pass
    from njetify.surgery.passes.plan import plan_pass

    def sloppy_plan(ctx):  # pretends the merge was not seen
        plan_pass(ctx)
        for s in ctx.plan.sites:
            s.active, s.reason, s.group = True, None, s.id
        ctx.plan.groups = {s.id: [s] for s in ctx.plan.sites}

    passes = insert_pass(DEFAULT_PASSES, Pass("plan", sloppy_plan, requires=("analysis",), provides=("plan",)))
    passes = insert_pass(passes, next(p for p in passes if p.name == "plan"), before="aspp")
    with pytest.warns(UserWarning, match="σ 1.3x larger the converted model fails"):
        _, report = njetify.convert(SliceMerge(), example_inputs=torch.randn(1, 3, 16, 16), passes=passes)
    assert any("could not analyse" in n for n in report.notes)


def test_converting_a_converted_model_changes_nothing_more():
    from surgery_models import TinyResNet

    x = torch.randn(1, 3, 33, 33)
    once, _ = njetify.convert(TinyResNet(), example_inputs=x)
    twice, report = njetify.convert(once, example_inputs=x)
    assert report.converted == 0 and not report.select("subsample", "subsampled")
    assert [type(m) for m in twice.modules()] == [type(m) for m in once.modules()]
    with torch.no_grad():
        torch.testing.assert_close(twice(x), once(x))
