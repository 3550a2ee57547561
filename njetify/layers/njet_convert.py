"""Conversions of :class:`~njetify.layers.NJetConv2d` from and to plain modules (DESIGN §3).

``from_conv``'s constructor arguments, the least-squares fit of α (weight-space or
data-aware, kernels used at their taps only), and the baked forms: a dense ``nn.Conv2d``
or a :class:`~njetify.layers.factorised_conv.FactorisedConv2d`; and :func:`fitted_from`, how the
other σ layers' ``from_conv`` ends.
"""

from __future__ import annotations

import torch
from torch import nn

from ..fit import sigma_from_kernel, weight_errors, weight_space_fit
from .convertible import conv_kind
from . import bake_form
from .factorised_conv import FactorisedConv2d, factorised_macs_per_pixel
from .padding import Conv2dDynamicSame


def layer_args(conv: nn.Conv2d, order: int, sigma: float | None, extent: float, stride: int | None) -> dict:
    """Constructor arguments of the N-Jet layer replacing ``conv`` (σ₀ = d·(k−1)/(2·extent) when None)."""
    kind = conv_kind(conv)
    if kind is None:
        raise TypeError(f"NJetConv2d.from_conv: expected an nn.Conv2d, got {type(conv).__name__}")
    if kind != "ok":
        raise ValueError(f"NJetConv2d.from_conv: cannot convert {conv!r}: {kind}")
    k, d = conv.kernel_size[0], conv.dilation[0]
    if sigma is None:
        sigma = sigma_from_kernel(k, d, extent)
    dense = d * (k - 1) + 1
    if conv.padding == "same":
        trim = 0
    elif conv.padding == "valid":
        trim = (dense - 1) // 2
    else:
        trim = (dense - 1) // 2 - conv.padding[0]
    padding = "dynamic_same" if type(conv).__name__ == "Conv2dSame" else "same"
    return dict(
        in_channels=conv.in_channels, out_channels=conv.out_channels, order=order, sigma=sigma, extent=extent,
        stride=conv.stride[0] if stride is None else stride, groups=conv.groups, bias=conv.bias is not None,
        padding_mode=conv.padding_mode, padding=padding, trim=trim if padding == "same" else 0,
    )


@torch.no_grad()
def fitted_from(layer, conv, **fit_kwargs):
    """``layer`` with α fitted to ``conv.weight`` (weight space, its ``fit_`` with ``fit_kwargs``) and
    ``conv``'s bias copied; returns ``layer``."""
    layer.fit_(conv.weight.detach(), **fit_kwargs)
    if conv.bias is not None:
        layer.bias.copy_(conv.bias)
    return layer


def fit_alpha(layer, kernel: torch.Tensor, dilation: int) -> tuple[torch.Tensor, float]:
    """α ``(O, C/groups, F)`` fitting ``kernel`` at the layer's current σ, and its weight-space error."""
    basis = layer.basis()
    if layer.sigma_per == "channel":  # one basis for all outputs only while all σ are equal
        if not torch.allclose(layer.log_sigma, layer.log_sigma[:1].expand_as(layer.log_sigma)):
            raise ValueError("NJetConv2d.fit_: per-channel σ differ; fitting needs one σ for all outputs "
                             "(fit at sigma_per='layer', then set the σ per channel)")
        basis = basis[0]
    return weight_space_fit(kernel, basis, dilation)


def fit_on_data(layer, conv: nn.Conv2d, inputs):
    """``layer`` with α and bias refitted so its outputs match ``conv``'s on ``inputs`` (the calibration
    engine); ``layer.fit_error`` becomes the weight-space error of that α."""
    from ..calibration.on_inputs import fit_on_inputs  # the engine builds on the layers

    fit_on_inputs([layer], [conv], inputs)
    basis = layer.basis()
    layer.fit_error = weight_errors(layer.alpha, [conv.weight], [conv.dilation[0]],
                                    [basis if basis.dim() == 3 else basis[0]])[0]
    return layer


@torch.no_grad()
def dense_conv(layer) -> nn.Conv2d:
    """The layer as a plain conv with its materialised filter (:class:`Conv2dDynamicSame` for TF "SAME")."""
    w = layer.filters().detach().clone()
    size = w.shape[-1]
    pad = (size - 1) // 2 - layer.trim if layer.padding == "same" else 0
    if pad < 0:
        raise ValueError(f"NJetConv2d.to_conv: the filter ({size} px) is smaller than the trim {layer.trim}")
    conv = (nn.Conv2d if layer.padding == "same" else Conv2dDynamicSame)(
        layer.in_channels, layer.out_channels, size, stride=layer.stride, padding=pad,
        groups=layer.groups, bias=layer.bias is not None, padding_mode=layer.padding_mode,
        device=w.device, dtype=w.dtype,
    )
    conv.weight.copy_(w)
    if layer.bias is not None:
        conv.bias.copy_(layer.bias)
    return conv


@torch.no_grad()
def factorised_conv(layer, order: str | None, reason: str) -> FactorisedConv2d:
    """The layer as a :class:`FactorisedConv2d` (order None: the one with fewer multiply-adds)."""
    per_channel = layer.sigma_per == "channel"
    if order is None:
        order = factorised_macs_per_pixel(layer.in_channels, layer.out_channels, layer.groups,
                                          layer.kernel_size[0], layer.order, per_channel)[1]
    return FactorisedConv2d(layer.basis_1d(), layer.alpha, layer.bias, stride=layer.stride, groups=layer.groups,
                            padding=layer.padding, trim=layer.trim, padding_mode=layer.padding_mode, order=order,
                            reason=reason).train(layer.training)


def baked(layer) -> nn.Module:
    """The layer without σ (:meth:`NJetConv2d.baked`): a dense conv, or the factorised form where it
    is faster (:func:`~njetify.layers.bake_form.choose`); then its carried subsampling, frozen."""
    conv = bake_form.choose(layer.to_conv, layer.to_factorised, in_channels=layer.in_channels,
                            out_channels=layer.out_channels, groups=layer.groups, size=layer.kernel_size[0],
                            order=layer.order, per_channel=layer.sigma_per == "channel",
                            input_shape=None if layer._plan is None else layer._plan[0][0]).train(layer.training)
    if layer.subsample is None:
        return conv
    fixed = layer.subsample.frozen() if hasattr(layer.subsample, "frozen") else layer.subsample
    if type(conv) is nn.Conv2d:
        from .subsampled_conv import SubsampledConv2d

        return SubsampledConv2d.from_conv(conv, fixed).strided_if_exact()
    return nn.Sequential(conv, fixed)
