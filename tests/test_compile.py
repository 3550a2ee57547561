"""torch.compile and torch.export on converted models: no graph break in keep mode, recompiles only when
a filter size changes, exported graphs equal to eager, the filter size decided outside the graph."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import njetify
from njetify import NJetConv2d, TiedNJetConv2d
from njetify.layers.sizes import refresh_sizes


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 5, padding=2, groups=8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))


class Counting:
    """A dynamo backend that runs the captured graph as is and counts compilations."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def set_sigma(model: nn.Module, sigma: float) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (NJetConv2d, TiedNJetConv2d)):
                m.log_sigma.fill_(torch.tensor(sigma).log().item())
    refresh_sizes(model)  # σ set by hand: sizes are read on the host before a graph is compiled


@pytest.mark.parametrize("path", ["auto", "dense", "basis_first", "mix_first"])
def test_keep_mode_compiles_without_graph_breaks(path):
    net, _ = njetify.convert(small_cnn(), subsample="keep")
    for m in net.modules():
        if isinstance(m, NJetConv2d):
            m.path = path
    x = torch.randn(2, 3, 16, 16)
    explained = torch._dynamo.explain(net)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_compiled_output_and_gradients_equal_eager():
    net, _ = njetify.convert(small_cnn(), subsample="keep")
    set_sigma(net, 0.8)
    x = torch.randn(2, 3, 16, 16)
    eager = net(x)
    eager.sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    out = torch.compile(net, backend="aot_eager")(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    for g, p in zip(grads, net.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_compiled_training_recompiles_only_when_a_size_changes(caplog):
    net, _ = njetify.convert(small_cnn(), subsample="keep")
    set_sigma(net, 0.6)  # 5x5 filters until σ passes 1.0
    backend = Counting()
    compiled = torch.compile(net, backend=backend)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    x = torch.randn(2, 3, 16, 16)
    sigma_params = [m.log_sigma for m in net.modules() if isinstance(m, NJetConv2d)]
    for step in range(4):  # σ moves within one filter size: one graph
        compiled(x).sum().backward()
        with torch.no_grad():
            for p in sigma_params:
                p.add_(0.05)
        opt.step()
    assert backend.graphs == 1
    sizes = {m.kernel_size[0] for m in net.modules() if isinstance(m, NJetConv2d)}
    assert sizes == {5}
    with caplog.at_level(logging.INFO, logger="njetify.sizes"):
        with torch.no_grad():
            for p in sigma_params:
                p.fill_(torch.tensor(1.2).log().item())  # every filter 7x7 now
        opt.step()  # the step hook reads σ on the host, outside the graph
        for _ in range(2):
            compiled(x).sum().backward()
    assert backend.graphs == 2  # exactly one recompile for the new size
    assert {m.kernel_size[0] for m in net.modules() if isinstance(m, NJetConv2d)} == {7}
    assert any("5 → 7" in r.getMessage() for r in caplog.records)


def test_safe_mode_breaks_only_at_learned_subsamplings():
    net, report = njetify.convert(small_cnn(), subsample="safe")
    sites = sum(isinstance(m, njetify.layers.SafeSubsample) and m.source is not None for m in net.modules())
    assert sites == 1
    explained = torch._dynamo.explain(net)(torch.randn(2, 3, 16, 16))
    assert explained.graph_break_count == sites


def test_export_keep_mode_matches_eager():
    net, _ = njetify.convert(small_cnn(), subsample="keep")
    set_sigma(net, 0.7)
    x = torch.randn(2, 3, 16, 16)
    exported = torch.export.export(net, (x,))
    torch.testing.assert_close(exported.module()(x), net(x))


def test_export_uses_sizes_set_by_hand_after_refresh():
    layer = NJetConv2d(3, 4, sigma=0.5)
    with torch.no_grad():
        layer.log_sigma.fill_(torch.tensor(1.5).log().item())
    assert refresh_sizes(layer) == 1
    x = torch.randn(1, 3, 12, 12)
    exported = torch.export.export(layer, (x,))
    assert layer.kernel_size == (7, 7)
    torch.testing.assert_close(exported.module()(x), layer(x))


def test_tied_head_compiles_without_graph_breaks():
    head = TiedNJetConv2d(6, 4, sigmas=[0.5, 1.0, 2.0])
    x = torch.randn(1, 6, 12, 12)

    def fn(t):
        return sum(head(t))

    explained = torch._dynamo.explain(fn)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch.testing.assert_close(torch.compile(fn, backend="aot_eager")(x), fn(x))


def test_load_state_dict_refreshes_sizes_before_any_forward():
    a, b = NJetConv2d(2, 2, sigma=0.5), NJetConv2d(2, 2, sigma=0.5)
    with torch.no_grad():
        a.log_sigma.fill_(torch.tensor(2.0).log().item())
    b.load_state_dict(a.state_dict())
    assert b._filter_sizes.halves == (4,)
