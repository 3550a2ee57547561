"""Library faults of issue 22: each test reproduces one fault of the Python API on main, then holds its fix.

load(model=) leaves the argument alone; wrapped (compiled, DataParallel) models are unwrapped and a
report never claims a fit that did not run; non-finite weights, quantized models and low-precision
calibration get one clear answer; dict / tuple inputs calibrate; weight/spectral norm and pruning are
converted from the effective weight with a note; save() to a folder writes nothing; a σ too small
to learn warns; measured path choices survive save/load.
"""

import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import njetify
from njetify.layers import NJetConv2d


def small_cnn(cin=3, classes=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(cin, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))


def images(n=4, size=16, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def conv_rows(report):
    return {r.path: r for r in report.rows if r.kind == "conv"}


# ------------------------------------------------------------------ 1. load(model=) leaves the argument alone
def test_load_with_model_argument_does_not_modify_it(tmp_path):
    net = small_cnn()
    converted, report = njetify.convert(net, example_inputs=images())
    path = njetify.save(converted, tmp_path / "net.safetensors", report=report)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    types = [type(m) for m in net.modules()]
    loaded = njetify.load(path, model=net)
    assert loaded is not net
    assert [type(m) for m in net.modules()] == types  # still plain convs
    assert net.state_dict().keys() == before.keys()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())
    assert isinstance(loaded[0], NJetConv2d)
    x = images()
    torch.testing.assert_close(loaded.eval()(x), converted.eval()(x))
    again = njetify.load(path, model=loaded)  # an already converted model is not touched either
    assert again is not loaded


# ------------------------------------------------------------------ 2. wrapped models, fits that did not run
def test_compiled_model_is_unwrapped_and_calibrated():
    net = small_cnn()
    x = images()
    out, report = njetify.convert(torch.compile(net), calibration_data=[x])
    assert type(out) is nn.Sequential  # the converted model is the unwrapped one (compile it again)
    assert any("torch.compile" in n for n in report.notes)
    rows = conv_rows(report)
    assert set(rows) == {"0", "2"}  # paths without _orig_mod.
    assert report.calibration["calibrated"] == 2
    plain, plain_report = njetify.convert(net, calibration_data=[x])
    for p in rows:
        assert rows[p].error_after == pytest.approx(conv_rows(plain_report)[p].error_after)
    assert isinstance(net[0], nn.Conv2d)


def test_data_parallel_is_unwrapped():
    net = small_cnn()
    out, report = njetify.convert(nn.DataParallel(net), calibration_data=[images()])
    assert type(out) is nn.Sequential and isinstance(out[0], NJetConv2d)
    assert any("DataParallel" in n for n in report.notes)
    assert set(conv_rows(report)) == {"0", "2"}


