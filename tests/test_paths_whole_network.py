"""Every exact path gives the same whole network: a converted torchvision RegNet (grouped convs,
squeeze-excitation, batch norm in train mode) with σ = 1.5 (7×7) in every N-Jet layer.

In float32 and train mode the two paths' outputs differ by ~10 % and their gradients by more: batch
norm over 2×2 maps of 4 images amplifies rounding. In float64 they agree to ~1e-10, which is what
this checks (a wrong path would differ at every precision); in eval mode float32 agrees to ~1e-7.
"""

import copy
import math

import pytest
import torch
import torchvision

import njetify
from njetify.layers import sigma_layers
from njetify.layers.sizes import refresh_sizes


def _run(net, path, x):
    m = copy.deepcopy(net)
    for layer in sigma_layers(m).values():
        layer.path = path
    y = m(x)
    y.square().sum().backward()
    return y.detach(), torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])


@pytest.mark.slow
def test_dense_and_basis_first_agree_on_a_whole_regnet_in_train_mode():
    torch.manual_seed(0)
    net = njetify.njetify(torchvision.models.regnet_y_400mf())
    layers = sigma_layers(net)
    assert len(layers) > 10 and any(m.groups > 1 for m in layers.values())
    with torch.no_grad():
        for m in layers.values():
            m.scale_parameter().fill_(math.log(1.5))
    refresh_sizes(net)
    net = net.double().train()
    x = torch.randn(4, 3, 64, 64, dtype=torch.float64)
    y0, g0 = _run(net, "dense", x)
    y1, g1 = _run(net, "basis_first", x)
    assert (y1 - y0).norm() / y0.norm() < 1e-7
    assert (g1 - g0).norm() / g0.norm() < 1e-6
