"""TiedNJetConv2d: shared α, one σ per branch, separable evaluation, joint fits."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from njetify import basis as B
from njetify.layers.tied import TiedNJetBranch, TiedNJetConv2d
from njetify.fit import joint_weight_fit


def _convs(rates=(1, 2, 3), cin=6, cout=4, groups=1, bias=True, pad=None):
    return [nn.Conv2d(cin, cout, 3, padding=r if pad is None else pad, dilation=r, groups=groups, bias=bias)
            for r in rates]


def _span_convs(sigmas, alpha):
    """Dense (dilation 1) convs whose kernels are exactly α · B(σ_k) on their own grids."""
    convs = []
    for s in sigmas:
        h = B.half_width(s)
        w = (alpha.double() @ B.gaussian_basis_2d(torch.tensor(s, dtype=torch.float64), 3, h).flatten(1))
        conv = nn.Conv2d(alpha.shape[1], alpha.shape[0], 2 * h + 1, padding=h)
        with torch.no_grad():
            conv.weight.copy_(w.view(*alpha.shape[:2], 2 * h + 1, 2 * h + 1))
        convs.append(conv)
    return convs


@pytest.mark.parametrize("groups,trim,mode", [(1, 0, "zeros"), (6, 0, "zeros"), (2, 1, "zeros"), (1, 0, "reflect")])
def test_separable_equals_dense(groups, trim, mode):
    torch.manual_seed(0)
    t = TiedNJetConv2d(6, 6, [0.5, 1.3, 2.2], groups=groups, trims=[trim] * 3, padding_mode=mode)
    x = torch.randn(2, 6, 15, 13)
    for k in range(3):
        t.mode = "dense"
        a = t.forward_branch(x, k)
        t.mode = "separable"
        b = t.forward_branch(x, k)
        assert a.shape == b.shape == (2, 6, 15 - 2 * trim, 13 - 2 * trim)
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("merge", ["sum", "concat"])
def test_kernels_in_shared_span_reproduce_head(merge):
    """Branches built from one α at three σ's: the tied head gives the original outputs."""
    torch.manual_seed(0)
    sigmas = [0.7, 1.3, 2.1]
    convs = _span_convs(sigmas, torch.randn(5, 8, 10))
    post = nn.ModuleList([nn.Sequential(nn.BatchNorm2d(5), nn.ReLU()) for _ in sigmas]).eval()
    for p in post:
        p[0].running_mean.uniform_(-0.1, 0.1)

    def head(branches, x):
        outs = [pp(b(x)) for b, pp in zip(branches, post)]
        return sum(outs) if merge == "sum" else torch.cat(outs, 1)

    x = torch.randn(2, 8, 19, 19)
    tied = TiedNJetConv2d.from_convs(convs, sigmas=sigmas)
    assert tied.fit_error < 1e-6
    with torch.no_grad():
        torch.testing.assert_close(head(tied.branches, x), head(convs, x), atol=1e-4, rtol=1e-4)


def test_joint_fit_recovers_alpha_and_matches_dense_reference():
    torch.manual_seed(0)
    convs = _convs((1, 2, 4))
    bases = [B.gaussian_basis_2d(torch.tensor(d / 2, dtype=torch.float64), 3, B.half_width(d / 2)) for d in (1, 2, 4)]
    alpha, err, errs = joint_weight_fit([c.weight for c in convs], [1, 2, 4], bases)
    # reference: every kernel spread on its dense grid, the basis stacked, one pinv
    from njetify.fit import center_pad, dense_kernel

    w_all, b_all = [], []
    for c, d, b in zip(convs, (1, 2, 4), bases):
        g = max(2 * d + 1, b.shape[-1])
        w_all.append(center_pad(dense_kernel(c.weight.detach().double(), d), g).flatten(2))
        b_all.append(center_pad(b, g).flatten(1))
    w_all, b_all = torch.cat(w_all, 2), torch.cat(b_all, 1)
    ref = w_all @ torch.linalg.pinv(b_all)
    torch.testing.assert_close(alpha, ref, atol=1e-8, rtol=1e-6)
    ref_err = float((ref @ b_all - w_all).norm() / w_all.norm())
    assert err == pytest.approx(ref_err, rel=1e-6)
    assert len(errs) == 3 and err < 1


def test_data_aware_fit_lowers_output_error():
    torch.manual_seed(0)
    convs = _convs((1, 2, 3), cin=6, cout=4)
    x = torch.randn(4, 6, 24, 24)
    x = nn.functional.avg_pool2d(x, 5, 1, 2)  # spatially correlated inputs, like real features
    ws = TiedNJetConv2d.from_convs(convs)
    da = TiedNJetConv2d.from_convs(convs, inputs=[x[:2], x[2:]])

    def out_err(t):
        with torch.no_grad():
            num = sum(float((t.forward_branch(x, k) - c(x)).pow(2).sum()) for k, c in enumerate(convs))
            den = sum(float(c(x).pow(2).sum()) for c in convs)
        return (num / den) ** 0.5

    assert out_err(da) < 0.95 * out_err(ws)  # measured: 0.656 vs 0.738


