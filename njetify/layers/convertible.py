"""Which modules the surgery converts, and how: one table, module type → :class:`Converter`.

The conv pass, the ASPP analysis, the subsampling sites, the tracer's leaf modules, the layers'
``from_conv`` and the command line's layer count all ask this table (:func:`conv_kind`,
:func:`converter_for`, :func:`is_convertible`, :func:`leaf_types`), so "which convs convert" is
answered in one place. A new σ layer type is one file with its class and one
:func:`register_converter` call (docs/surgery.md, "Adding a layer type").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

__all__ = ["Converter", "conv_kind", "converter_for", "is_convertible", "leaf_types", "register_converter"]


@dataclass(frozen=True)
class Converter:
    """How modules of type ``source`` (and its subclasses, unless they have their own entry) convert.

    ``check(module)``: ``"ok"`` when it converts, else the reason it stays (a report row's reason).
    ``build(module, settings, order, sigma)``: the σ layer replacing it (``settings``: the recipe's
    :class:`~njetify.recipes.schema.LayerSettings` for its path; ``order``: the derivative order, the
    recipe's depthwise order already applied; ``sigma``: σ₀ in pixels, None for the layer's own
    rule); None: never converted (only reported). ``kind``: what :func:`conv_kind` answers for a
    module that converts. ``layers``: the σ layer types it builds (never traced through).
    ``calibrated``: the calibration engine refits its layers (a layer of your own is gated and
    refitted only once :mod:`njetify.calibration` knows it).
    """

    source: type
    check: Callable[[nn.Module], str]
    build: Callable[..., nn.Module] | None = None
    kind: str = "ok"
    layers: tuple[type, ...] = ()
    calibrated: bool = False


_TABLE: dict[type, Converter] = {}
_LEAVES: list[tuple[type, ...]] = [()]  # leaf_types(), rebuilt at each registration


def register_converter(converter: Converter) -> Converter:
    """Add (or replace) the entry of ``converter.source``; returns ``converter``."""
    if not isinstance(converter, Converter):
        raise TypeError(f"register_converter: expected a Converter, got {type(converter).__name__}")
    if not (isinstance(converter.source, type) and issubclass(converter.source, nn.Module)):
        raise TypeError(f"register_converter: source must be an nn.Module subclass, got {converter.source!r}")
    _TABLE[converter.source] = converter
    _LEAVES[0] = tuple(dict.fromkeys(t for c in _TABLE.values() for t in (c.source, *c.layers)))
    return converter


def converter_for(module: nn.Module) -> Converter | None:
    """The entry of the closest registered class in ``type(module)``'s MRO (None: not a conv of the table)."""
    for cls in type(module).__mro__:
        found = _TABLE.get(cls)
        if found is not None:
            return found
    return None


def conv_kind(conv) -> str | None:
    """``"ok"`` when ``conv`` can become an N-Jet layer, ``"transposed"`` when it is an
    ``nn.ConvTranspose2d`` that can become an :class:`~njetify.layers.NJetConvTranspose2d` (a
    registered type of your own: its converter's ``kind``), else the reason it cannot (None: not a
    conv of the table).

    Subclasses of ``nn.Conv2d`` with their own forward are accepted only when their
    semantics are known (timm's ``Conv2dSame``: TensorFlow "SAME" padding) or registered.
    """
    converter = converter_for(conv)
    if converter is None:
        return None
    if isinstance(conv, nn.modules.lazy.LazyModuleMixin) and conv.has_uninitialized_params():
        return "a lazy conv whose shapes are not known yet: run the model once on an input before converting"
    why = converter.check(conv)
    return converter.kind if why == "ok" else why


def is_convertible(module: nn.Module, per_axis="auto") -> bool:
    """Whether the conv pass turns ``module`` into a σ layer: its converter builds one and its check says
    "ok", or it becomes an NJetAxesConv2d under the recipe's ``sigma_per_axis`` (``per_axis``)."""
    from .njet_axes import axes_kind

    if axes_kind(module, per_axis) == "ok":
        return True
    converter = converter_for(module)
    return converter is not None and converter.build is not None and converter.check(module) == "ok"


def leaf_types() -> tuple[type, ...]:
    """The registered source types and the σ layer types they build: modules torch.fx never traces through."""
    return _LEAVES[0]


def _conv2d_check(conv: nn.Conv2d) -> str:
    kh, kw = conv.kernel_size
    if kh != kw:
        return f"non-square kernel {kh}x{kw}"
    if kh == 1:
        return "1x1 kernel (pointwise: nothing to learn about scale)"
    if kh % 2 == 0:
        return f"even kernel {kh}x{kw} (N-Jet filters are odd-sized and centred)"
    if conv.dilation[0] != conv.dilation[1]:
        return f"non-square dilation {conv.dilation}"
    if conv.stride[0] != conv.stride[1]:
        return f"non-square stride {conv.stride}"
    if not isinstance(conv.padding, str) and conv.padding[0] != conv.padding[1]:
        return f"asymmetric padding {conv.padding}"
    custom = type(conv).forward is not nn.Conv2d.forward or type(conv)._conv_forward is not nn.Conv2d._conv_forward
    if custom and type(conv).__module__.startswith("torch.ao.nn.qat"):
        return (f"{type(conv).__name__} is a quantization-aware-training conv (torch.ao.nn.qat): convert the float "
                "model first, then prepare it for QAT")
    if custom and type(conv).__name__ != "Conv2dSame":
        return f"{type(conv).__name__} has its own forward (semantics unknown to njetify)"
    return "ok"


def _transposed_check(conv: nn.ConvTranspose2d) -> str:
    from .njet_transpose import transpose_kind

    kind = transpose_kind(conv)
    return "ok" if kind == "ok" else f"transposed convolution: {kind}"


def _build_njet(conv, settings, order: int, sigma: float | None) -> nn.Module:
    from .njet_conv import NJetConv2d

    new = NJetConv2d.from_conv(conv, order=order, sigma=sigma, extent=settings.extent,
                               learn_sigma=settings.learn_sigma, max_size=settings.max_size)
    return per_channel(new) if settings.sigma_per == "channel" else new


def _build_transposed(conv, settings, order: int, sigma: float | None) -> nn.Module:
    from .njet_transpose import NJetConvTranspose2d

    return NJetConvTranspose2d.from_conv(conv, order=order, sigma=sigma, extent=settings.extent,
                                         learn_sigma=settings.learn_sigma, max_size=settings.max_size)


def per_channel(layer):
    """The same :class:`~njetify.layers.NJetConv2d` with one σ per output channel (all at the layer's σ)."""
    import torch

    from .njet_conv import NJetConv2d

    new = NJetConv2d(
        layer.in_channels, layer.out_channels, order=layer.order, sigma=float(layer.sigma.detach().mean()),
        extent=layer.extent, stride=layer.stride, groups=layer.groups, bias=layer.bias is not None,
        learn_sigma=layer.learn_sigma, sigma_per="channel", max_size=layer.max_size,
        padding_mode=layer.padding_mode, padding=layer.padding, trim=layer.trim,
        device=layer.alpha.device, dtype=layer.alpha.dtype,
    )
    with torch.no_grad():
        new.alpha.copy_(layer.alpha)
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    new.fit_error = layer.fit_error
    return new


def _never(reason: str) -> Callable[[nn.Module], str]:
    return lambda m: reason


register_converter(Converter(nn.Conv2d, _conv2d_check, _build_njet, calibrated=True))
register_converter(Converter(nn.ConvTranspose2d, _transposed_check, _build_transposed, kind="transposed",
                             calibrated=True))
for _cls, _why in ((nn.Conv1d, "1-D convolution"), (nn.Conv3d, "3-D convolution"),
                   (nn.ConvTranspose1d, "1-D transposed convolution"),
                   (nn.ConvTranspose3d, "3-D transposed convolution")):
    register_converter(Converter(_cls, _never(_why)))
