"""Ridge regression of a layer's target outputs on basis responses, from float64 Gram matrices.

The unknowns of group g are ``X_g = [α_g; b]`` of shape ``(D + K, O_g)``: the
coefficients of the group's ``D = C_g·F`` basis responses (input channel-major, as
``alpha (O, C_g, F)`` flattens) and K bias rows (one per tied branch; K = 0 for a
layer without bias). The design row of a sample of branch k is
``[q_g (D) | one-hot(k) (K)]``.

``X = argmin ‖A X − T‖² + ‖Λ^½ (X − X₀)‖²`` with ``Λ = ρ·mean(diag AᵀA)`` on the
coefficients: the ridge pulls towards the weight-space fit ``X₀``, so directions the
data does not see (a rank-deficient basis, dead channels) keep the weight-space
values instead of drifting to 0 or to huge values.
"""

from __future__ import annotations

import torch

from ..options import OUTPUT_MATCHING_RIDGE


def design(q: torch.Tensor, groups: int, branch: int, num_bias: int) -> torch.Tensor:
    """``(groups, S, D + K)`` design rows from responses ``q (S, C, F)`` of branch ``branch``."""
    s, c, nf = q.shape
    z = q.reshape(s, groups, (c // groups) * nf).transpose(0, 1)
    if num_bias == 0:
        return z
    ones = q.new_zeros(groups, s, num_bias)
    ones[..., branch] = 1
    return torch.cat([z, ones], -1)


def split_targets(t: torch.Tensor, groups: int) -> torch.Tensor:
    """Targets ``(S, O)`` as ``(groups, S, O/groups)``."""
    return t.reshape(t.shape[0], groups, -1).transpose(0, 1)


def pack(alpha: torch.Tensor, bias: torch.Tensor | None, groups: int) -> torch.Tensor:
    """``alpha (O, C_g, F)`` and ``bias (K, O)`` (or None) as unknowns ``(groups, D + K, O_g)`` float64."""
    o = alpha.shape[0]
    x = alpha.detach().double().reshape(groups, o // groups, -1).transpose(1, 2)
    if bias is None:
        return x
    b = bias.detach().double().reshape(bias.shape[0], groups, o // groups).transpose(0, 1)
    return torch.cat([x, b], 1)


def unpack(x: torch.Tensor, num_bias: int, num_basis: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inverse of :func:`pack`: ``alpha (O, C_g, F)`` and ``bias (K, O)`` (None when K = 0)."""
    groups, rows, og = x.shape
    d = rows - num_bias
    alpha = x[:, :d].transpose(1, 2).reshape(groups * og, d // num_basis, num_basis)
    bias = None if num_bias == 0 else x[:, d:].transpose(0, 1).reshape(num_bias, groups * og)
    return alpha, bias


def ridge_diagonal(diag: torch.Tensor, dim: int, rho: float) -> torch.Tensor:
    """``(groups, D + K)`` ridge weights: ``ρ·mean(diag)`` on the D coefficients, ``ρ·diag`` on the biases."""
    lam = diag.clone()
    lam[:, :dim] = diag[:, :dim].mean(1, keepdim=True).clamp_min(1e-30)
    return rho * lam


class GramStats:
    """Running ``AᵀA``, ``AᵀT`` and ``Σ T²`` of one layer's regression, in float64.

    Design rows are buffered until ``FLUSH_ROWS`` have arrived, then multiplied in their own dtype
    (float32: half the time of float64, relative error ~1e-7, far below the ridge) and summed in
    float64.

    Args:
        groups: conv groups. dim: D = C_g·F per group. num_bias: K. outputs: O_g per group.
        device: where the statistics live.
    """

    FLUSH_ROWS = 4096

    def __init__(self, groups: int, dim: int, num_bias: int, outputs: int, device=None):
        n = dim + num_bias
        self.groups, self.dim, self.num_bias = groups, dim, num_bias
        self.gram = torch.zeros(groups, n, n, dtype=torch.float64, device=device)
        self.cross = torch.zeros(groups, n, outputs, dtype=torch.float64, device=device)
        self.tt = torch.zeros(groups, outputs, dtype=torch.float64, device=device)
        self.count = 0
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._rows = 0

    def update(self, q: torch.Tensor, targets: torch.Tensor, branch: int = 0) -> None:
        """Add samples: responses ``q (S, C, F)`` of branch ``branch`` and their targets ``(S, O)``."""
        a = design(q, self.groups, branch, self.num_bias)
        self._pending.append((a, split_targets(targets, self.groups).to(a.dtype)))
        self._rows += q.shape[0]
        self.count += q.shape[0]
        if self._rows >= self.FLUSH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        a = torch.cat([p[0] for p in self._pending], 1)
        t = torch.cat([p[1] for p in self._pending], 1)
        self._pending, self._rows = [], 0
        at = a.transpose(1, 2)
        self.gram += (at @ a).double()
        self.cross += (at @ t).double()
        self.tt += t.double().pow(2).sum(1)

    def error2(self, x: torch.Tensor) -> float:
        """``‖A X − T‖²`` summed over groups and outputs."""
        self._flush()
        quad = (x * (self.gram @ x)).sum()
        return float((quad - 2 * (x * self.cross).sum() + self.tt.sum()).clamp_min(0))

    def target_norm2(self) -> float:
        """``‖T‖²``."""
        self._flush()
        return float(self.tt.sum())

    def solve(self, x0: torch.Tensor, rho: float = OUTPUT_MATCHING_RIDGE) -> torch.Tensor:
        """The ridge solution ``(groups, D + K, O_g)`` (pulled towards ``x0``)."""
        return self.fit(x0, rho)[0]

    def fit(self, x0: torch.Tensor, rho: float = OUTPUT_MATCHING_RIDGE) -> tuple[torch.Tensor, float, float]:
        """The ridge solution X and ``‖A X₀ − T‖²``, ``‖A X − T‖²``.

        The second error is free: ``(G + Λ) X = H + Λ X₀`` gives ``XᵀG X = XᵀH + XᵀΛ(X₀ − X)``.
        """
        self._flush()
        lam = ridge_diagonal(self.gram.diagonal(dim1=1, dim2=2), self.dim, rho)
        lhs = self.gram + torch.diag_embed(lam)
        rhs = self.cross + lam[..., None] * x0
        chol, info = torch.linalg.cholesky_ex(lhs)
        if int(info.max()) == 0:
            x = torch.cholesky_solve(rhs, chol)
            after = self.tt.sum() - (x * self.cross).sum() + (x * lam[..., None] * (x0 - x)).sum()
            after = float(after.clamp_min(0))
        else:  # only when ρ = 0 and the data is degenerate
            x = torch.linalg.lstsq(lhs, rhs).solution
            after = self.error2(x)
        return x, self.error2(x0), after
