"""Conversion memory is bounded: a dilated kernel is fitted at its taps, never on its dense grid."""

from __future__ import annotations

import pytest
import torch

from njetify.fit import center_pad, dense_kernel, joint_weight_fit, weight_space_fit


# Runs in a child process whose address space is capped at what it holds after setup + 1 GiB:
# forming the dense float64 grid of the 2048→256 rate-36 kernel (73×73: 22 GB) or anything of
# that order fails with an allocation error. The convs' own weights exist before the cap.
_CHILD = r"""
import resource, sys, warnings
import torch
from torch import nn
from njetify import NJetConv2d
from njetify.layers.tied import TiedNJetConv2d

warnings.simplefilter("ignore")
torch.manual_seed(0)
convs = [nn.Conv2d(2048, 256, 3, padding=r, dilation=r) for r in (12, 24, 36)]
NJetConv2d.from_conv(nn.Conv2d(8, 8, 3, padding=2, dilation=2), max_size=63)  # threads, lazy init
page = resource.getpagesize()
with open("/proc/self/statm") as f:
    vm = int(f.read().split()[0]) * page
resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))
layer = NJetConv2d.from_conv(convs[2], max_size=63)
tied = TiedNJetConv2d.from_convs(convs, max_size=63)
print("ok", layer.kernel_size[0], round(layer.fit_error, 4), [round(e, 4) for e in tied.branch_errors])
"""


def test_aspp_sized_conversion_fits_in_one_gib_extra():
    """The issue's case: 2048→256 at rate 36 (max_size 63), alone and as a tied 12/24/36 head."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and proc.stdout.startswith("ok 63"), proc.stdout + proc.stderr[-2000:]


def test_tap_fit_matches_the_dense_reference():
    """The tap-based fit and its error equal the plain pseudo-inverse on the dense grid."""
    torch.manual_seed(0)
    from njetify.basis import gaussian_basis_2d

    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    for d, sigma in ((1, 0.5), (2, 1.0), (4, 0.8), (3, 2.5)):
        basis = gaussian_basis_2d(torch.tensor(sigma, dtype=torch.float64), 3, max(1, round(2 * sigma)))
        alpha, err = weight_space_fit(w, basis, d)
        grid = max(2 * d + 1, basis.shape[-1])
        wd = center_pad(dense_kernel(w, d), grid).flatten(2)
        b = center_pad(basis, grid).flatten(1)
        ref = wd @ torch.linalg.pinv(b)
        torch.testing.assert_close(alpha, ref, atol=1e-9, rtol=1e-7)
        assert err == pytest.approx(float((ref @ b - wd).norm() / wd.norm()), rel=1e-7)
    _, joint, per = joint_weight_fit([w, w], [1, 3], [basis, basis])
    assert len(per) == 2 and min(per) <= joint <= max(per)
