"""Move a converted network to another input resolution: multiply σ by the resolution factor (DESIGN §9).

σ is measured in pixels of a layer's input map. For an input upscaled by ``f``, every σ
layer that sees a map at the input's resolution gets ``σ·f`` (``log σ += log f``; a shared σ
once), and every safe-subsampling site at that resolution gets ``scale·f``: its factor
becomes ``(1/2)^(σ/(scale·r)) / scale``, so the maps after it keep the size they had
before, and the layers behind it keep their σ. Without safe-subsampling (strides kept) the
maps stay ``f`` times larger all the way, and every σ is multiplied by ``f``. Either way the
receptive fields are the same in image units.

Which layers see the input's resolution is found by running the model on an input of the
new size with every safe-subsampling output forced to its size at the old one: a layer
whose input side changed is in front of (or at) the first safe-subsampling on its path.
"""

from __future__ import annotations

from .layers.sizes import refresh_sizes

import copy
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from . import basis as B
from .layers import SafeSubsample, TiedNJetBranch, sigma_layers
from .modes import evaluating
from .rescale_report import LayerRescale, RescaleReport, SiteRescale
from .resolution import (RESOLUTION_ATTR, ResolutionRecord, current_input_size, resolution_of, scaled_side,
                         site_scales)
from .summary.trace import MacCounter

__all__ = ["MIN_SIGMA", "rescale"]

#: Default floor (px) for σ that :func:`rescale` shrinks: σ₀ of a converted 3×3 kernel.
MIN_SIGMA = 0.5


def _check_factor(factor, name: str = "factor") -> float:
    what = ("new input side / old; 2 for inputs twice as large, 0.5 for half" if name == "factor" else "pixels")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) and not (
            isinstance(factor, torch.Tensor) and factor.numel() == 1):
        raise ValueError(f"rescale: {name} must be a positive number ({what}), got {factor!r}")
    f = float(factor)
    if not math.isfinite(f) or f <= 0:
        raise ValueError(f"rescale: {name} must be a positive, finite number ({what}), got {factor!r}")
    return f


def _input_chw(model: nn.Module, input_size) -> tuple[int, int, int]:
    if input_size is not None:
        from .summary import parse_input_size

        return parse_input_size(input_size)
    now = current_input_size(model)
    if now is None:
        raise ValueError("rescale: the model records no input size (it was converted without example_inputs); "
                         "pass input_size=(C, H, W), the size it runs at now")
    return now


def _probe(model: nn.Module, x: torch.Tensor, layer_paths=(), forced: dict | None = None) -> tuple[dict, dict]:
    """One forward on ``x``: input sides of the σ layers in ``layer_paths`` and of the sites, output
    sides of the sites. With ``forced`` ({site: output side}) every site's output is resized to that side."""
    ins: dict[str, tuple] = {}
    outs: dict[str, tuple] = {}
    handles = []
    for path, m in model.named_modules():
        if isinstance(m, SafeSubsample) or path in layer_paths:
            handles.append(m.register_forward_pre_hook(
                lambda mod, args, path=path: ins.setdefault(path, tuple(args[0].shape[-2:])) and None))
        if isinstance(m, SafeSubsample):
            def hook(mod, args, out, path=path):
                outs.setdefault(path, tuple(out.shape[-2:]))
                if forced is not None and path in forced and tuple(out.shape[-2:]) != forced[path]:
                    return F.interpolate(out, size=forced[path], mode="nearest")
                return None
            handles.append(m.register_forward_hook(hook))
    try:
        model(x)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"rescale: the model does not run on a {x.shape[-2]}×{x.shape[-1]} input ({exc})") from None
    finally:
        for h in handles:
            h.remove()
    return ins, outs


def _zeros(chw, device, dtype) -> torch.Tensor:
    return torch.zeros(1, *chw, device=device, dtype=dtype)


def _classify(model: nn.Module, chw, new_chw, device, dtype) -> tuple[set, set]:
    """Paths of the σ layers and sites that see the input's resolution (their input side follows the input)."""
    paths = set(sigma_layers(model))
    ins1, outs1 = _probe(model, _zeros(chw, device, dtype), paths)
    probe = new_chw if new_chw[1:] != chw[1:] else (chw[0], 2 * chw[1], 2 * chw[2])
    ins2, _ = _probe(model, _zeros(probe, device, dtype), paths, forced=outs1)
    follows = {p for p in ins1 if ins2.get(p) != ins1[p]}
    return follows | (paths - set(ins1)), follows  # a layer the forward never reached: scaled as well


def _needed(m: nn.Module) -> int | None:
    """Filter side σ asks for without a ``max_size`` cap (None for a σ layer of unknown form)."""
    extent = getattr(m.owner if isinstance(m, TiedNJetBranch) else m, "extent", None)
    if extent is None:
        return None
    return 2 * B.half_width(float(m.sigma.detach().max()), extent) + 1


