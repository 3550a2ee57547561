"""NJetConv2d: shapes, σ → size, caching, conversion from nn.Conv2d, gradients, errors."""

import copy
import io
import warnings

import pytest
import torch
from torch import nn

from njetify import NJetConv2d
from njetify.basis import gaussian_basis_2d, num_basis


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_shapes_and_same_padding():
    layer = NJetConv2d(4, 6, order=2, sigma=1.0)
    assert layer.alpha.shape == (6, 4, 6)
    assert layer.kernel_size == (5, 5)
    assert layer(torch.randn(2, 4, 11, 13)).shape == (2, 6, 11, 13)
    strided = NJetConv2d(4, 6, sigma=1.0, stride=2)
    assert strided(torch.randn(2, 4, 11, 13)).shape == (2, 6, 6, 7)


def test_groups_and_depthwise():
    grouped = NJetConv2d(8, 12, groups=4)
    assert grouped.alpha.shape == (12, 2, 10)
    assert grouped(torch.randn(1, 8, 9, 9)).shape == (1, 12, 9, 9)
    dw = NJetConv2d(16, 16, groups=16, sigma=0.7)
    assert dw.filters().shape == (16, 1, 5, 5)
    y = dw(torch.randn(1, 16, 9, 9))
    # depthwise: output channel c only sees input channel c
    x = torch.zeros(1, 16, 9, 9)
    x[0, 3] = torch.randn(9, 9)
    out = dw(x) - dw.bias.view(1, -1, 1, 1)
    assert out[0, 3].abs().sum() > 0 and out[0, [0, 1, 2, 4]].abs().max() == 0
    assert y.shape == (1, 16, 9, 9)


def test_size_follows_sigma_every_forward():
    layer = NJetConv2d(2, 2, sigma=0.5)
    assert layer.kernel_size == (3, 3)
    with torch.no_grad():
        layer.log_sigma.fill_(torch.tensor(1.5).log())
    assert layer.kernel_size == (7, 7)
    assert layer.filters().shape[-1] == 7
    assert "size=7" in repr(layer) and "sigma=1.5" in repr(layer)


def test_filters_are_alpha_times_basis():
    layer = NJetConv2d(3, 2, order=3, sigma=1.2)
    basis = gaussian_basis_2d(layer.sigma[0], 3, 3)
    expected = torch.einsum("ocf,fyx->ocyx", layer.alpha, basis)
    torch.testing.assert_close(layer.filters(), expected)


def test_max_size_cap_is_visible_and_warns_once():
    layer = NJetConv2d(2, 2, sigma=4.0, max_size=9)
    with pytest.warns(UserWarning, match="max_size=9"):
        assert layer.kernel_size == (9, 9)
    assert layer.size_capped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(torch.randn(1, 2, 12, 12))  # no second warning
    with torch.no_grad():
        layer.log_sigma.fill_(0.0)
    assert layer.kernel_size == (5, 5) and not layer.size_capped


def test_sigma_per_channel():
    layer = NJetConv2d(3, 4, sigma=[0.5, 1.0, 1.5, 2.0], sigma_per="channel")
    assert layer.sigma.shape == (4,)
    assert layer.kernel_size == (9, 9)  # materialised at the largest support
    w = layer.filters()
    assert w.shape == (4, 3, 9, 9)
    for o, s in enumerate([0.5, 1.0, 1.5, 2.0]):
        expected = torch.einsum("cf,fyx->cyx", layer.alpha[o], gaussian_basis_2d(torch.tensor(s), 3, 4))
        torch.testing.assert_close(w[o], expected, atol=1e-6, rtol=1e-5)
    y = layer(torch.randn(2, 3, 10, 10))
    y.sum().backward()
    assert layer.log_sigma.grad.shape == (4,) and (layer.log_sigma.grad != 0).all()


def test_sigma_positive_by_parametrisation():
    layer = NJetConv2d(2, 2, sigma=0.8)
    opt = torch.optim.SGD([layer.log_sigma], lr=100.0)
    layer(torch.randn(1, 2, 8, 8)).pow(2).sum().backward()
    opt.step()
    assert (layer.sigma > 0).all()


def test_learn_sigma_false_keeps_sigma_in_state_dict():
    layer = NJetConv2d(2, 2, learn_sigma=False)
    assert not layer.log_sigma.requires_grad
    assert "log_sigma" in layer.state_dict()
    layer(torch.randn(1, 2, 8, 8)).sum().backward()
    assert layer.log_sigma.grad is None and layer.alpha.grad is not None


