"""The functional core of every σ layer: one N-Jet convolution, three exact ways to run it.

``njet_conv2d(x, alpha, sigma, bias, half=…)`` is ``conv2d(pad(x), W)`` with
``W[o, c] = Σ_f α[o, c, f] · B_f(σ)`` of size ``2·half+1`` (DESIGN §2). The modules are thin:
:class:`~njetify.layers.NJetConv2d` is one call, a tied ASPP head is the same call per branch
with its own σ and one shared α (and one shared mix). Paths (DESIGN §7):

* ``"dense"`` — materialise W (or take the caller's cached ``weight``), one ``F.conv2d``;
* ``"basis_first"`` / ``"mix_first"`` — separable 1-D filtering plus a 1×1 mix, never forming W
  (:mod:`njetify.layers.factorised`).

Inside ``torch.compile`` / ``torch.export`` the factorised paths run as plain convolutions
(:func:`traceable_factorised`), so the graph holds only standard ops; the filter size is an
int decided outside the graph by the caller (:mod:`njetify.layers.sizes`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import basis as B
from .factorised import factorised_conv2d, nf_order
from .padding import crop, pad_or_crop

EXACT_PATHS = ("dense", "basis_first", "mix_first")


def njet_filter(alpha: torch.Tensor, sigma: torch.Tensor, half: int) -> torch.Tensor:
    """Materialised N-Jet filter ``(O, C/groups, s, s)``, ``s = 2·half+1``.

    ``alpha (O, C/groups, F)``; ``sigma`` a 0-d tensor (one σ) or ``(O,)`` (one per output channel).
    """
    order = nf_order(alpha.shape[-1])
    basis = B.gaussian_basis_2d(sigma, order, half).to(alpha.dtype)
    size = B.size_of(half)
    if basis.dim() == 3:
        w = combine_basis(alpha, basis.flatten(1))
    else:
        w = torch.einsum("ocf,ofk->ock", alpha, basis.flatten(2))
    return w.view(alpha.shape[0], alpha.shape[1], size, size)


#: from this many filters ``O·C/groups`` on, :func:`combine_basis` runs on CPU as a 1×1 convolution
#: (measured: ``benchmarks/filter_build.py``, break-even near 4096).
COMBINE_AS_CONV_MIN = 8192


def combine_basis(alpha: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``α @ basis``: ``alpha (O, Cg, F)``, ``basis (F, K)`` → ``(O, Cg, K)``, contiguous.

    With F ≈ 10 and K = s² the matrix product is too skinny for a BLAS (a few GMAC/s on CPU). Seen
    as a 1×1 convolution of a channels-last "image" ``(1, F, O, Cg)`` it runs in oneDNN at memory
    speed, forward and backward, with α and its gradient in their own layout (4–5× faster at
    512→512; same values to rounding). Small layers, other devices and dtypes, and compiled graphs
    use the plain product.
    """
    out_ch, cg, nf = alpha.shape
    if (alpha.device.type != "cpu" or alpha.dtype != torch.float32 or out_ch * cg < COMBINE_AS_CONV_MIN
            or torch.compiler.is_compiling() or not torch.backends.mkldnn.is_available()):
        return alpha @ basis
    image = alpha.contiguous().view(1, out_ch, cg, nf).permute(0, 3, 1, 2)  # channels-last (1, F, O, Cg)
    w = F.conv2d(image, basis.t().reshape(basis.shape[1], nf, 1, 1)).contiguous(memory_format=torch.channels_last)
    return w.permute(0, 2, 3, 1).reshape(out_ch, cg, basis.shape[1])


def same_pads(half: int, trim: int = 0) -> list[int]:
    """Symmetric pads ``[left, right, top, bottom]`` of a ``2·half+1`` filter whose output is ``trim`` px
    per side smaller than "same" (negative pads crop)."""
    p = half - trim
    return [p, p, p, p]


def njet_conv2d(
    x: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    half: int,
    stride: int = 1,
    groups: int = 1,
    pads: list[int] | None = None,
    padding_mode: str = "zeros",
    path: str = "dense",
    weight: torch.Tensor | None = None,
    mixed: torch.Tensor | None = None,
) -> torch.Tensor:
    """N-Jet convolution of ``x (N, C, H, W)`` → ``(N, O, H', W')``.

    Args:
        alpha: coefficients ``(O, C/groups, F)``; sigma: σ in pixels, 0-d or ``(O,)``.
        half: filter half-width in pixels (size ``2·half+1``), decided by the caller.
        pads: ``[left, right, top, bottom]`` (negative: crop); default "same" (``half`` each).
        path: ``"dense"``, ``"basis_first"`` or ``"mix_first"``: same outputs and gradients.
        weight: the dense filter when the caller has it cached (dense path only).
        mixed: ``factorised.mix(x, alpha, groups)`` when already computed (tied branches share it).
    """
    pads = same_pads(half) if pads is None else list(pads)
    if path == "dense":
        w = njet_filter(alpha, sigma, half) if weight is None else weight
        return dense_conv2d(x, w, bias, pads, stride, groups, padding_mode)
    if path not in ("basis_first", "mix_first"):
        raise ValueError(f"path must be one of {EXACT_PATHS}, got {path!r}")
    if path == "basis_first" and sigma.dim() > 0:
        raise ValueError("path='basis_first' needs one σ for all outputs; use path='mix_first'")
    g = B.gaussian_derivatives_1d(sigma, nf_order(alpha.shape[-1]), half)
    if torch.compiler.is_compiling():
        out = traceable_factorised(x, alpha, g, pads, stride, groups, padding_mode, path)
    else:
        out = factorised_conv2d(x, alpha, g, pads, stride=stride, padding_mode=padding_mode, groups=groups,
                                order=path, mixed=mixed)
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)
    return out if bias is None else out + bias.to(out.dtype).view(1, -1, 1, 1)


