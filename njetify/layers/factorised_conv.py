"""FactorisedConv2d: a frozen N-Jet layer as plain 1-D convolutions and a 1×1 convolution.

The baked form of an N-Jet layer whose dense filter is too large to be worth materialising
(:func:`njetify.bake.bake`). It holds no σ: the 1-D Gaussian derivatives are fixed buffers
and the coefficients a 1×1 convolution weight. The forward uses only ``F.pad``, ``conv2d``,
``index_select`` and a sum, so it exports with ``torch.export`` and to ONNX, and it computes
what the N-Jet layer computed (same padding, trim, stride, groups) for every input size.

Two orders, as in :mod:`njetify.layers.factorised`:

* ``"basis_first"``: depthwise ``(s×1)`` convs give every input channel's N+1 y-derivatives,
  depthwise ``(1×s)`` convs the F basis responses, a 1×1 conv mixes them
  (``C·((N+1)+F)·s + O·Cg·F`` MACs per output pixel);
* ``"mix_first"``: a 1×1 conv makes ``O·F`` maps, depthwise ``(s×1)`` then ``(1×s)`` convs filter
  each with its basis filter, and the F maps of every output are summed
  (``O·Cg·F`` per input pixel + ``2·O·F·s``); needed for one σ per output channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..basis import basis_orders, num_basis
from .functional import separable_weights
from .padding import pad_or_crop, tf_same_pads


class FactorisedConv2d(nn.Module):
    """Separable Gaussian-derivative filtering plus a 1×1 mix, with fixed filters.

    Args:
        g: 1-D filters ``(N+1, s)``, or ``(O, N+1, s)`` with one σ per output channel.
        alpha: coefficients ``(O, C/groups, F)`` (basis order of :func:`njetify.basis.basis_orders`).
        bias: ``(O,)`` or None.
        stride, groups, padding (``"same"`` | ``"dynamic_same"``), trim, padding_mode: as the N-Jet layer.
        order: ``"basis_first"`` or ``"mix_first"``.
        reason: why the layer was baked factorised (reported by :func:`njetify.bake.bake`).

    Shapes: ``(N, C_in, H, W)`` → ``(N, C_out, H', W')``.
    """

    def __init__(self, g: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None = None, *, stride: int = 1,
                 groups: int = 1, padding: str = "same", trim: int = 0, padding_mode: str = "zeros",
                 order: str = "basis_first", reason: str = ""):
        super().__init__()
        if order not in ("basis_first", "mix_first"):
            raise ValueError(f"FactorisedConv2d: order must be 'basis_first' or 'mix_first', got {order!r}")
        if order == "basis_first" and g.dim() != 2:
            raise ValueError("FactorisedConv2d: one σ per output channel needs order='mix_first'")
        out_ch, cg, nf = alpha.shape
        pairs = basis_orders(g.shape[-2] - 1)
        if len(pairs) != nf:
            raise ValueError(f"FactorisedConv2d: alpha has {nf} basis coefficients, g has {g.shape[-2]} orders")
        self.in_channels, self.out_channels, self.groups = cg * groups, out_ch, groups
        self.stride, self.padding, self.trim, self.padding_mode = stride, padding, trim, padding_mode
        self.order, self.reason, self.size = order, reason, g.shape[-1]
        weights = separable_weights(g.detach(), alpha.detach(), order, self.in_channels)
        for name in ("wy", "wx"):
            self.register_buffer(name, weights[name].clone())
        # mix-first has no channel pick: an empty buffer, so that the forward scripts (not in the state_dict)
        self.register_buffer("pick", weights.get("pick", torch.zeros(0, dtype=torch.long)).clone(),
                             persistent=order == "basis_first")
        self.weight = nn.Parameter(weights["mix"].clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    def __setstate__(self, state):  # a mix-first module pickled before ``pick`` was always a buffer
        super().__setstate__(state)
        if "pick" not in self._buffers:
            self.register_buffer("pick", torch.zeros(0, dtype=torch.long, device=self.wy.device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Written out here (not through functional.separable_conv2d) so that it scripts (torch.jit.script).
        if self.padding == "same":
            p = (self.size - 1) // 2 - self.trim
            pads = [p, p, p, p]
        else:
            pads = tf_same_pads(x.shape[-2], x.shape[-1], self.size, self.stride)
        x = pad_or_crop(x, pads, self.padding_mode)
        s = self.stride
        if self.order == "basis_first":
            y = F.conv2d(x, self.wy, stride=(s, 1), groups=self.in_channels)
            r = F.conv2d(y.index_select(1, self.pick), self.wx, stride=(1, s), groups=self.wx.shape[0])
            out = F.conv2d(r, self.weight, groups=self.groups)
        else:
            m = F.conv2d(x, self.weight, groups=self.groups)
            m = F.conv2d(m, self.wy, stride=(s, 1), groups=m.shape[1])
            m = F.conv2d(m, self.wx, stride=(1, s), groups=m.shape[1])
            out = m.unflatten(1, (self.out_channels, -1)).sum(2)
        bias = self.bias
        return out if bias is None else out + bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, size={self.size}, order={self.order!r}"
        if self.stride != 1:
            s += f", stride={self.stride}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.padding != "same" or self.trim:
            s += f", padding={self.padding!r}, trim={self.trim}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s


def factorised_macs_per_pixel(in_channels: int, out_channels: int, groups: int, size: int, order: int,
                              per_channel: bool = False) -> tuple[int, str]:
    """Multiply-adds per output pixel of the cheaper :class:`FactorisedConv2d` order (stride 1), and that order."""
    nf, m = num_basis(order), order + 1
    mix = out_channels * in_channels // groups * nf
    costs = {"mix_first": mix + 2 * out_channels * nf * size}
    if not per_channel:
        costs["basis_first"] = mix + in_channels * (m + nf) * size
    best = min(costs, key=costs.get)
    return costs[best], best
