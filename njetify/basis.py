"""Gaussian-derivative (N-Jet) basis filters — pure functions of σ.

Conventions (DESIGN §2):

* 1-D Gaussian sampled at integer offsets ``x = -h..h`` and normalised so the
  samples sum to 1: ``G(x; σ) = exp(-x² / 2σ²) / Σ_x exp(-x² / 2σ²)``.
* Order-m derivative via physicists' Hermite polynomials (expanded once into a
  constant coefficient matrix, see :func:`gaussian_derivatives_1d`):
  ``G_m(x; σ) = (-1 / (σ√2))^m · H_m(x / (σ√2)) · G(x; σ)``.
* Scale normalisation multiplies order m by ``σ^m`` (on by default).
* 2-D basis: products ``G_j(y) · G_i(x)`` for all ``i + j ≤ N``, ordered by total
  order ``n = i + j`` and, within one total order, by the y-order ``j`` rising:
  ``(i, j) = (0,0), (1,0), (0,1), (2,0), (1,1), (0,2), (3,0), ...`` where ``i`` is
  the derivative order along x (width) and ``j`` along y (height).
  :func:`basis_orders` returns that list.

Everything is built on σ's device and dtype and is differentiable in σ.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

#: The highest derivative order accepted. Higher orders are numerically fine but
#: have no use for filters of a few pixels, and the basis grows as (N+1)(N+2)/2.
MAX_ORDER = 8


def num_basis(order: int) -> int:
    """Number of 2-D basis filters for ``order``: ``(N+1)(N+2)/2``."""
    return (order + 1) * (order + 2) // 2


def basis_orders(order: int) -> tuple[tuple[int, int], ...]:
    """The ``(i, j)`` = (x-order, y-order) pair of each 2-D basis filter, in basis order."""
    return tuple((n - j, j) for n in range(order + 1) for j in range(n + 1))


#: Tolerance on ``extent·σ`` before rounding up, so that σ stored as ``exp(log σ)``
#: in float32 (0.5 → 0.50000006) does not jump to the next filter size.
SIZE_TOLERANCE = 1e-4


@lru_cache(maxsize=None)
def basis_blocks(order: int) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """Per x-order i, the indices in :func:`basis_orders` of the pairs ``(i, j)``, ``j = 0..N−i`` (j rising)."""
    pairs = basis_orders(order)
    return tuple((i, tuple(pairs.index((i, j)) for j in range(order + 1 - i))) for i in range(order + 1))


def order_of(nf: int) -> int:
    """The order N of a basis with ``nf = (N+1)(N+2)/2`` filters."""
    return math.isqrt(8 * nf + 1) // 2 - 1 if nf > 0 else 0


def half_width(sigma: float, extent: float = 2.0) -> int:
    """Half-width ``⌈extent·σ⌉`` of the filter (size ``2h+1``), at least 1."""
    return max(1, math.ceil(extent * float(sigma) - SIZE_TOLERANCE))


def filter_size(sigma: float, extent: float = 2.0) -> int:
    """Filter size ``2·⌈extent·σ⌉ + 1`` in pixels (DESIGN §2, as in the paper)."""
    return size_of(half_width(sigma, extent))


def size_of(half: int) -> int:
    """Side ``2·half + 1`` in pixels of a filter of half-width ``half``."""
    return 2 * half + 1


def gaussian_derivatives_1d(
    sigma: torch.Tensor, order: int, half: int, *, scale_normalize: bool = True
) -> torch.Tensor:
    """Sampled 1-D Gaussian derivatives of orders ``0..order``.

    Args:
        sigma: scale in pixels, a tensor of any shape ``S`` (a 0-d tensor for one σ).
        order: highest derivative order N.
        half: half-width h; samples lie at integer offsets ``-h..h``.
        scale_normalize: multiply order m by ``σ^m``.

    Returns:
        Tensor ``(*S, N+1, 2h+1)`` on σ's device and dtype.

    With scale normalisation ``σ^m · (−1/(σ√2))^m = (−1/√2)^m`` is a constant, so
    the whole basis is ``(C · [u^k]) ⊙ G`` with ``u = x/(σ√2)`` and a constant
    coefficient matrix C: a handful of tensor ops, cheap next to any convolution.
    """
    x, powers, coef = _constants(order, half, sigma.device, sigma.dtype)
    u = x / (sigma.unsqueeze(-1) * math.sqrt(2.0))  # (*S, s)
    g = torch.exp(-u * u)
    g = g / g.sum(-1, keepdim=True)  # (*S, s), samples sum to 1
    poly = coef @ u.unsqueeze(-2).pow(powers)  # (N+1, N+1) @ (*S, N+1, s)
    out = poly * g.unsqueeze(-2)
    if not scale_normalize:
        m = powers.squeeze(-1)
        out = out * sigma.unsqueeze(-1).pow(-m).unsqueeze(-1)
    return out


_CONSTANTS: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _constants(order: int, half: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grid ``x``, exponents ``k`` (column) and ``C[m, k] = (−1/√2)^m · h_mk`` with
    ``H_m(u) = Σ_k h_mk u^k``; cached per (order, half, device, dtype)."""
    key = (order, half, torch.device(device), dtype)
    if key not in _CONSTANTS or torch.compiler.is_compiling():
        built = _build_constants(order, half, device, dtype)
        if torch.compiler.is_compiling():  # inside a graph: constants of the graph, never a global cache
            return built
        _CONSTANTS[key] = built
    return _CONSTANTS[key]