def dense_conv2d(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, pads: list[int], stride: int = 1,
                 groups: int = 1, padding_mode: str = "zeros") -> torch.Tensor:
    """``conv2d(pad(x, pads, padding_mode), w)``; negative pads crop, symmetric zero pads use conv2d's own."""
    if padding_mode == "zeros" and pads[0] == pads[1] == pads[2] == pads[3] >= 0:
        return F.conv2d(x, w, bias, stride, pads[0], 1, groups)
    if min(pads) < 0:  # σ shrank below the original conv's trim: crop the input instead
        x = crop(x, [max(-p, 0) for p in pads])
        pads = [max(p, 0) for p in pads]
    if max(pads) > 0:
        x = F.pad(x, pads, mode="constant" if padding_mode == "zeros" else padding_mode)
    return F.conv2d(x, w, bias, stride, 0, 1, groups)


def separable_weights(g: torch.Tensor, alpha: torch.Tensor, order: str, in_channels: int) -> dict[str, torch.Tensor]:
    """The conv weights of the separable form: ``wy`` (s×1), ``wx`` (1×s), the 1×1 ``mix``
    and, basis-first, the channel ``pick`` of each basis filter's y-derivative.

    ``g (M, s)`` (or ``(O, M, s)`` per channel, mix-first only); ``alpha (O, C/groups, F)``.
    """
    out_ch, cg, nf = alpha.shape
    pairs = B.basis_orders(g.shape[-2] - 1)
    iy = torch.tensor([j for _, j in pairs], device=g.device)
    ix = torch.tensor([i for i, _ in pairs], device=g.device)
    s = g.shape[-1]
    if order == "basis_first":
        c = in_channels
        return {"wy": g.repeat(c, 1).view(-1, 1, s, 1),
                "pick": (torch.arange(c, device=g.device)[:, None] * g.shape[0] + iy).flatten(),
                "wx": g[ix].repeat(c, 1).view(-1, 1, 1, s), "mix": alpha.reshape(out_ch, cg * nf, 1, 1)}
    gy = g[..., iy, :] if g.dim() == 3 else g[iy].expand(out_ch, nf, s)
    gx = g[..., ix, :] if g.dim() == 3 else g[ix].expand(out_ch, nf, s)
    return {"wy": gy.reshape(-1, 1, s, 1), "wx": gx.reshape(-1, 1, 1, s),
            "mix": alpha.permute(0, 2, 1).reshape(out_ch * nf, cg, 1, 1)}


def separable_conv2d(x: torch.Tensor, weights: dict[str, torch.Tensor], stride: int, groups: int,
                     in_channels: int, out_channels: int, order: str) -> torch.Tensor:
    """The separable form on an already padded ``x``: depthwise 1-D convs and a 1×1 mix (no bias)."""
    wy, wx, mix = weights["wy"], weights["wx"], weights["mix"]
    if order == "basis_first":
        y = F.conv2d(x, wy, stride=(stride, 1), groups=in_channels)
        r = F.conv2d(y.index_select(1, weights["pick"]), wx, stride=(1, stride), groups=wx.shape[0])
        return F.conv2d(r, mix, groups=groups)
    m = F.conv2d(x, mix, groups=groups)
    m = F.conv2d(m, wy, stride=(stride, 1), groups=m.shape[1])
    m = F.conv2d(m, wx, stride=(1, stride), groups=m.shape[1])
    return m.unflatten(1, (out_channels, -1)).sum(2)


def traceable_factorised(x: torch.Tensor, alpha: torch.Tensor, g: torch.Tensor, pads: list[int], stride: int,
                         groups: int, padding_mode: str, order: str) -> torch.Tensor:
    """The factorised N-Jet convolution in standard ops only (for compiled and exported graphs; no bias)."""
    weights = separable_weights(g.to(x.dtype), alpha.to(x.dtype), order, x.shape[1])
    return separable_conv2d(pad_or_crop(x, pads, padding_mode), weights, stride, groups, x.shape[1], alpha.shape[0],
                            order)
