"""The factorised path of NJetConv2d and the tied branches: same outputs and gradients as dense."""

from __future__ import annotations

import random
import warnings

import pytest
import torch
from torch import nn

from njetify import NJetConv2d
from njetify.layers import path_cost
from njetify.layers.factorised import release_workspace
from njetify.layers.tied import TiedNJetConv2d

ORDERS = ("basis_first", "mix_first")


@pytest.fixture(autouse=True)
def _one_thread():
    """Thousands of tiny ops: one thread avoids OpenMP barrier stalls on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _random_layer(rng: random.Random) -> tuple[NJetConv2d, torch.Tensor]:
    """A float64 layer with random channels, groups, σ (per layer or channel), stride, padding and trim."""
    groups = rng.choice([1, 1, 2, 3])
    depthwise = rng.random() < 0.2
    cin = groups * rng.randint(1, 3) if not depthwise else rng.randint(2, 5)
    cout = groups * rng.randint(1, 3) if not depthwise else cin * rng.choice([1, 2])
    groups = cin if depthwise else groups
    per = rng.choice(["layer", "channel"])
    sigma = [rng.uniform(0.3, 2.2) for _ in range(cout)] if per == "channel" else rng.uniform(0.3, 2.2)
    padding = rng.choice(["same", "same", "dynamic_same"])
    mode = rng.choice(["zeros", "reflect", "replicate", "circular"])
    layer = NJetConv2d(cin, cout, order=rng.randint(0, 4), sigma=sigma, sigma_per=per, groups=groups,
                       stride=rng.choice([1, 1, 2, 3]), padding=padding, padding_mode=mode,
                       trim=rng.randint(-2, 2) if padding == "same" else 0, bias=rng.random() < 0.7,
                       dtype=torch.float64)
    h, w = rng.randint(9, 17), rng.randint(9, 17)
    return layer, torch.randn(rng.randint(1, 3), cin, h, w, dtype=torch.float64)


def _outputs_and_grads(layer: NJetConv2d, x: torch.Tensor, path: str, gy=None):
    layer.path = path
    layer.zero_grad(set_to_none=True)
    xr = x.clone().requires_grad_(True)
    y = layer(xr)
    assert layer.last_path == (path if path != "factorised" else layer.last_path)
    gy = torch.randn_like(y) if gy is None else gy
    y.backward(gy)
    grads = {"x": xr.grad, **{n: p.grad for n, p in layer.named_parameters()}}
    return y.detach(), grads, gy


@pytest.mark.parametrize("seed", range(12))
def test_factorised_equals_dense_outputs_and_gradients(seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    for _ in range(4):
        layer, x = _random_layer(rng)
        y0, g0, gy = _outputs_and_grads(layer, x, "dense")
        for order in ORDERS:
            if order == "basis_first" and layer.sigma_per == "channel":
                continue
            y, g, _ = _outputs_and_grads(layer, x, order, gy)
            torch.testing.assert_close(y, y0, atol=1e-10, rtol=1e-9, msg=lambda m: f"{layer!r} {order}: {m}")
            for name, ref in g0.items():
                torch.testing.assert_close(g[name], ref, atol=1e-9, rtol=1e-8, msg=lambda m: f"{name} {order}: {m}")


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("per", ["layer", "channel"])
def test_gradcheck_including_sigma(order, per):
    if order == "basis_first" and per == "channel":
        pytest.skip("basis-first needs one σ")
    torch.manual_seed(0)
    layer = NJetConv2d(3, 4, order=2, sigma=[0.8, 1.1, 0.9, 1.3] if per == "channel" else 1.1, sigma_per=per,
                       stride=2, trim=-1, padding_mode="reflect", path=order, dtype=torch.float64)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    names = ["alpha", "log_sigma", "bias"]
    params = [getattr(layer, n).detach().clone().requires_grad_(True) for n in names]

    def f(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params))


def test_auto_picks_dense_for_small_filters_and_factorised_for_large():
    torch.manual_seed(0)
    small = NJetConv2d(64, 64, sigma=0.5)
    large = NJetConv2d(64, 64, sigma=6.0)
    x = torch.randn(1, 64, 32, 32)
    with torch.no_grad():
        small(x), large(x)
    assert small.last_path == "dense"
    assert large.last_path in ORDERS
    per_channel = NJetConv2d(64, 64, sigma=[6.0] * 64, sigma_per="channel")
    with torch.no_grad():
        per_channel(x)
    assert per_channel.last_path == "mix_first"
    with pytest.raises(ValueError, match="basis_first.*one σ"):
        NJetConv2d(2, 2, sigma=[1.0, 2.0], sigma_per="channel", path="basis_first")(torch.randn(1, 2, 8, 8))


def test_cap_is_visible_in_the_factorised_path():
    layer = NJetConv2d(2, 3, sigma=4.0, max_size=9, path="factorised")
    with pytest.warns(UserWarning, match="max_size=9"):
        y = layer(torch.randn(1, 2, 12, 12))
    assert layer.size_capped and layer.kernel_size == (9, 9) and y.shape == (1, 3, 12, 12)
    dense = NJetConv2d(2, 3, sigma=4.0, max_size=9, path="dense")
    dense.load_state_dict(layer.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = torch.randn(1, 2, 12, 12)
        torch.testing.assert_close(layer(x), dense(x), atol=1e-5, rtol=1e-5)


def test_forcing_dense_beyond_memory_is_a_clear_error_before_allocating(monkeypatch):
    monkeypatch.setattr(path_cost, "available_bytes", lambda device: 2**20)
    layer = NJetConv2d(2048, 256, sigma=18.0, max_size=63, path="dense")
    x = torch.randn(1, 2048, 5, 5)
    with pytest.warns(UserWarning, match="capped"), pytest.raises(MemoryError) as err:
        layer(x)
    msg = str(err.value)
    assert "2048" in msg and "256" in msg and "63x63" in msg and "path='auto'" in msg
    assert layer._cache is None  # nothing was built
    layer.path = "auto"  # auto never picks a dense filter that does not fit
    with torch.no_grad():
        assert layer.choose_path(x) in ORDERS


def test_eval_cache_untouched_and_autocast_and_channels_last():
    torch.manual_seed(0)
    layer = NJetConv2d(4, 6, sigma=2.0, path="factorised").eval()
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        y = layer(x)
        assert layer._cache is None  # the factorised path forms no filter
        layer.path = "dense"
        torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=1e-5)
        assert layer._cache is not None
        layer.path = "factorised"
        cl = layer(x.contiguous(memory_format=torch.channels_last))
        assert cl.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(cl, y, atol=1e-5, rtol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yb = layer(x)
        assert yb.dtype == torch.bfloat16
        assert float((yb.float() - y).abs().max()) < 0.05 * float(y.abs().max())
    layer.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x).float().square().mean().backward()
    assert layer.alpha.grad.dtype == torch.float32 and torch.isfinite(layer.log_sigma.grad).all()
    assert release_workspace() >= 0


@pytest.mark.parametrize("order", ORDERS)
def test_tied_branches_factorised_equal_dense(order):
    torch.manual_seed(0)
    t = TiedNJetConv2d(6, 4, [0.6, 1.4, 2.3], trims=[0, 1, -1], padding_mode="replicate", dtype=torch.float64)
    x = torch.randn(2, 6, 14, 13, dtype=torch.float64, requires_grad=True)
    res = {}
    for path in ("dense", order):
        t.path = path
        t.zero_grad(set_to_none=True)
        x.grad = None
        outs = [b(x) for b in t.branches]
        sum(o.square().sum() for o in outs).backward()
        res[path] = (outs, x.grad.clone(), t.alpha.grad.clone(), t.log_sigma.grad.clone())
        assert t.last_paths == [path] * 3
    for a, b in zip(res["dense"][0], res[order][0]):
        torch.testing.assert_close(a, b)
    for a, b in zip(res["dense"][1:], res[order][1:]):
        torch.testing.assert_close(a, b)


def test_tied_path_is_checked():
    with pytest.raises(ValueError, match="path must be one of"):
        TiedNJetConv2d(3, 3, [1.0], path="fast")


def test_sizes_too_small_for_the_filter_name_the_problem():
    layer = NJetConv2d(2, 2, sigma=3.0, padding_mode="reflect", path="factorised")
    with pytest.raises((ValueError, RuntimeError), match="reflect padding|input side"):
        layer(torch.randn(1, 2, 4, 4))


@pytest.mark.parametrize("groups,cin,cout", [(1, 16, 8), (4, 16, 16), (16, 16, 32)])
def test_module_wrapper_shapes(groups, cin, cout):
    layer = NJetConv2d(cin, cout, sigma=3.0, groups=groups, stride=2, path="factorised")
    assert layer(torch.randn(2, cin, 21, 18)).shape == (2, cout, 11, 9)
    assert layer(torch.randn(cin, 21, 18)).shape == (cout, 11, 9)  # unbatched, as nn.Conv2d
    assert "path='factorised'" in repr(layer)


def test_paths_run_on_a_real_sized_layer():
    """A 64→64 layer at σ=6 runs factorised under auto, and agrees with the dense filter in float32."""
    torch.manual_seed(0)
    layer = NJetConv2d(64, 64, sigma=6.0)
    x = torch.randn(1, 64, 40, 40)
    with torch.no_grad():
        y = layer(x)
        assert layer.last_path in ORDERS
        layer.path = "dense"
        ref = layer(x)
    assert float((y - ref).abs().max()) < 1e-4 * float(ref.abs().max())


def test_nn_module_state_keeps_path():
    layer = NJetConv2d(2, 2, path="dense")
    clone = NJetConv2d(2, 2)
    clone.load_state_dict(layer.state_dict())
    assert clone.path == "auto" and "path" not in layer.state_dict()
    assert isinstance(nn.Sequential(layer)[0], NJetConv2d)


@pytest.mark.parametrize("seed", range(4))
def test_basis_first_layouts_and_bands_equal_dense(seed):
    """Channels-last and banded (maps ≤ 40², or a channels-last input) and per-plane (larger maps) basis-first
    give the dense outputs and gradients, in the input's memory format."""
    from njetify.layers.basis_first import axis_bands

    rng = random.Random(100 + seed)
    torch.manual_seed(seed)
    for side, channels_last in ((rng.randint(32, 40), False), (rng.randint(50, 70), True), (rng.randint(50, 70), False)):
        groups = rng.choice([1, 2])
        cin, cout = groups * rng.randint(1, 3), groups * rng.randint(1, 3)
        mode = rng.choice(["zeros", "reflect", "replicate", "circular"])
        layer = NJetConv2d(cin, cout, order=rng.randint(1, 3), sigma=rng.uniform(0.4, 1.5), groups=groups,
                           stride=rng.choice([1, 1, 2]), padding_mode=mode, trim=rng.randint(-1, 1),
                           dtype=torch.float64)
        x = torch.randn(2, cin, side, side + rng.randint(-3, 0), dtype=torch.float64)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y0, g0, gy = _outputs_and_grads(layer, x, "dense", torch.randn(layer(x).shape, dtype=torch.float64))
        y, g, _ = _outputs_and_grads(layer, x, "basis_first", gy)
        torch.testing.assert_close(y, y0, atol=1e-10, rtol=1e-9)
        for name, ref in g0.items():
            torch.testing.assert_close(g[name], ref, atol=1e-9, rtol=1e-8, msg=lambda m: f"{name}: {m}")
        cl = channels_last and cin > 1  # one channel: NCHW and channels-last at once, output NCHW (as conv2d)
        assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format), (layer, x.shape)
    assert len(axis_bands(36, (2, 2), 5)) > 1 and len(axis_bands(20, (2, 2), 5)) == 1
    assert len(axis_bands(64, (12, 12), 25, 1, "circular")) == 1  # a wrap touches every column: no saving


