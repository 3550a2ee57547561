"""torch.compile and torch.export in safe mode: a learned subsampling runs inside the graph from a plan made on
the host (map size, picks, the strided shortcut), so σ moving within a map size recompiles nothing, a map size
that changes recompiles once, and compiled outputs equal eager ones at every step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import njetify
from njetify import NJetConv2d
from njetify.layers import SafeSubsample

from test_compile import set_sigma, small_cnn


class Recording:
    """A dynamo backend that runs each captured graph as is and keeps it."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return gm.forward


def learned_sites(net) -> list[SafeSubsample]:
    return [m for m in net.modules() if isinstance(m, SafeSubsample) and m.source is not None]


def conv_strides(gm) -> list[int]:
    """The stride (first axis) of every conv2d call in an fx graph."""
    strides = [n.args[3] for n in gm.graph.nodes if n.target in (F.conv2d, torch.conv2d) and len(n.args) > 3]
    return [s if isinstance(s, int) else s[0] for s in strides]


def picks_in(gm) -> int:
    """How many ops of an fx graph come from applying a subsampling plan (pixel picks or a resize)."""
    return sum("apply_plan" in n.meta.get("stack_trace", "") for n in gm.graph.nodes if n.op.startswith("call_"))


def test_after_one_eager_forward_safe_mode_compiles_to_one_graph():
    net, _ = njetify.convert(small_cnn(), subsample="safe")
    x = torch.randn(2, 3, 16, 16)
    assert len(learned_sites(net)) == 1
    first = torch._dynamo.explain(net)(x)  # no plan for this size yet: the first call makes it on the host
    assert first.graph_break_count == 1
    again = torch._dynamo.explain(net)(x)
    assert again.graph_break_count == 0, again.break_reasons
    assert again.graph_count == 1


def test_at_sigma0_the_compiled_graph_runs_the_strided_conv():
    net, _ = njetify.convert(small_cnn(), subsample="safe")
    x = torch.randn(2, 3, 16, 16)
    net(x)
    backend = Recording()
    torch.testing.assert_close(torch.compile(net, backend=backend)(x), net(x))
    assert len(backend.graphs) == 1
    assert 2 in conv_strides(backend.graphs[0])  # the shortcut: conv at stride 2, not stride 1 and picks
    assert picks_in(backend.graphs[0]) == 0


@pytest.mark.parametrize("interpolation", ["nearest", "area"])
def test_compiled_safe_training_follows_sigma_without_recompiling(interpolation):
    net, _ = njetify.convert(small_cnn(), subsample="safe", interpolation=interpolation)
    set_sigma(net, 0.6)  # 5×5 filters until σ passes 1.0; the subsampling keeps 8 of 17 pixels until σ ≈ 0.8
    x = torch.randn(2, 3, 17, 17)
    net(x)
    backend = Recording()
    compiled = torch.compile(net, backend=backend)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    sigmas = [m.log_sigma for m in net.modules() if isinstance(m, NJetConv2d)]
    site = learned_sites(net)[0]
    factors = []
    for _ in range(4):
        out = compiled(x)
        torch.testing.assert_close(out, net(x), rtol=1e-5, atol=1e-6)
        out.sum().backward()
        with torch.no_grad():
            for p in sigmas:
                p.add_(0.01)
        opt.step()  # the step hook remakes the plan on the host
        factors.append(site.factor)
    assert len(backend.graphs) == 1 and picks_in(backend.graphs[0]) > 0  # σ off σ₀: picks in the graph
    assert len(set(factors)) == 4  # the factor moved at every step, inside one graph
    with torch.no_grad():
        for p in sigmas:
            p.fill_(torch.tensor(0.95).log().item())  # still 5×5, the map now 7×7 instead of 8×8
    opt.step()
    out = compiled(x)
    assert out.shape == net(x).shape
    torch.testing.assert_close(out, net(x), rtol=1e-5, atol=1e-6)
    assert len(backend.graphs) == 2  # one recompile for the new map size


def test_export_safe_mode_after_one_eager_forward():
    net, _ = njetify.convert(small_cnn(), subsample="safe")
    set_sigma(net, 0.7)
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(RuntimeError, match="Run the model once eagerly"):
        torch.export.export(net, (x,))
    ref = net(x)
    torch.testing.assert_close(torch.export.export(net, (x,)).module()(x), ref)


def test_a_plan_follows_the_model_to_another_dtype_and_a_hand_set_sigma():
    net, _ = njetify.convert(small_cnn(), subsample="safe")
    x = torch.randn(2, 3, 16, 16)
    net(x)
    site = learned_sites(net)[0]
    before = site.plan(16, 16)
    set_sigma(net, 1.5)  # refresh_sizes remakes the plans too
    after = site.plan(16, 16)
    assert after.factor != before.factor and after.out_h < before.out_h
    net.double()
    assert not site._plans  # plans are forgotten when the module moves
    torch.testing.assert_close(torch.compile(net, backend="aot_eager")(x.double()), net(x.double()))