class HookBypass(nn.Module):
    """Its original conv runs without its forward hooks (as a compiled original model did): the
    calibration records no target for it, while the converted model calls the N-Jet layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        c = self.conv
        y = c._conv_forward(x, c.weight, c.bias) if type(c) is nn.Conv2d else c(x)
        return self.head(y.mean((2, 3)))


def test_report_never_claims_a_fit_without_targets():
    _, report = njetify.convert(HookBypass(), calibration_data=[images()])
    row = conv_rows(report)["conv"]
    assert row.extra["fit"] != "output-matching"
    assert row.error_after is None
    assert report.calibration["calibrated"] == 0
    assert report.calibration["fit"] != "output-matching"
    assert any("no layer was fitted" in n for n in report.notes)


# ------------------------------------------------------------------ 3. non-finite weights
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_layer(bad):
    net = small_cnn()
    with torch.no_grad():
        net[2].weight[0, 0, 0, 0] = bad
    for kwargs in ({"calibration_data": [images()]}, {}):
        with pytest.raises(ValueError, match=r"non-finite.*\b2\b.*skip"):
            njetify.convert(net, **kwargs)
    njetify.convert(net, recipe=njetify.load_recipe({"rules": [{"match": "2", "skip": True}]}))  # left out: fine


# ------------------------------------------------------------------ 4. dict / tuple inputs
class DictInput(nn.Module):
    """``forward(batch)`` takes one dict (positional)."""

    def __init__(self):
        super().__init__()
        self.net = small_cnn()

    def forward(self, batch):
        return self.net(batch["image"]) * batch["scale"]


class PairInput(nn.Module):
    """``forward(a, b)``: two positional inputs."""

    def __init__(self):
        super().__init__()
        self.net = small_cnn()

    def forward(self, a, b):
        return self.net(a + b)


class KeywordInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = small_cnn()

    def forward(self, image, scale=1.0):
        return self.net(image) * scale


def test_dict_positional_input_calibrates():
    d = {"image": images(), "scale": torch.full((1,), 2.0)}
    for kwargs in ({"example_inputs": (d,), "calibration_data": [d]}, {"calibration_data": [(d, torch.zeros(4))]}):
        out, report = njetify.convert(DictInput(), **kwargs)
        assert report.calibration["fit"] == "output-matching" and report.calibration["calibrated"] == 2
        assert out(d).shape == (4, 4)


def test_dict_keyword_and_tuple_inputs_calibrate():
    x = images()
    _, report = njetify.convert(KeywordInput(), calibration_data=[{"image": x, "scale": torch.ones(1)}])
    assert report.calibration["calibrated"] == 2
    out, report = njetify.convert(PairInput(), calibration_data=[((x, x), torch.zeros(4))], example_inputs=(x, x))
    assert report.calibration["calibrated"] == 2
    assert out(x, x).shape == (4, 4)


# ------------------------------------------------------------------ 5. low precision
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_model_calibrates_in_float32(dtype):
    net = small_cnn().to(dtype)
    x = images()
    out, report = njetify.convert(net, calibration_data=[x.to(dtype)])
    assert report.calibration["calibrated"] == 2, report.rows
    assert all(p.dtype == dtype for p in out.parameters())
    assert all(p.dtype == dtype for p in net.parameters())
    assert any("float32" in n and str(dtype).removeprefix("torch.") in n for n in report.notes)
    ref = small_cnn()(x)
    assert out(x.to(dtype)).float().sub(ref).norm() / ref.norm() < 0.2


# ------------------------------------------------------------------ 6. quantized models
def test_quantized_model_says_so():
    import torch.ao.quantization as q

    m = nn.Sequential(q.QuantStub(), nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), q.DeQuantStub()).eval()
    m.qconfig = q.get_default_qconfig("fbgemm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q.prepare(m, inplace=True)
        m(images())
        q.convert(m, inplace=True)
    with pytest.raises(ValueError, match=r"quantized.*\b1\b.*float model"):
        njetify.convert(m)


# ------------------------------------------------------------------ 7. weight reparametrisations
def _reparametrise(net, kind):
    from torch.nn.utils import parametrizations, prune

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the old hooks are deprecated
        if kind == "weight_norm":
            parametrizations.weight_norm(net[0])
        elif kind == "spectral_norm":
            parametrizations.spectral_norm(net[0])
        elif kind == "old weight_norm":
            torch.nn.utils.weight_norm(net[0])
        elif kind == "old spectral_norm":
            torch.nn.utils.spectral_norm(net[0])
        elif kind == "prune":
            prune.l1_unstructured(net[0], "weight", 0.5)
    return net


@pytest.mark.parametrize("kind", ["weight_norm", "spectral_norm", "old weight_norm", "old spectral_norm", "prune"])
def test_reparametrised_weights_convert_with_a_note(kind):
    net = _reparametrise(small_cnn(), kind).eval()
    x = images()
    with torch.no_grad():
        ref = net(x)
        effective = net[0].weight.detach().clone()  # after a forward (the old spectral_norm's is raw before)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    out, report = njetify.convert(net, calibration_data=[x])
    assert isinstance(out[0], NJetConv2d)
    word = kind.split()[-1].split("_")[0]  # weight / spectral / prune
    notes = [n for n in report.notes if n.startswith("0:")]
    assert len(notes) == 1 and word in notes[0] and "dropped" in notes[0], report.notes
    assert conv_rows(report)["0"].extra["reparametrised"]
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())  # the input model is unchanged
    with torch.no_grad():
        y = out.eval()(x)
    assert (y - ref).norm() / ref.norm() < 0.2
    # without data: the weight-space fit of the effective weight (not of weight_orig / v / the unpruned one)
    data_free, _ = njetify.convert(net)
    plain = nn.Conv2d(3, 8, 3, padding=1)
    with torch.no_grad():
        plain.weight.copy_(effective)
        plain.bias.copy_(net[0].bias)
    torch.testing.assert_close(data_free[0].alpha, NJetConv2d.from_conv(plain, order=3).alpha)


# ------------------------------------------------------------------ 8. save() to a folder
def test_save_to_a_directory_is_refused_and_writes_nothing(tmp_path):
    converted, report = njetify.convert(small_cnn())
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match=r"is a folder.*model\.safetensors"):
        njetify.save(converted, folder, report=report)
    assert os.listdir(folder) == [] and sorted(os.listdir(tmp_path)) == ["out"]


def test_save_leaves_no_temporary_file_when_writing_fails(tmp_path, monkeypatch):
    converted, report = njetify.convert(small_cnn())
    import safetensors.torch

    def broken(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        njetify.save(converted, tmp_path / "m.safetensors", report=report)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ 9. σ too small to learn
def _sigma_gradient_ratio(sigma, dtype=torch.float32):
    """|∂L/∂log σ| / ‖∂L/∂α‖ of a random order-3 layer on random data."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = NJetConv2d(3, 4, order=3, sigma=sigma, dtype=dtype)
    torch.manual_seed(0)
    layer(torch.randn(2, 3, 12, 12, dtype=dtype)).square().sum().backward()
    return float(layer.log_sigma.grad.abs().sum() / layer.alpha.grad.norm())


