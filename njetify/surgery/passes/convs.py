"""The conv pass: every module the converter table converts (:mod:`njetify.layers.convertible`) becomes
its σ layer — every square k×k 2-D convolution (k > 1) an NJetConv2d, every square
``nn.ConvTranspose2d`` an NJetConvTranspose2d, a registered type of your own its layer; every odd
non-square plain conv (1×k, k×1; square ones too with the recipe's ``sigma_per_axis: true``) becomes
an NJetAxesConv2d with one σ per axis (a choice that depends on the recipe, made here)."""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from ...layers.convertible import Converter, conv_kind, converter_for
from ...layers.njet_axes import NJetAxesConv2d, axes_kind
from ..context import ConvertedLayer, SurgeryContext
from ..decisions import Conversion
from ..robust import attempt
from ..util import own_params


def describe_conv(m: nn.Module) -> str:
    """Short text of a conv: ``"3x3 s2 d2 g32"`` (class name first when not a plain Conv2d)."""
    k = tuple(getattr(m, "kernel_size", ()))
    s = tuple(getattr(m, "stride", ()))
    d = tuple(getattr(m, "dilation", ()))
    g = getattr(m, "groups", 1)
    txt = "x".join(map(str, k))
    if any(v != 1 for v in s):
        txt += f" s{s[0] if len(set(s)) == 1 else 'x'.join(map(str, s))}"
    if any(v != 1 for v in d):
        txt += f" d{d[0] if len(set(d)) == 1 else 'x'.join(map(str, d))}"
    if g != 1:
        txt += " dw" if g == getattr(m, "in_channels", -1) else f" g{g}"
    name = type(m).__name__
    return txt if name == "Conv2d" else f"{name} {txt}"


def conv_pass(ctx: SurgeryContext) -> None:
    """Swap every convertible convolution not converted yet (tied ASPP branches: pass ``aspp``) for an
    N-Jet layer at the same path(s); one :class:`~njetify.surgery.decisions.Conversion` per conv."""
    for path, m in list(ctx.model.named_modules()):
        converter = converter_for(m)
        if not path or converter is None or path in ctx.converted:
            continue
        ctx.decide(_convert(ctx, path, m, converter))
    per_axis = [d.path for d in ctx.decided(Conversion) if d.per_axis and d.decision == "converted"]
    if per_axis:
        names = ", ".join(per_axis[:5]) + (" ..." if len(per_axis) > 5 else "")
        ctx.note(f"{len(per_axis)} conv(s) converted with one σ per axis (NJetAxesConv2d; recipe "
                 f"sigma_per_axis): {names}")


def convs_done(ctx: SurgeryContext) -> str | None:
    """The ``convs`` pass's ``ensures``: every module of the converter table in the model was decided on
    (converted, kept or skipped with the reason); None when so, else which ones were left."""
    decided = {d.path for d in ctx.decided(Conversion)}
    left = [p for p, m in ctx.model.named_modules()
            if p and converter_for(m) is not None and p not in decided and p not in ctx.converted]
    if not left:
        return None
    return (f"{len(left)} convertible conv(s) were left without a decision ({', '.join(left[:3])}"
            f"{' ...' if len(left) > 3 else ''}): the conv pass must convert, keep or skip each one")


def _convert(ctx: SurgeryContext, path: str, m: nn.Module, converter: Converter) -> Conversion:
    """Convert the conv at ``path`` (through the rewriter) and say what became of it."""
    kind = conv_kind(m)
    base = _base(m, path)
    settings = ctx.recipe.settings_for(path)
    axes = axes_kind(m, settings.sigma_per_axis)  # one σ per axis: "ok", a reason, or None (not its job)
    kind = "axes" if axes == "ok" else (axes or kind)
    if kind not in (converter.kind, "axes") or converter.build is None:
        return replace(base, decision="kept", reason=kind)
    if settings.skip:
        return replace(base, decision="skipped",
                       reason="recipe: convs disabled" if not ctx.recipe.convs else "recipe rule: skip")
    sigma = None if settings.sigma_init in ("kernel", "fit") else float(settings.sigma_init)  # "fit": calibrate pass
    order = settings.order
    groups = getattr(m, "groups", 1)
    if settings.depthwise_order is not None and 1 < groups == getattr(m, "in_channels", 0):  # depthwise
        order = max(order, settings.depthwise_order)
    new = attempt(f"the conversion of {path}", lambda: _njet(m, converter, kind, order, sigma, settings),
                  lambda why: why, ctx.failures)
    if isinstance(new, str):
        return replace(base, reason=new)
    reason = None
    if kind == "transposed" and settings.sigma_per == "channel":
        reason = "one σ per layer (a transposed N-Jet layer has no per-channel σ)"
    if kind == "axes":
        sy, sx = new.sigma_axes
        reason = (f"one σ per axis: σy {sy:.3g}, σx {sx:.3g} px" + (" (0: 1 px along that axis)" if 0 in (sy, sx)
                  else "") + ("; one σ per axis, not per channel" if settings.sigma_per == "channel" else ""))
    new.train(m.training)
    ctx.rewriter.replace(path, new)
    ctx.converted[path] = ConvertedLayer(path, new, m, converter.calibrated)
    if getattr(new, "size_capped", False):
        reason = f"filter capped at max_size={settings.max_size}"
    return replace(base, decision="converted", reason=reason, order=order,
                   sigma0=round(float(new.sigma.detach().mean()), 6), size=max(new.kernel_size),
                   fit_error=getattr(new, "fit_error", None), params_after=own_params(new), per_axis=kind == "axes")


def _njet(m: nn.Module, converter: Converter, kind: str, order: int, sigma: float | None, settings) -> nn.Module:
    """The σ layer replacing conv ``m``: an NJetAxesConv2d (``kind`` "axes"), else built by its entry of
    the converter table."""
    if kind == "axes":
        return NJetAxesConv2d.from_conv(m, order=order, sigma=sigma, extent=settings.extent, per_axis=True,
                                        learn_sigma=settings.learn_sigma, max_size=settings.max_size)
    return converter.build(m, settings, order, sigma)


def _base(m: nn.Module, path: str) -> Conversion:
    """The decision about conv ``m`` before it is made: kept, with its geometry and parameters."""
    def one(v):
        v = tuple(v) if isinstance(v, (tuple, list)) else v
        return v[0] if isinstance(v, tuple) and len(set(v)) == 1 else v

    return Conversion(
        path, op=describe_conv(m), decision="kept",
        kernel=one(m.kernel_size), stride=one(m.stride), dilation=one(m.dilation), groups=m.groups,
        params_before=own_params(m), params_after=own_params(m), layer_class=type(m).__name__,
    )