def _capped(m: nn.Module) -> bool:
    if isinstance(m, TiedNJetBranch):
        return bool(m.owner.size_capped[m.index])
    return bool(getattr(m, "size_capped", False))


@torch.no_grad()
def _measure(model: nn.Module, chw, device, dtype) -> tuple[dict, dict, int]:
    """Per σ layer ``(σ, size, MACs)``, per site ``(factor, out side)`` and total MACs at ``chw``."""
    layers = sigma_layers(model)
    x = _zeros(chw, device, dtype)
    model(x)  # warm-up: eval-mode filter caches are not work
    macs = dict.fromkeys(layers, 0)
    open_: dict[str, MacCounter] = {}
    handles = []
    for path, m in layers.items():
        def pre(mod, args, path=path):
            open_[path] = MacCounter().__enter__()

        def post(mod, args, out, path=path):
            c = open_.pop(path)
            c.__exit__(None, None, None)
            macs[path] += c.macs
        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    total = MacCounter()
    try:
        with total:
            _, outs = _probe(model, x)
    finally:
        for h in handles:
            h.remove()
    sizes = {p: m.kernel_size[0] for p, m in layers.items()}  # after the forward: caps are known
    info = {p: (float(m.sigma.detach().mean()), sizes[p], macs[p]) for p, m in layers.items()}
    sites = {p: (m.factor, outs.get(p)) for p, m in model.named_modules() if isinstance(m, SafeSubsample)}
    return info, sites, total.macs


@torch.no_grad()
def _apply(model: nn.Module, f: float, layers_at: set, sites_at: set, min_sigma: float | None) -> tuple[dict, set]:
    """Multiply σ (once per shared parameter; not below ``min_sigma`` unless it was below already) and
    the sites' scales. Returns the factor per σ layer and the paths of the floored layers."""
    layers = sigma_layers(model)
    before = {id(m): float(m.sigma.detach().mean()) for m in layers.values()}
    done: dict[int, tuple[float, str, bool]] = {}
    applied, floored = {}, set()
    for path, m in layers.items():
        s = f if path in layers_at else 1.0
        p = m.scale_parameter()
        if id(p) in done:
            if done[id(p)][0] != s:
                raise ValueError(f"rescale: {path} and {done[id(p)][1]} share one σ but see maps of different "
                                 "resolutions; such a model cannot be rescaled as one")
        else:
            hit = False
            if s != 1.0:
                new = p + math.log(s)
                if min_sigma is not None:
                    floor = torch.minimum(p, torch.full_like(p, math.log(min_sigma)))
                    hit = bool((new < floor - 1e-9).any())
                    new = torch.maximum(new, floor)
                p.copy_(new)
            done[id(p)] = (s, path, hit)
        applied[path] = s
        if done[id(p)][2]:
            floored.add(path)
    scaled_ids = {id(m) for p, m in layers.items() if applied[p] != 1.0}
    for path, site in model.named_modules():
        if not isinstance(site, SafeSubsample):
            continue
        at, src = path in sites_at, site.source
        if src is not None and (id(src) in scaled_ids) != at:
            raise ValueError(f"rescale: the safe-subsampling {path} and its σ source {site.source_name} see maps "
                             "of different resolutions; this model cannot be rescaled")
        if at:
            site.scale *= f
            # the source's σ grew by f, or less where it hit the floor: the factor follows what it got
            site.sigma_scale *= f if src is None else float(src.sigma.detach().mean()) / before[id(src)]
            site.invalidate()
    return applied, floored


def _no_sigma(model: nn.Module, f: float, input_size, min_sigma, inplace: bool) -> tuple[nn.Module, RescaleReport]:
    from .bake import FactorisedConv2d, FixedSubsample, bake
    from .bake_record import BAKE_RECORD_ATTR, BAKED_ATTR, unbake

    baked = hasattr(model, BAKE_RECORD_ATTR) or getattr(model, BAKED_ATTR, False) or any(isinstance(m, (FixedSubsample, FactorisedConv2d))
                                                     for m in model.modules())
    if not baked:
        raise ValueError(f"rescale: {type(model).__name__} has no σ layer (no N-Jet layer) to rescale; convert "
                         "it first (njetify.convert(model, ...)), fine-tune it, then rescale")
    try:
        converted = unbake(model)
    except ValueError as exc:
        raise ValueError(f"rescale: {exc}") from None
    out, report = rescale(converted, f, input_size=input_size, min_sigma=min_sigma, inplace=True)
    report.baked = True
    rebaked = bake(out, inplace=True)
    if inplace:
        raise ValueError("rescale: a baked model is rebuilt from its record, so it cannot be rescaled in place; "
                         "call rescale(model, factor) and use the returned model")
    return rebaked, report