@pytest.mark.parametrize("seed", range(3))
def test_per_plane_bands_equal_the_whole_operator(seed):
    """The per-plane layout's banded y-pass gives the whole operator's output and every gradient
    (x, α and both axis operators, inside the bands), on maps large enough to be banded."""
    from njetify.layers.axis_operators import axis_operators
    from njetify.layers.basis_first import axis_bands
    from njetify.layers.basis_first_planes import basis_first_planes

    rng = random.Random(300 + seed)
    torch.manual_seed(seed)
    order, groups = rng.randint(1, 3), rng.choice([1, 2])
    half, stride = rng.randint(1, 4), rng.choice([1, 2])
    mode = rng.choice(["zeros", "reflect", "replicate"])
    h, w = rng.randint(60, 90), rng.randint(45, 60)
    g = torch.randn(order + 1, 2 * half + 1, dtype=torch.float64)
    pads = (half, half)
    ay = axis_operators(g, h, pads, stride, mode).requires_grad_()
    bx = axis_operators(g, w, pads, stride, mode).transpose(1, 2).contiguous().requires_grad_()
    bands = axis_bands(h, pads, 2 * half + 1, stride, mode)
    assert len(bands) > 1
    cin, cout = groups * rng.randint(1, 3), groups * rng.randint(1, 3)
    x = torch.randn(2, cin, h, w, dtype=torch.float64, requires_grad=True)
    alpha = torch.randn(cout, cin // groups, (order + 1) * (order + 2) // 2, dtype=torch.float64, requires_grad=True)
    whole = basis_first_planes(x, alpha, ay, bx, groups)
    gout = torch.randn_like(whole)
    ref = torch.autograd.grad(whole, (x, alpha, ay, bx), gout)
    banded = basis_first_planes(x, alpha, ay, bx, groups, bands)
    torch.testing.assert_close(banded, whole, atol=1e-10, rtol=1e-9)
    inside = torch.zeros_like(ay, dtype=torch.bool)
    for a, b, lo, hi in bands:
        inside[:, a:b, lo:hi] = True
    for name, got, want in zip(("x", "alpha", "ay", "bx"), torch.autograd.grad(banded, (x, alpha, ay, bx), gout), ref):
        if name == "ay":  # outside the bands the operator is a structural zero: no gradient written there
            assert ay.detach()[~inside].abs().max() == 0
            got, want = got[inside], want[inside]
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-8, msg=lambda m: f"{name}: {m}")