def test_min_useful_sigma_is_where_the_gradient_vanishes():
    from njetify.layers.sizes import MIN_USEFUL_SIGMA as low

    assert low == pytest.approx(0.1771, abs=1e-4)
    assert _sigma_gradient_ratio(1e-4) == 0.0 and _sigma_gradient_ratio(0.06) == 0.0  # measured: exactly 0
    for dtype in (torch.float32, torch.float64):  # the same in float64: not a rounding effect
        assert _sigma_gradient_ratio(low, dtype) < 1e-5
        assert _sigma_gradient_ratio(0.9 * low, dtype) < 1e-6
        assert _sigma_gradient_ratio(1.13 * low, dtype) > 1e-4  # 0.2 px: σ learns


def test_small_sigma_warns_once_when_built_and_when_loaded(tmp_path):
    from njetify.layers.sizes import SmallSigmaWarning

    with pytest.warns(SmallSigmaWarning, match=r"σ=0\.0001.*0\.177") as caught:
        layer = NJetConv2d(3, 4, order=3, sigma=1e-4)
        layer(torch.randn(1, 3, 8, 8))
        layer(torch.randn(1, 3, 8, 8))
    assert len([w for w in caught if issubclass(w.category, SmallSigmaWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallSigmaWarning)
        NJetConv2d(3, 4, order=3, sigma=0.5)(torch.randn(1, 3, 8, 8))
    net = small_cnn()
    converted, report = njetify.convert(net)
    with torch.no_grad():
        converted[2].log_sigma.fill_(torch.log(torch.tensor(1e-3)))
    with pytest.warns(SmallSigmaWarning, match=r"NJetConv2d\(8→8\).*σ=0\.001"):  # its first read after the edit
        path = njetify.save(converted, tmp_path / "m.safetensors", report=report)
    with pytest.warns(SmallSigmaWarning, match=r"\b2\b.*σ=0\.001") as caught:
        njetify.load(path, model=net)
    assert len([w for w in caught if issubclass(w.category, SmallSigmaWarning)]) == 1


# ------------------------------------------------------------------ 10. path plans survive save/load
def test_path_plans_are_saved_and_loaded(tmp_path):
    from njetify.layers import path_plan
    from njetify.io import read_metadata

    net = small_cnn()
    converted, report = njetify.convert(net)
    path_plan.clear_plans()
    with torch.no_grad():
        converted.eval()(images())
    made = path_plan.export_plans()
    assert made
    path = njetify.save(converted, tmp_path / "m.safetensors", report=report)
    assert read_metadata(path)["path_plans"] == made
    path_plan.clear_plans()
    loaded = njetify.load(path, model=net)
    assert path_plan.export_plans() == made
    timed = []
    orig = path_plan.time_call
    path_plan.time_call = lambda run, device: timed.append(1) or orig(run, device)
    try:
        with torch.no_grad():
            loaded.eval()(images())
    finally:
        path_plan.time_call = orig
    assert timed == []  # the saved decisions were used, nothing was timed again


def test_old_spectral_norm_without_a_forward_converts_its_normalised_weight():
    net = _reparametrise(small_cnn(), "old spectral_norm").eval()  # .weight is the raw weight until a forward
    raw = net[0].weight.detach().clone()
    out, _ = njetify.convert(net)
    with torch.no_grad():
        net(images())
    effective = net[0].weight.detach()
    assert not torch.allclose(raw, effective)
    plain = nn.Conv2d(3, 8, 3, padding=1)
    with torch.no_grad():
        plain.weight.copy_(effective)
        plain.bias.copy_(net[0].bias)
    torch.testing.assert_close(out[0].alpha, NJetConv2d.from_conv(plain, order=3).alpha)


def test_distributed_data_parallel_is_unwrapped(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        out, report = njetify.convert(nn.parallel.DistributedDataParallel(small_cnn()), calibration_data=[images()])
    finally:
        dist.destroy_process_group()
    assert type(out) is nn.Sequential and isinstance(out[0], NJetConv2d)
    assert any("DistributedDataParallel" in n for n in report.notes) and report.calibration["calibrated"] == 2


def test_quantized_conv_next_to_float_ones_is_kept_with_a_note():
    from torch.ao.nn.quantized import Conv2d as QuantizedConv2d

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), QuantizedConv2d(8, 8, 3))
    out, report = njetify.convert(net)
    assert isinstance(out[0], NJetConv2d) and isinstance(out[1], QuantizedConv2d)
    assert any("1 quantized convolution(s) kept" in n and "1: QuantizedConv2d" in n for n in report.notes)


def test_low_precision_inplace_conversion_that_fails_leaves_the_dtype(tmp_path):
    net = small_cnn().to(torch.bfloat16)
    with pytest.raises(ValueError, match="calibration_data"):
        njetify.convert(net, calibration_data=[torch.randn(2, 5, 16, 16)], inplace=True)  # 5 channels: fails
    assert all(p.dtype == torch.bfloat16 for p in net.parameters()) and isinstance(net[0], nn.Conv2d)
    out, report = njetify.convert(net, calibration_data=[images()], inplace=True)
    assert out is net and report.calibration["calibrated"] == 2
    assert all(p.dtype == torch.bfloat16 for p in net.parameters())


def test_save_and_load_unwrap_compiled_models(tmp_path):
    net = small_cnn()
    converted, report = njetify.convert(net)
    path = njetify.save(torch.compile(converted), tmp_path / "m.safetensors", report=report)
    loaded = njetify.load(path, model=torch.compile(net))
    x = images()
    torch.testing.assert_close(loaded.eval()(x), converted.eval()(x))


def test_uninitialised_lazy_conv_is_kept_with_the_fix():
    model = nn.Sequential(nn.LazyConv2d(4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    _, report = njetify.convert(model)
    rows = {r.path: r for r in report.rows if r.kind == "conv"}
    assert rows["0"].action == "kept" and "run the model once" in rows["0"].reason
    assert rows["2"].action == "converted"


def test_qat_conv_says_to_convert_the_float_model_first():
    from torch.ao.nn import qat
    from torch.ao.quantization import get_default_qat_qconfig

    conv = qat.Conv2d(3, 4, 3, padding=1, qconfig=get_default_qat_qconfig("fbgemm"))
    model = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    _, report = njetify.convert(model)
    rows = {r.path: r for r in report.rows if r.kind == "conv"}
    assert rows["0"].action == "kept" and "quantization-aware" in rows["0"].reason and "float model" in rows["0"].reason
