"""The Gaussian-derivative basis against scipy and its own invariants."""

import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from njetify import basis as B


@pytest.mark.parametrize("sigma", [0.5, 0.8, 1.0, 1.7, 3.2])
@pytest.mark.parametrize("order", [0, 1, 2, 3, 4])
def test_1d_derivatives_equal_scipy(sigma, order):
    radius = int(4.0 * sigma + 0.5)  # scipy's truncate=4 support
    impulse = np.zeros(2 * radius + 41)
    centre = len(impulse) // 2
    impulse[centre] = 1.0
    ref = ndi.gaussian_filter1d(impulse, sigma, order=order)[centre - radius : centre + radius + 1]
    g = B.gaussian_derivatives_1d(torch.tensor(sigma, dtype=torch.float64), 4, radius, scale_normalize=False)
    np.testing.assert_allclose(g[order].numpy(), ref, rtol=0, atol=1e-12)


def test_float32_matches_float64():
    g64 = B.gaussian_basis_2d(torch.tensor(1.3, dtype=torch.float64), 4, 4)
    g32 = B.gaussian_basis_2d(torch.tensor(1.3, dtype=torch.float32), 4, 4)
    assert g32.dtype == torch.float32
    torch.testing.assert_close(g32.double(), g64, atol=1e-6, rtol=1e-5)


def test_scale_normalisation_multiplies_by_sigma_power():
    s = torch.tensor(2.0, dtype=torch.float64)
    raw = B.gaussian_derivatives_1d(s, 3, 6, scale_normalize=False)
    norm = B.gaussian_derivatives_1d(s, 3, 6)
    for m in range(4):
        torch.testing.assert_close(norm[m], raw[m] * 2.0**m)


def test_order_listing_and_count():
    assert [B.num_basis(n) for n in (0, 1, 2, 3, 4)] == [1, 3, 6, 10, 15]
    assert B.basis_orders(2) == ((0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2))
    basis = B.gaussian_basis_2d(torch.tensor(1.0), 3, 2)
    assert basis.shape == (10, 5, 5)
    g = B.gaussian_derivatives_1d(torch.tensor(1.0), 3, 2)
    # filter (i=1, j=0) is d/dx: varies along x (last dim), constant profile G_0 along y
    torch.testing.assert_close(basis[1], torch.outer(g[0], g[1]))
    torch.testing.assert_close(basis[2], torch.outer(g[1], g[0]))


def test_per_channel_sigma_batches():
    sig = torch.tensor([0.5, 1.0, 2.0])
    b = B.gaussian_basis_2d(sig, 2, 4)
    assert b.shape == (3, 6, 9, 9)
    torch.testing.assert_close(b[1], B.gaussian_basis_2d(sig[1], 2, 4))


def test_differentiable_in_sigma():
    s = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: B.gaussian_basis_2d(t, 3, 3), (s,))


def test_filter_size_rule():
    assert [B.filter_size(s) for s in (0.5, 1.0, 1.5, 2.5)] == [3, 5, 7, 11]
    assert B.filter_size(math.exp(math.log(0.5))) == 3  # float noise does not grow the filter
    assert B.filter_size(float(torch.tensor(0.5).log().exp())) == 3
    assert B.filter_size(0.51) == 5


def test_gaussian_sums_to_one():
    g = B.gaussian_derivatives_1d(torch.tensor(0.9), 0, 3)
    torch.testing.assert_close(g.sum(), torch.tensor(1.0))
