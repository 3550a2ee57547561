"""Baked models are the deployment form: they script, export and compile, in keep and safe mode, and the
scripted / exported / compiled forms compute what the baked eager model computes (timm resnet18, smp Unet)."""

from __future__ import annotations

import warnings

import pytest
import torch

import njetify
from njetify.bake import FactorisedConv2d, FixedSubsample, bake

timm = pytest.importorskip("timm")
smp = pytest.importorskip("segmentation_models_pytorch")

CASES = [(name, mode) for name in ("resnet18", "unet") for mode in ("keep", "safe")]
SIZES = ((1, 3, 64, 64), (2, 3, 64, 48))
# Export and compile take 10-20 s a case on a loaded CPU: keep mode (no resize, the simpler graph) runs with -m slow.
HEAVY = [pytest.param(n, m, marks=pytest.mark.slow) if m == "keep" else (n, m) for n, m in CASES]


def _network(name: str) -> torch.nn.Module:
    if name == "resnet18":
        return timm.create_model("resnet18", pretrained=False, num_classes=10)
    return smp.Unet("resnet18", encoder_weights=None, classes=2)


_BAKED: dict[tuple[str, str], torch.nn.Module] = {}


def _baked(name: str, mode: str) -> torch.nn.Module:
    """The network converted in ``mode``, every σ moved ×1.28 (safe factors ≠ 1/2, the stem baked
    factorised), then baked; built once per case."""
    if (name, mode) not in _BAKED:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the note on the factorised stem
            net, _ = njetify.convert(_network(name).eval(), subsample=mode)
            with torch.no_grad():
                for key, p in net.named_parameters():
                    if key.endswith("log_sigma"):
                        p.add_(0.25)
            _BAKED[name, mode] = bake(net, factorised=2).eval()  # the stem factorised by the MAC rule at 2×
    return _BAKED[name, mode]


def _check(run, baked, sizes=SIZES) -> None:
    for shape in sizes:
        x = torch.randn(*shape)
        with torch.no_grad():
            want, got = baked(x), run(x)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,mode", CASES)
def test_baked_model_holds_the_deployment_modules(name, mode):
    baked = _baked(name, mode)
    kinds = {type(m) for m in baked.modules()}
    assert FactorisedConv2d in kinds  # the stem at σ ×1.28
    assert (FixedSubsample in kinds) == (mode == "safe")
    if mode == "safe":
        factors = {round(m.factor, 3) for m in baked.modules() if isinstance(m, FixedSubsample)}
        assert factors - {0.5}, factors  # σ-driven factors moved off 1/2


@pytest.mark.parametrize("name,mode", CASES)
def test_torch_jit_script_matches_the_baked_model(name, mode):
    baked = _baked(name, mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated upstream
        scripted = torch.jit.script(baked)
    _check(scripted, baked)  # one scripted module, any input size


@pytest.mark.parametrize("name,mode", HEAVY)
def test_torch_export_matches_the_baked_model(name, mode):
    baked = _baked(name, mode)
    x = torch.randn(*SIZES[1])  # H and W are fixed per exported program (non-square here)
    program = torch.export.export(baked, (x,))
    _check(program.module(), baked, sizes=(SIZES[1],))


@pytest.mark.parametrize("name,mode", HEAVY)
def test_torch_compile_fullgraph_matches_the_baked_model(name, mode):
    torch._dynamo.reset()
    baked = _baked(name, mode)
    compiled = torch.compile(baked, backend="aot_eager", fullgraph=True, dynamic=False)  # no graph break
    _check(compiled, baked, sizes=(SIZES[1],))  # one size: a second one only recompiles


@pytest.mark.slow
def test_torch_compile_inductor_matches_the_baked_model():
    torch._dynamo.reset()
    baked = _baked("unet", "safe")
    compiled = torch.compile(baked, fullgraph=True, dynamic=False)
    for shape in SIZES:
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), baked(x), rtol=1e-4, atol=1e-4)
