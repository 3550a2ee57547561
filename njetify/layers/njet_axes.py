"""NJetAxesConv2d: an N-Jet convolution with one σ per axis (non-square kernels, DESIGN §9).

Inception-style factorised convolutions (1×7 then 7×1) and other ``k_y × k_x`` kernels have a
different extent along each axis. Here the filter is

    ``W[o, c](y, x) = Σ_f α[o, c, f] · G^(j_f)(y; σ_y) · G^(i_f)(x; σ_x)``

(the separable basis of :mod:`njetify.basis`, one σ per axis), ``s_y × s_x`` pixels with
``s = 2⌈extent·σ⌉ + 1`` per axis. **σ = 0 on an axis means no extent along it**: the filter is
1 pixel wide there and only the order-0 "delta" is used along that axis, so a converted 1×k
conv has the basis ``G^(i)(x; σ_x)``, ``i ≤ N`` (N+1 filters) and stays 1×s_x for every σ_x.
With both σ > 0 the basis has the ``(N+1)(N+2)/2`` products with ``i + j ≤ N``.

σ₀ per axis is the kernel rule ``(k−1)/(2·extent)`` (1 → 0). Only the axes with extent learn σ:
``log_sigma`` holds ``(σ_y, σ_x)`` with both, one value with one. Padding keeps the original's
output size per axis (``trim`` per axis, as in :class:`~njetify.layers.NJetConv2d`). α is fitted
to the pretrained kernel in weight space (:meth:`fit_`); output-matching calibration goes
through :class:`njetify.calibration.units.AxesUnit`. :meth:`to_conv` bakes it back to an
``s_y × s_x`` ``nn.Conv2d``.

Shapes: ``(N, in_channels, H, W)`` → ``(N, out_channels, H', W')``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..fit import sigma_from_kernel
from .. import basis as B
from ._checks import check_layer, check_positive
from ._fx import leaf_or
from .njet_convert import fitted_from
from .functional import combine_basis, dense_conv2d
from .protocol import SigmaModule
from .sizes import HostSizes


def axis_orders(order: int, axes: tuple[bool, bool]) -> tuple[tuple[int, int], ...]:
    """``(i, j)`` (x-order, y-order) of each basis filter: all ``i + j ≤ order`` with both axes,
    ``(i, 0)`` with x only, ``(0, j)`` with y only (``axes = (y has extent, x has extent)``)."""
    if axes == (True, True):
        return B.basis_orders(order)
    if axes == (False, True):
        return tuple((i, 0) for i in range(order + 1))
    if axes == (True, False):
        return tuple((0, j) for j in range(order + 1))
    raise ValueError("NJetAxesConv2d: at least one axis needs σ > 0 (a 1×1 kernel has no scale)")


def axes_kind(conv: nn.Module, per_axis="auto") -> str | None:
    """``"ok"`` when ``conv`` becomes an NJetAxesConv2d under ``per_axis`` (the recipe's
    ``sigma_per_axis``), None when it is not that layer's job (a square kernel without
    ``per_axis=True``, not a Conv2d), else the reason it stays a conv."""
    if type(conv) is not nn.Conv2d:
        return None
    (ky, kx), (dy, dx) = conv.kernel_size, conv.dilation
    square = ky == kx
    if square and per_axis is not True:
        return None
    if not square and per_axis is False:
        return f"non-square kernel {ky}x{kx} (recipe sigma_per_axis: false)"
    if ky == kx == 1:
        return None
    if ky % 2 == 0 or kx % 2 == 0:
        return f"even kernel {ky}x{kx} (N-Jet filters are odd-sized and centred)"
    if (dy, dx) != (1, 1):
        return f"dilation {conv.dilation} with one σ per axis (not supported: stays a conv)"
    if conv.stride[0] != conv.stride[1]:
        return f"non-square stride {conv.stride}"
    if square and conv.stride[0] != 1:
        return None  # strided square kernels keep one σ (their safe-subsampling follows one σ)
    if isinstance(conv.padding, str) and conv.padding not in ("same", "valid"):
        return f"padding {conv.padding!r}"
    return "ok"


class NJetAxesConv2d(HostSizes, SigmaModule):
    """2-D N-Jet convolution with a σ per axis (module doc).

    Args:
        in_channels, out_channels, stride, groups, bias, padding_mode: as in ``nn.Conv2d``
            (one stride for both axes).
        order: highest derivative order N (total order with both axes, along the one axis otherwise).
        sigma: ``(σ_y, σ_x)`` in pixels, each ≥ 0; 0: no extent along that axis (1 px wide).
        extent: filter half-width in units of σ (per axis).
        learn_sigma: the σ of the axes with extent are trained.
        max_size: cap on the filter size per axis in pixels (None: no cap).
        trim: ``(t_y, t_x)`` pixels per side by which the output is smaller than "same".
    """

    def __init__(self, in_channels: int, out_channels: int, order: int = 3, sigma=(1.0, 1.0), extent: float = 2.0,
                 stride: int = 1, groups: int = 1, bias: bool = True, learn_sigma: bool = True,
                 max_size: int | None = None, padding_mode: str = "zeros", *, trim=(0, 0), device=None, dtype=None):
        super().__init__()
        check_layer(order, in_channels, out_channels, groups, extent, padding_mode)
        if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
            raise ValueError(f"NJetAxesConv2d: stride must be a positive int, got {stride!r}")
        if max_size is not None and (not isinstance(max_size, int) or max_size < 1):
            raise ValueError(f"NJetAxesConv2d: max_size must be a positive int or None, got {max_size!r}")
        try:
            sy, sx = (float(v) for v in sigma)
        except (TypeError, ValueError):
            raise TypeError(f"NJetAxesConv2d: sigma must be a pair (σ_y, σ_x) of numbers ≥ 0, got {sigma!r}") from None
        if not (sy >= 0 and sx >= 0 and math.isfinite(sy) and math.isfinite(sx)):
            raise ValueError(f"NJetAxesConv2d: sigma must be finite and ≥ 0 per axis, got {sigma!r}")
        self.axes = (sy > 0, sx > 0)
        self.pairs = axis_orders(order, self.axes)
        self.in_channels, self.out_channels, self.order, self.extent = in_channels, out_channels, order, float(extent)
        self.stride, self.groups, self.max_size, self.padding_mode = stride, groups, max_size, padding_mode
        self.trim = (int(trim[0]), int(trim[1]))
        self.learn_sigma, self.fit_error = learn_sigma, None
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        active = [v for v, a in zip((sy, sx), self.axes) if a]
        self.alpha = nn.Parameter(torch.empty(out_channels, in_channels // groups, len(self.pairs), **factory))
        self.log_sigma = nn.Parameter(torch.tensor(active, dtype=torch.float64).log().to(**factory),
                                      requires_grad=learn_sigma)
        self.bias = nn.Parameter(torch.zeros(out_channels, **factory)) if bias else None
        bound = 1.0 / math.sqrt(self.alpha.shape[1] * self.alpha.shape[2])
        nn.init.uniform_(self.alpha, -math.sqrt(3.0) * bound, math.sqrt(3.0) * bound)
        self._start_sizes(f"NJetAxesConv2d({in_channels}→{out_channels})", "each")

    # -------------------------------------------------------------- σ protocol
    @property
    def sigma_axes(self) -> tuple[float, float]:
        """``(σ_y, σ_x)`` in pixels, 0 on an axis without extent (host floats, for reports)."""
        vals = iter(self.sigma.detach().tolist())
        return tuple(next(vals) if a else 0.0 for a in self.axes)

    @property
    def halves(self) -> tuple[int, int]:
        """Half-widths ``(h_y, h_x)`` now (0 on an axis without extent; host-side ints)."""
        hs = iter(self.current_halves()[0])
        return tuple(next(hs) if a else 0 for a in self.axes)

    @property
    def size_capped(self) -> bool:
        """Whether ``max_size`` cut the filter along an axis."""
        return any(self.current_halves()[1])

    @property
    def kernel_size(self) -> tuple[int, int]:
        """Current filter size ``(s_y, s_x)`` in pixels."""
        hy, hx = self.halves
        return (2 * hy + 1, 2 * hx + 1)

    def basis(self) -> torch.Tensor:
        """The basis at the current σ: ``(F, s_y, s_x)``, in the order of :func:`axis_orders`."""
        hy, hx = self.halves
        sig = iter(self.sigma.unbind(0))
        one = self.alpha.new_ones(1, 1)
        gy = B.gaussian_derivatives_1d(next(sig), self.order, hy) if self.axes[0] else one
        gx = B.gaussian_derivatives_1d(next(sig), self.order, hx) if self.axes[1] else one
        iy = torch.tensor([j for _, j in self.pairs], device=gy.device)
        ix = torch.tensor([i for i, _ in self.pairs], device=gx.device)
        return (gy.index_select(0, iy).unsqueeze(-1) * gx.index_select(0, ix).unsqueeze(-2)).to(self.alpha.dtype)

    def filters(self) -> torch.Tensor:
        """The filter ``(out_channels, in_channels/groups, s_y, s_x)``."""
        b = self.basis()
        return combine_basis(self.alpha, b.flatten(1)).view(*self.alpha.shape[:2], *b.shape[-2:])

    @property
    def weight(self) -> torch.Tensor:
        """The current filter (read-only, computed from α and σ)."""
        return self.filters()

    # ---------------------------------------------------------------- forward
    def pads(self) -> list[int]:
        """``[left, right, top, bottom]`` for the current filter (negative: crop)."""
        hy, hx = self.halves
        px, py = hx - self.trim[1], hy - self.trim[0]
        return [px, px, py, py]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return leaf_or(self, x, self.convolve)

    def convolve(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution (``(N, C_in, H, W)`` → ``(N, C_out, H', W')``; the layer carries no subsampling)."""
        return dense_conv2d(x, self.filters(), self.bias, self.pads(), self.stride, self.groups, self.padding_mode)

    def extra_repr(self) -> str:
        sy, sx = self.sigma_axes
        txt = lambda v: f"{v:.3g}" if v else "0 (1 px)"  # noqa: E731
        s = [f"{self.in_channels}, {self.out_channels}, order={self.order}, sigma=(y {txt(sy)}, x {txt(sx)})",
             "size={}x{}".format(*self.kernel_size)]
        if self.stride != 1:
            s.append(f"stride={self.stride}")
        if self.groups != 1:
            s.append(f"groups={self.groups}")
        if self.trim != (0, 0):
            s.append(f"trim={self.trim}")
        if self.max_size is not None:
            s.append(f"max_size={self.max_size}")
        if not self.learn_sigma:
            s.append("learn_sigma=False")
        return ", ".join(s)

    # ------------------------------------------------------------- conversion
    @classmethod
    def from_conv(cls, conv: nn.Conv2d, order: int = 3, sigma: float | None = None, extent: float = 2.0,
                  per_axis="auto", **kwargs) -> "NJetAxesConv2d":
        """The per-axis N-Jet form of ``conv``: σ₀ per axis ``(k−1)/(2·extent)`` (``sigma``: the mean σ of
        the axes with extent, their ratio kept), α its weight-space fit (``.fit_error``), its bias. Raises ValueError
        when :func:`axes_kind` says it cannot (``per_axis=True`` to convert a square kernel)."""
        kind = axes_kind(conv, True if per_axis is True else "auto")
        if kind != "ok":
            raise ValueError(f"NJetAxesConv2d.from_conv: cannot convert {conv!r}: {kind or 'a square kernel'}")
        ks = conv.kernel_size
        sig = [sigma_from_kernel(k, 1, extent) for k in ks]
        if sigma is not None:  # the mean σ of the axes with extent (their ratio kept: a 3×5 kernel stays wider in x)
            check_positive("sigma", sigma)
            active = [s for s in sig if s > 0]
            sig = [s * float(sigma) * len(active) / sum(active) for s in sig]
        if conv.padding == "same":
            trim = (0, 0)
        elif conv.padding == "valid":
            trim = ((ks[0] - 1) // 2, (ks[1] - 1) // 2)
        else:
            trim = ((ks[0] - 1) // 2 - conv.padding[0], (ks[1] - 1) // 2 - conv.padding[1])
        layer = cls(conv.in_channels, conv.out_channels, order, sig, extent, conv.stride[0], conv.groups,
                    conv.bias is not None, padding_mode=conv.padding_mode, trim=trim, device=conv.weight.device,
                    dtype=conv.weight.dtype, **kwargs)
        return fitted_from(layer, conv)

    @torch.no_grad()
    def fit_(self, kernel: torch.Tensor) -> float:
        """α ← the least-squares fit of ``kernel (O, C/groups, k_y, k_x)`` at the current σ (float64,
        both centred on a common grid); returns and stores ``‖αB − W‖ / ‖W‖``."""
        if kernel.shape[:2] != self.alpha.shape[:2]:
            raise ValueError(f"NJetAxesConv2d.fit_: kernel {tuple(kernel.shape)} does not match the layer's "
                             f"({self.out_channels}, {self.in_channels // self.groups}, ·, ·)")
        b = self.basis().double()
        gy, gx = max(b.shape[-2], kernel.shape[-2]), max(b.shape[-1], kernel.shape[-1])
        bg = _centre(b, gy, gx).flatten(1)  # (F, G)
        w = _centre(kernel.double(), gy, gx).flatten(2)  # (O, Cg, G)
        alpha = w @ bg.T @ torch.linalg.pinv(bg @ bg.T)
        err = float((alpha @ bg - w).norm() / w.norm().clamp_min(1e-30))
        self.alpha.copy_(alpha.to(self.alpha.dtype))
        self.fit_error = err
        return err

    @torch.no_grad()
    def to_conv(self) -> nn.Conv2d:
        """A plain ``s_y × s_x`` ``nn.Conv2d`` with the current filter: the same outputs."""
        w = self.filters().detach().clone()
        left, _, top, _ = self.pads()
        if left < 0 or top < 0:
            raise ValueError(f"NJetAxesConv2d.to_conv: the filter {tuple(w.shape[-2:])} is smaller than the trim "
                             f"{self.trim}")
        conv = nn.Conv2d(self.in_channels, self.out_channels, tuple(w.shape[-2:]), self.stride, (top, left),
                         groups=self.groups, bias=self.bias is not None, padding_mode=self.padding_mode,
                         device=w.device, dtype=w.dtype)
        conv.weight.copy_(w)
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        return conv.train(self.training)

    def baked(self) -> nn.Conv2d:
        """The layer without σ: :meth:`to_conv`."""
        return self.to_conv()


def _centre(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad the last two (odd) dims of ``t`` to ``height × width``, centred."""
    py, px = (height - t.shape[-2]) // 2, (width - t.shape[-1]) // 2
    return torch.nn.functional.pad(t, (px, px, py, py))