def _build_constants(order: int, half: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tensors of :func:`_constants`, freshly built."""
    return (
        torch.arange(-half, half + 1, device=device, dtype=dtype),
        torch.arange(order + 1, device=device, dtype=dtype).unsqueeze(-1),
        torch.tensor(_hermite_coefficients(order), dtype=torch.float64).to(device=device, dtype=dtype),
    )


def _hermite_coefficients(order: int) -> tuple[tuple[float, ...], ...]:
    """``C[m][k] = (−1/√2)^m · h_mk`` with ``H_m(u) = Σ_k h_mk u^k`` (physicists' Hermite), m, k ≤ order."""
    rows = [[1.0] + [0.0] * order]
    if order >= 1:
        rows.append([0.0, 2.0] + [0.0] * (order - 1))
    for m in range(2, order + 1):  # H_m = 2u·H_{m−1} − 2(m−1)·H_{m−2}
        rows.append([2.0 * (rows[m - 1][k - 1] if k else 0.0) - 2.0 * (m - 1) * rows[m - 2][k] for k in range(order + 1)])
    return tuple(tuple(v * (-1.0 / math.sqrt(2.0)) ** m for v in row) for m, row in enumerate(rows))


def gaussian_basis_2d(
    sigma: torch.Tensor, order: int, half: int, *, scale_normalize: bool = True
) -> torch.Tensor:
    """The 2-D N-Jet basis ``G_i(x)·G_j(y)`` for ``i + j ≤ order``.

    Args:
        sigma: scale in pixels, shape ``S`` (``()`` for one σ, ``(O,)`` for one per channel).
        order: highest total derivative order N.
        half: half-width h of the square ``(2h+1) × (2h+1)`` grid.

    Returns:
        Tensor ``(*S, F, 2h+1, 2h+1)`` with ``F = (N+1)(N+2)/2``, indexed
        ``[..., f, y, x]`` in the order of :func:`basis_orders`.
    """
    g1 = gaussian_derivatives_1d(sigma, order, half, scale_normalize=scale_normalize)
    ix, iy = _order_index(order, sigma.device)
    gx = g1.index_select(-2, ix)  # (*S, F, s): G_i(x)
    gy = g1.index_select(-2, iy)  # (*S, F, s): G_j(y)
    return gy.unsqueeze(-1) * gx.unsqueeze(-2)


_ORDER_INDEX: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def _order_index(order: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Index tensors of x-orders and y-orders, cached per device (no per-call host copy)."""
    key = (order, torch.device(device))
    if key not in _ORDER_INDEX or torch.compiler.is_compiling():
        pairs = basis_orders(order)
        ix = torch.tensor([i for i, _ in pairs], device=device)
        iy = torch.tensor([j for _, j in pairs], device=device)
        if torch.compiler.is_compiling():
            return ix, iy
        _ORDER_INDEX[key] = (ix, iy)
    return _ORDER_INDEX[key]
