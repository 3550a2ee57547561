"""Module-tree edits the engine and its callers share: put an original conv back, keep
subsamplings valid, follow a σ₀ change. They use module paths and the layers' public
constructors only, so they work on any converted model (graph module or the user's own tree)."""

from __future__ import annotations

import copy

from torch import nn

from ..layers import SafeSubsample, SubsampledConv2d, carries_sigma


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at ``path`` (dotted, as in ``named_modules``) in ``model``."""
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def subsamples_of(model: nn.Module, source: nn.Module) -> list[tuple[str, SafeSubsample]]:
    """Every ``(path, SafeSubsample)`` of ``model`` whose σ comes from ``source``."""
    return [(p, m) for p, m in model.named_modules() if isinstance(m, SafeSubsample) and m.source is source]


def auto_subsamples(model: nn.Module, source: nn.Module) -> list[str]:
    """Paths of the subsamplings ``source`` drives with ``r="auto"`` (what :attr:`SafeSubsample.auto` stores)."""
    return [p for p, ss in subsamples_of(model, source) if ss.auto]


def fixed_r_reason(model: nn.Module, source: nn.Module) -> str | None:
    """Why ``source``'s σ₀ must stay (it drives a subsampling with a numeric r), or None."""
    fixed = [p for p, ss in subsamples_of(model, source) if not ss.auto]
    if fixed:
        return f"it drives {', '.join(fixed)} with a numeric r (σ₀ sets the feature-map size)"
    return None


def retarget_subsamples(model: nn.Module, source: nn.Module, auto: list[str]) -> None:
    """After ``source``'s σ₀ changed: the r = "auto" subsamplings at paths ``auto`` are rebased,
    so that the factor at the new σ₀ is exactly 1/stride again."""
    sigma0 = float(source.sigma.detach().double().mean())
    for path in auto:
        model.get_submodule(path).rebase(sigma0)


def fix_subsamples(model: nn.Module, source: nn.Module) -> list[str]:
    """Subsamplings driven by ``source`` get a fixed factor ``1/stride`` (no σ source); their paths.

    For a layer that is about to be replaced by a plain conv: every site of a merge shares one
    source, so all of them become fixed together and sizes still agree where branches meet.
    """
    paths = []
    for path, ss in subsamples_of(model, source):
        ss.set_source(None)
        paths.append(path)
    return paths


def reverted_module(old: nn.Module, conv: nn.Module) -> nn.Module:
    """What replaces the converted layer ``old``: a copy of its original ``conv`` at the stride ``old``
    runs at, followed by ``old``'s carried subsampling (fix it first, :func:`fix_subsamples`) when
    there is one — a :class:`~njetify.layers.SubsampledConv2d`, so the conv's keys stay. A carried
    subsampling that is a plain fixed nearest 1/stride gives the original strided conv itself."""
    conv = copy.deepcopy(conv)
    mode = conv.training  # the user's conv's mode (``old`` is in eval mode while calibrating)
    carried = getattr(old, "subsample", None)
    if carried is not None and _is_plain_stride(carried):
        return conv  # the original strided conv computes exactly that, at 1/stride² the cost
    stride = getattr(old, "stride", None)
    if isinstance(stride, int):  # an NJetConv2d; tied branches are never strided
        conv.stride = (stride, stride)
    if carried is not None:
        if type(conv) is nn.Conv2d:
            conv = SubsampledConv2d.from_conv(conv, carried)
        else:
            conv = nn.Sequential(conv, carried)
    return conv.train(mode)


def _is_plain_stride(ss) -> bool:
    """A fixed nearest subsampling at 1/stride without alignment picks pixels 0, stride, 2·stride, …
    of the stride-1 output: what the strided conv outputs."""
    return (isinstance(ss, SafeSubsample) and ss.source is None and ss.interpolation == "nearest"
            and ss.align == 0)


def restore_conv(converted: nn.Module, original: nn.Module, path: str, *shared: str) -> nn.Module:
    """Put a copy of ``original``'s conv at ``path`` (and at the ``shared`` paths of the same layer)
    into ``converted`` (see :func:`reverted_module`) and fix the subsamplings the layer drove.
    Returns the module put in."""
    old = converted.get_submodule(path)
    if carries_sigma(old):
        fix_subsamples(converted, old)
    new = reverted_module(old, original.get_submodule(path))
    for p in (path, *shared):
        set_module(converted, p, new)
    return new