def test_eval_cache_is_never_stale():
    layer = NJetConv2d(3, 3, sigma=1.0).eval()
    x = torch.randn(1, 3, 10, 10)
    with torch.no_grad():
        y0 = layer(x)
        assert layer(x).equal(y0)
        cached = layer.filters()
        assert layer.filters() is cached  # cached: same tensor
        layer.alpha.mul_(2.0)  # in-place change of α
        torch.testing.assert_close(layer(x) - layer.bias.view(1, -1, 1, 1), 2 * (y0 - layer.bias.view(1, -1, 1, 1)))
        layer.log_sigma.fill_(torch.tensor(0.5).log())  # σ changes size
        assert layer(x).shape == y0.shape and layer.filters().shape[-1] == 3
        # load_state_dict into the cached layer
        fresh = NJetConv2d(3, 3, sigma=1.3)
        layer.load_state_dict(fresh.state_dict())
        torch.testing.assert_close(layer(x), fresh.eval()(x))
    # .to(dtype) and train() invalidate
    layer.double()
    with torch.no_grad():
        assert layer.filters().dtype == torch.float64
    layer.train()
    assert layer._cache is None
    # optimizer step in train, then eval again
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x.double()).sum().backward()
    opt.step()
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer.filters(), layer._build_filters())


def test_eval_with_grad_enabled_still_differentiates():
    layer = NJetConv2d(2, 2).eval()
    layer(torch.randn(1, 2, 8, 8)).sum().backward()
    assert layer.alpha.grad is not None and layer.log_sigma.grad is not None


@pytest.mark.parametrize("what", ["input", "alpha", "sigma", "sigma_per_channel"])
def test_gradcheck_float64(what):
    per = "channel" if what == "sigma_per_channel" else "layer"
    layer = NJetConv2d(2, 3, order=2, sigma=0.9, sigma_per=per, dtype=torch.float64)
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    if what == "input":
        x.requires_grad_(True)
        assert torch.autograd.gradcheck(layer, (x,))
        return
    name = "alpha" if what == "alpha" else "log_sigma"
    p = getattr(layer, name).detach().clone().requires_grad_(True)

    def f(t):
        params = dict(layer.named_parameters())
        params[name] = t
        return torch.func.functional_call(layer, params, (x,))

    assert torch.autograd.gradcheck(f, (p,))


def test_state_dict_round_trip():
    layer = NJetConv2d(3, 4, sigma=1.7, groups=1)
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    other = NJetConv2d(3, 4, sigma=0.5)
    other.load_state_dict(torch.load(buf))
    x = torch.randn(2, 3, 12, 12)
    torch.testing.assert_close(other(x), layer(x))
    assert other.kernel_size == layer.kernel_size == (9, 9)


def test_deepcopy_and_double_are_consistent():
    layer = NJetConv2d(2, 2)
    x = torch.randn(1, 2, 8, 8)
    torch.testing.assert_close(copy.deepcopy(layer)(x), layer(x))
    torch.testing.assert_close(layer.double()(x.double()).float(), layer.float()(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_to_conv_identical(mode):
    layer = NJetConv2d(3, 5, sigma=1.1, stride=2, padding_mode=mode, groups=1)
    conv = layer.to_conv()
    assert type(conv) is nn.Conv2d and conv.kernel_size == layer.kernel_size
    x = torch.randn(2, 3, 15, 14)
    torch.testing.assert_close(conv(x), layer(x), atol=1e-6, rtol=1e-5)


def test_parameter_count():
    layer = NJetConv2d(64, 32, order=3)
    assert sum(p.numel() for p in layer.parameters()) == 64 * 32 * num_basis(3) + 1 + 32


def _graph_ops(t: torch.Tensor) -> set[str]:
    seen, todo = set(), [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and type(fn).__name__ not in seen:
            seen.add(type(fn).__name__)
            todo.extend(f for f, _ in fn.next_functions)
    return seen


@pytest.mark.parametrize("shape, as_conv", [((128, 96, 10), True), ((96, 1, 15), False), ((64, 64, 6), False)])
def test_combine_basis_equals_the_matrix_product(shape, as_conv):
    """α @ basis as a 1×1 conv (large layers on CPU) gives the product's values and gradients."""
    from njetify.layers.functional import COMBINE_AS_CONV_MIN, combine_basis

    torch.manual_seed(0)
    o, cg, nf = shape
    assert (o * cg >= COMBINE_AS_CONV_MIN) == as_conv
    alpha = torch.randn(cg, o, nf).transpose(0, 1).requires_grad_()  # a non-contiguous α too
    basis = torch.randn(nf, 25, requires_grad=True)
    w = combine_basis(alpha, basis)
    assert w.shape == (o, cg, 25) and w.is_contiguous()
    assert ("ConvolutionBackward0" in _graph_ops(w)) == as_conv
    ref = alpha.detach().double() @ basis.detach().double()
    assert torch.allclose(w.double(), ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(w)
    ga, gb = torch.autograd.grad(w, (alpha, basis), g)
    a64, b64 = alpha.detach().double().requires_grad_(), basis.detach().double().requires_grad_()
    ra, rb = torch.autograd.grad(a64 @ b64, (a64, b64), g.double())
    assert torch.allclose(ga.double(), ra, rtol=1e-5, atol=1e-4)
    assert torch.allclose(gb.double(), rb, rtol=1e-5, atol=1e-3 * rb.abs().max().item())
