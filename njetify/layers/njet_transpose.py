"""NJetConvTranspose2d: a transposed convolution whose filter is an N-Jet filter at a learned σ.

``nn.ConvTranspose2d`` spreads every input pixel over the output with a k×k kernel, placed every
``stride`` pixels (learned upsampling in U-Nets, FCNs, GAN generators). Here the kernel is
``W[c, o] = Σ_f α[c, o, f] · B_f(σ)`` (the basis of :func:`njetify.basis.gaussian_basis_2d`), of
size ``s = 2·⌈extent·σ⌉ + 1`` that follows σ.

Geometry (exact at σ₀). The layer keeps the original's output size rule
``L' = (L−1)·stride − 2·padding + k + output_padding`` and its alignment: tap ``a`` of the
original kernel sits at offset ``a − ⌊(k−1)/2⌋`` from the centre of the odd N-Jet filter (an even
2×2 kernel is embedded in the 3×3 grid). The layer computes the full transposed convolution
(``(L−1)·stride + s`` pixels) and crops or zero-pads it to ``L'`` pixels starting at
``padding + h − ⌊(k−1)/2⌋`` (h: the filter's half-width). With α the fit of the original kernel
the outputs equal the original's wherever the fit is exact, for every σ the window stays centred.

The upsampling factor stays ``stride`` (a transposed conv's zero insertion is what its pretrained
kernel was trained with); where its output meets an encoder map, the surgery follows it with a
:class:`~njetify.layers.SafeUpsample` that resizes to that map's size, so the decoder follows the
encoder's σ (DESIGN §9).

Shapes: ``(N, in_channels, H, W)`` → ``(N, out_channels, H', W')``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import basis as B
from ..fit import sigma_from_kernel, weight_space_fit
from ._checks import check_layer, check_positive
from ._fx import leaf_or
from .njet_convert import fitted_from
from .functional import njet_filter
from .protocol import SigmaModule
from .sizes import HostSizes


def baked_output_padding(kernel: int, output_padding: int) -> int:
    """output_padding of the baked ConvTranspose2d of a layer built for a k×k kernel (any σ):
    ``k + output_padding − 1 − 2·⌊(k−1)/2⌋`` (an even kernel needs one pixel more)."""
    return kernel + output_padding - 1 - 2 * ((kernel - 1) // 2)


def transpose_kind(conv) -> str | None:
    """``"ok"`` when ``conv`` can become an NJetConvTranspose2d, else the reason (None: not one)."""
    if not isinstance(conv, nn.ConvTranspose2d):
        return None
    kh, kw = conv.kernel_size
    if kh != kw:
        return f"non-square kernel {kh}x{kw}"
    if conv.stride[0] != conv.stride[1]:
        return f"non-square stride {conv.stride}"
    if conv.padding[0] != conv.padding[1] or conv.output_padding[0] != conv.output_padding[1]:
        return f"asymmetric padding {conv.padding} / output_padding {conv.output_padding}"
    if max(conv.dilation) > 1:
        return f"dilation {conv.dilation} (a dilated kernel's taps are not an N-Jet filter)"
    if baked_output_padding(kh, conv.output_padding[0]) >= conv.stride[0]:
        return (f"output_padding {conv.output_padding[0]} with an even {kh}x{kh} kernel: the odd N-Jet filter "
                f"would need an output_padding ≥ stride {conv.stride[0]} (not a ConvTranspose2d)")
    if kh == 1 and conv.stride[0] == 1:
        return "1x1 kernel (pointwise: nothing to learn about scale)"
    if type(conv).forward is not nn.ConvTranspose2d.forward:
        return f"{type(conv).__name__} has its own forward (semantics unknown to njetify)"
    return "ok"


class NJetConvTranspose2d(HostSizes, SigmaModule):
    """Transposed 2-D N-Jet convolution (see the module doc for the geometry).

    Args:
        in_channels, out_channels, stride, groups, bias: as in ``nn.ConvTranspose2d``.
        order: derivative order N; F = (N+1)(N+2)/2 basis filters.
        sigma: initial σ in pixels (None: σ₀ of ``kernel``, ``(k−1)/(2·extent)``).
        kernel, padding, output_padding: the original's ``kernel_size``, ``padding`` and
            ``output_padding``: they fix the output size and alignment (not the filter size).
        extent, learn_sigma, max_size: as for :class:`~njetify.layers.NJetConv2d`.
    """

    transposed = True  # read by the surgery's analysis: an upsampling, like nn.ConvTranspose2d

    def __init__(self, in_channels: int, out_channels: int, order: int = 3, sigma: float | None = None,
                 extent: float = 2.0, stride: int = 2, groups: int = 1, bias: bool = True, *,
                 kernel: int = 2, padding: int = 0, output_padding: int = 0, learn_sigma: bool = True,
                 max_size: int | None = None, device=None, dtype=None):
        super().__init__()
        check_layer(order, in_channels, out_channels, groups, extent)
        for name, v, low in (("stride", stride, 1), ("kernel", kernel, 1), ("padding", padding, 0),
                             ("output_padding", output_padding, 0)):
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"NJetConvTranspose2d: {name} must be an int ≥ {low}, got {v!r}")
        if max_size is not None and (not isinstance(max_size, int) or max_size < 1):
            raise ValueError(f"NJetConvTranspose2d: max_size must be a positive int or None, got {max_size!r}")
        sigma = sigma_from_kernel(kernel, 1, extent) if sigma is None else float(sigma)
        check_positive("sigma", sigma)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.order, self.extent, self.stride, self.max_size = order, float(extent), stride, max_size
        self.kernel, self.pad, self.output_padding = kernel, padding, output_padding
        self.learn_sigma, self.fit_error = learn_sigma, None
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        self.alpha = nn.Parameter(torch.empty(in_channels, out_channels // groups, B.num_basis(order), **factory))
        self.log_sigma = nn.Parameter(torch.tensor([math.log(sigma)], **factory), requires_grad=learn_sigma)
        self.bias = nn.Parameter(torch.zeros(out_channels, **factory)) if bias else None
        bound = 1.0 / math.sqrt(self.alpha.shape[1] * self.alpha.shape[2])
        nn.init.uniform_(self.alpha, -math.sqrt(3.0) * bound, math.sqrt(3.0) * bound)
        self._start_sizes(f"NJetConvTranspose2d({in_channels}→{out_channels})", "max")

    # -------------------------------------------------------------- σ protocol
    @property
    def half_width(self) -> int:
        """Half-width h of the filter at the current σ (after the ``max_size`` cap; a host-side int,
        :mod:`njetify.layers.sizes`)."""
        return self.current_halves()[0][0]

    @property
    def size_capped(self) -> bool:
        """Whether ``max_size`` cut the filter σ asks for."""
        return self.current_halves()[1][0]

    @property
    def kernel_size(self) -> tuple[int, int]:
        s = B.size_of(self.half_width)
        return (s, s)

    def basis(self) -> torch.Tensor:
        """The basis at the current σ: ``(F, s, s)``."""
        return B.gaussian_basis_2d(self.sigma[0], self.order, self.half_width)

    def describe(self) -> dict:
        """Summary row (:meth:`SigmaModule.describe`): ``N-Jet transposed N=order ×stride``."""
        info = super().describe()
        info.update(op=f"N-Jet transposed N={self.order} ×{self.stride}", sigma=float(self.sigma.detach()))
        return info

    def filters(self) -> torch.Tensor:
        """The transposed-conv weight ``(in_channels, out_channels/groups, s, s)``."""
        return njet_filter(self.alpha, self.sigma[0], self.half_width)

    # ---------------------------------------------------------------- forward
    def crop_start(self, size: int) -> int:
        """First pixel of the full transposed output the layer keeps, for an ``size``-px filter."""
        return self.pad + (size - 1) // 2 - (self.kernel - 1) // 2

    def output_length(self, length: int) -> int:
        """Output side for an input side of ``length`` (the original ConvTranspose2d's rule)."""
        return (length - 1) * self.stride - 2 * self.pad + self.kernel + self.output_padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return leaf_or(self, x, self.convolve)

    def convolve(self, x: torch.Tensor) -> torch.Tensor:
        """The transposed convolution (``(N, C_in, H, W)`` → ``(N, C_out, H', W')``)."""
        w = self.filters()
        full = F.conv_transpose2d(x, w, None, self.stride, 0, 0, self.groups)
        c = self.crop_start(w.shape[-1])
        oh, ow = self.output_length(x.shape[-2]), self.output_length(x.shape[-1])
        y = F.pad(full, [-c, ow + c - full.shape[-1], -c, oh + c - full.shape[-2]])  # negative: crop
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, order={self.order}, sigma={float(self.sigma.detach()):.4g}, "
                f"size={self.kernel_size[0]}, stride={self.stride}, kernel={self.kernel}, padding={self.pad}, "
                f"output_padding={self.output_padding}" + (f", groups={self.groups}" if self.groups > 1 else ""))

    # ------------------------------------------------------------- conversion
    @classmethod
    def from_conv(cls, conv: nn.ConvTranspose2d, order: int = 3, sigma: float | None = None, extent: float = 2.0,
                  **kwargs) -> "NJetConvTranspose2d":
        """The N-Jet form of ``conv``: σ₀ from its kernel size (unless ``sigma``), α its weight-space
        fit (``.fit_error``), its bias. Raises ValueError when :func:`transpose_kind` says it cannot."""
        kind = transpose_kind(conv)
        if kind != "ok":
            raise ValueError(f"NJetConvTranspose2d.from_conv: cannot convert {conv!r}: {kind or 'not a ConvTranspose2d'}")
        layer = cls(conv.in_channels, conv.out_channels, order, sigma, extent, conv.stride[0], conv.groups,
                    conv.bias is not None, kernel=conv.kernel_size[0], padding=conv.padding[0],
                    output_padding=conv.output_padding[0], device=conv.weight.device, dtype=conv.weight.dtype,
                    **kwargs)
        return fitted_from(layer, conv)

    @torch.no_grad()
    def fit_(self, kernel: torch.Tensor) -> float:
        """α ← the least-squares fit of ``kernel (C_in, C_out/groups, k, k)`` at the current σ; the relative error."""
        if kernel.shape[-1] != self.kernel:
            raise ValueError(f"NJetConvTranspose2d.fit_: the kernel is {kernel.shape[-1]} px, the layer's "
                             f"geometry is built for {self.kernel}")
        alpha, err = weight_space_fit(kernel, self.basis())
        self.alpha.copy_(alpha)
        self.fit_error = err
        return err

    @torch.no_grad()
    def baked(self) -> nn.ConvTranspose2d:
        """A plain ``nn.ConvTranspose2d`` with the current filter and the same outputs.

        Its padding is the crop start and its output_padding what the crop leaves on the far
        side; where that is not a valid ConvTranspose2d (the filter shrank below the original's
        alignment) a ValueError names the layer's numbers."""
        w = self.filters().detach().clone()
        s = w.shape[-1]
        c = self.crop_start(s)
        op = self.output_length(1) + 2 * c - s  # (L−1)·stride − 2c + s + op = the layer's output side
        if c < 0 or not 0 <= op < max(self.stride, 1):
            raise ValueError(f"NJetConvTranspose2d.baked: a {s} px filter with crop {c} and output_padding {op} "
                             f"is no nn.ConvTranspose2d (stride {self.stride})")
        conv = nn.ConvTranspose2d(self.in_channels, self.out_channels, s, self.stride, c, op, self.groups,
                                  self.bias is not None, device=w.device, dtype=w.dtype)
        conv.weight.copy_(w)
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        return conv.train(self.training)