def test_every_sigma_gets_a_gradient_and_params_are_counted():
    torch.manual_seed(0)
    tied = TiedNJetConv2d.from_convs(_convs((1, 2, 3, 4)))
    x = torch.randn(2, 6, 12, 12)
    sum(b(x).square().sum() for b in tied.branches).backward()
    assert tied.log_sigma.grad.shape == (4,) and torch.all(tied.log_sigma.grad != 0)
    assert tied.alpha.grad is not None and tied.bias.grad.shape == (4, 4)
    assert tied.num_params() == 4 * 6 * 10 + 4 + 4 * 4
    frozen = TiedNJetConv2d.from_convs(_convs((1, 2)), learn_sigma=False)
    assert not frozen.log_sigma.requires_grad


@pytest.mark.parametrize("order,ratio", [(1, 11.99), (2, 6.00), (3, 3.60), (4, 2.40)])
def test_deeplabv2_head_parameter_counts(order, ratio):
    """VOC head: 4·21·2048·9 + 4·21 before; F·21·2048 + 4 σ + 4·21 biases after."""
    tied = TiedNJetConv2d(2048, 21, [3.0, 6.0, 9.0, 12.0], order=order)
    before = 4 * 21 * 2048 * 9 + 4 * 21
    nf = B.num_basis(order)
    assert tied.num_params() == nf * 21 * 2048 + 4 + 4 * 21
    assert before / tied.num_params() == pytest.approx(ratio, abs=0.01)


def test_views_state_dict_deepcopy_and_to_convs():
    torch.manual_seed(0)
    convs = _convs((1, 3))
    tied = TiedNJetConv2d.from_convs(convs)
    holder = nn.ModuleDict({"a": tied.branches[0], "b": tied.branches[1]})
    assert sorted(holder.state_dict()) == ["a.tied.alpha", "a.tied.bias", "a.tied.log_sigma"]
    with torch.no_grad():
        tied.log_sigma.add_(0.2)
    clone = copy.deepcopy(holder)
    assert clone["b"].owner is clone["a"].owner is not tied
    x = torch.randn(1, 6, 11, 11)
    with torch.no_grad():
        for name in ("a", "b"):
            torch.testing.assert_close(clone[name](x), holder[name](x))
        for k, conv in enumerate(tied.to_convs()):
            torch.testing.assert_close(conv(x), tied.forward_branch(x, k), atol=1e-5, rtol=1e-4)
    fresh = TiedNJetConv2d(6, 4, [1.0, 1.0])
    nn.ModuleDict({"a": fresh.branches[0], "b": fresh.branches[1]}).load_state_dict(holder.state_dict())
    torch.testing.assert_close(fresh.sigma, tied.sigma)
    assert isinstance(holder["b"], TiedNJetBranch) and holder["b"].sigma.item() == pytest.approx(tied.sigma[1].item())


def test_max_size_cap_warns_and_is_recorded():
    tied = TiedNJetConv2d(3, 2, [1.0, 12.0], max_size=25)
    with pytest.warns(UserWarning, match="max_size=25"):
        assert tied.kernel_size(1) == (25, 25)
    assert tied.size_capped == [False, True]
    y = tied.forward_branch(torch.randn(1, 3, 9, 9), 1)
    assert y.shape == (1, 2, 9, 9)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="out_channels"):
        TiedNJetConv2d.from_convs([nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 5, 3, padding=2, dilation=2)])
    with pytest.raises(ValueError, match="groups"):
        TiedNJetConv2d.from_convs([nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2)])
    with pytest.raises(ValueError, match="stride"):
        TiedNJetConv2d.from_convs([nn.Conv2d(4, 4, 3, stride=2)])
    with pytest.raises(TypeError, match="nn.Conv2d"):
        TiedNJetConv2d.from_convs([nn.Linear(3, 3)])
    with pytest.raises(ValueError, match="sigmas"):
        TiedNJetConv2d(3, 3, [])
    with pytest.raises(ValueError, match="sigma"):
        TiedNJetConv2d(3, 3, [1.0, -2.0])
    with pytest.raises(ValueError, match="max_size"):
        TiedNJetConv2d(3, 3, [1.0], max_size=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TiedNJetConv2d(3, 3, [1.0, 2.0], max_size=None).kernel_size(1)