def rescale(model: nn.Module, factor: float, *, input_size=None, min_sigma: float | None = MIN_SIGMA,
            inplace: bool = False) -> tuple[nn.Module, RescaleReport]:
    """Move a converted model to inputs ``factor`` times larger (``factor < 1``: smaller); returns
    ``(model, report)``.

    Args:
        model: a converted model (:func:`njetify.convert`, :func:`njetify.load`, fine-tuned or not), or one
            baked by :func:`njetify.bake.bake` that still holds its bake record (it is rebuilt, rescaled and
            baked again).
        factor: new input side / old input side, > 0 and finite (2: inputs twice as large).
        input_size: ``(C, H, W)`` or ``"CxHxW"`` the model runs at now (default: its conversion's example
            input, times any earlier rescale factor).
        min_sigma: floor in pixels for a σ that shrinks (``factor < 1``): below about 0.5 px the sampled
            Gaussian derivatives vanish (docs/resolution.md), so σ stops there (a σ already below stays);
            the safe-subsampling still follows the factor. None: no floor.
        inplace: change ``model`` itself (default: a deep copy).

    σ of the layers at the input's resolution is multiplied by ``factor``, and so is the ``scale`` of
    the safe-subsampling sites there (module docstring); the model's resolution record (saved by
    :func:`njetify.save`, shown by ``njetify inspect``) is updated. A filter that would exceed its layer's
    ``max_size`` is capped, and one that would fall below ``min_sigma`` is held there: a warning names
    the layers, the report's ``limit`` column marks them.

    Raises ``ValueError`` for a factor ≤ 0, not finite or not a number, for a model without σ layers
    (with how to rescale a baked model), or when the model does not run at the new size.
    """
    f = _check_factor(factor)
    if not isinstance(model, nn.Module):
        raise TypeError(f"rescale: model must be an nn.Module, got {type(model).__name__}")
    if min_sigma is not None:
        min_sigma = _check_factor(min_sigma, "min_sigma")
    if not sigma_layers(model):
        return _no_sigma(model, f, input_size, min_sigma, inplace)
    chw = _input_chw(model, input_size)
    new_chw = (chw[0], scaled_side(chw[1], f), scaled_side(chw[2], f))
    work = model if inplace else copy.deepcopy(model)
    p = next(work.parameters())
    device, dtype = p.device, p.dtype
    old = resolution_of(work)
    with evaluating(work), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the layers' own cap warnings: one warning below names them all
        layers_at, sites_at = _classify(work, chw, new_chw, device, dtype)
        before, sites_before, macs_before = _measure(work, chw, device, dtype)
        applied, floored = _apply(work, f, layers_at, sites_at, min_sigma)
        after, sites_after, macs_after = _measure(work, new_chw, device, dtype)
    layers = sigma_layers(work)
    report = RescaleReport(f, old.factor * f, chw, new_chw, macs_before=macs_before, macs_after=macs_after)
    for path, m in layers.items():
        (s0, k0, m0), (s1, k1, m1) = before[path], after[path]
        report.layers.append(LayerRescale(path, applied[path], s0, s1, k0, k1, _needed(m), _capped(m), m0, m1,
                                          path in floored))
    for path, site in work.named_modules():
        if isinstance(site, SafeSubsample):
            report.sites.append(SiteRescale(path, site.scale, sites_before[path][0], sites_after[path][0],
                                            sites_before[path][1], sites_after[path][1], site.sigma_scale))
    base = old.base_size or (scaled_side(chw[1], 1 / old.factor), scaled_side(chw[2], 1 / old.factor))
    setattr(work, RESOLUTION_ATTR, ResolutionRecord(old.factor * f, base, site_scales(work)))
    if report.capped:
        names = ", ".join(f"{r.path} (needs {r.needed} px, capped at {r.size_after})" for r in report.layers if r.capped)
        warnings.warn(f"rescale: {len(report.capped)} filter(s) exceed their layer's max_size and are capped, so "
                      f"they see less than at the old resolution: {names}; raise max_size (recipe max_size) to "
                      "lift the cap", stacklevel=2)
    if floored:
        names = ", ".join(f"{r.path} (σ {r.sigma_before:.3g} × {f:.3g} = {r.sigma_before * f:.3g})"
                          for r in report.layers if r.floored)
        warnings.warn(f"rescale: {len(floored)} σ would fall below min_sigma={min_sigma:g} px, where the sampled "
                      f"Gaussian derivatives vanish, and are held there (the subsampling still follows): {names}; "
                      "pass min_sigma=None for no floor", stacklevel=2)
    if not sites_at and report.sites:
        report.notes.append("no safe-subsampling site sees the input's resolution: the maps stay ×"
                            f"{f:.4g} larger all the way")
    refresh_sizes(work)  # filter sizes read now: a compile or export may come before any eager forward
    return work, report
