"""The same ridge regression for wide layers, without forming the ``(D + K)²`` Gram matrix.

A layer with ``D = C_g·F`` in the tens of thousands (a 2048-channel ASPP branch at
order 3: D = 20480, a 3.4 GB float64 Gram) keeps its design rows ``A (S, D + K)`` in
float32 instead and solves the ridge normal equations by preconditioned conjugate
gradients: the matrix–vector product is ``Aᵀ(A V)`` (``2·S·(D + K)·O_g`` multiply-adds
per iteration), the preconditioner the exact inverse of every input channel's F×F
diagonal block (and of the bias block), and the start the weight-space fit, so every
iteration lowers the objective below the weight-space fit's. Memory: ``4·S·(D + K)``
bytes for the design (the caller bounds S).
"""

from __future__ import annotations

import torch

from ..options import OUTPUT_MATCHING_RIDGE, PCG_MAX_ITER, PCG_TOL
from .ridge import design, ridge_diagonal, split_targets



class DesignStore:
    """Design rows and targets kept for an iterative solve; the same interface as
    :class:`~njetify.calibration.ridge.GramStats` (``update``, ``error2``, ``target_norm2``, ``solve``).

    Args:
        groups, dim, num_bias, outputs: as for ``GramStats``. num_basis: F (block size).
    """

    def __init__(self, groups: int, dim: int, num_bias: int, outputs: int, num_basis: int, device=None):
        self.groups, self.dim, self.num_bias, self.outputs, self.num_basis = groups, dim, num_bias, outputs, num_basis
        self.rows: list[torch.Tensor] = []  # (groups, s, D + K) float32
        self.targets: list[torch.Tensor] = []  # (groups, s, O_g) float32
        self.count = 0
        self.max_iter, self.tol = PCG_MAX_ITER, PCG_TOL
        self.iterations = 0

    def update(self, q: torch.Tensor, targets: torch.Tensor, branch: int = 0) -> None:
        """Keep samples: responses ``q (S, C, F)`` of branch ``branch`` and targets ``(S, O)``."""
        self.rows.append(design(q, self.groups, branch, self.num_bias).float())
        self.targets.append(split_targets(targets, self.groups).float())
        self.count += q.shape[0]

    # ------------------------------------------------------------ products
    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``Aᵀ(A v)`` for ``v (groups, D + K, O_g)`` float64."""
        v32 = v.float()
        out = torch.zeros_like(v)
        for a in self.rows:
            out += (a.transpose(1, 2) @ (a @ v32)).double()
        return out

    def _rhs(self) -> torch.Tensor:
        out = None
        for a, t in zip(self.rows, self.targets):
            p = (a.transpose(1, 2) @ t).double()
            out = p if out is None else out + p
        return out

    def _diagonal(self) -> torch.Tensor:
        return sum((a.double() ** 2).sum(1) for a in self.rows)  # (groups, D + K)

    def _block_inverses(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Inverses of the F×F channel blocks ``(groups, C_g, F, F)`` and the K×K bias block."""
        nf, d = self.num_basis, self.dim
        blocks = 0
        bias = 0
        for a in self.rows:
            z = a[..., :d].reshape(a.shape[0], a.shape[1], d // nf, nf).double()
            blocks = blocks + torch.einsum("gscf,gsch->gcfh", z, z)
            if self.num_bias:
                b = a[..., d:].double()
                bias = bias + b.transpose(1, 2) @ b
        eye = torch.eye(nf, dtype=torch.float64, device=lam.device)
        blocks = blocks + lam[:, :d].reshape(self.groups, d // nf, nf)[..., None] * eye
        inv_b = None
        if self.num_bias:
            inv_b = torch.linalg.inv(bias + torch.diag_embed(lam[:, d:]))
        return torch.linalg.inv(blocks), inv_b

    # ------------------------------------------------------------ results
    def error2(self, x: torch.Tensor) -> float:
        """``‖A X − T‖²`` summed over groups and outputs."""
        x32 = x.float()
        return float(sum(float(((a @ x32) - t).double().pow(2).sum()) for a, t in zip(self.rows, self.targets)))

    def target_norm2(self) -> float:
        """``‖T‖²``."""
        return float(sum(float(t.double().pow(2).sum()) for t in self.targets))

    def fit(self, x0: torch.Tensor, rho: float = OUTPUT_MATCHING_RIDGE) -> tuple[torch.Tensor, float, float]:
        """The solution X (:meth:`solve`) and ``‖A X₀ − T‖²``, ``‖A X − T‖²``."""
        x = self.solve(x0, rho)
        return x, self.error2(x0), self.error2(x)

    def solve(self, x0: torch.Tensor, rho: float = OUTPUT_MATCHING_RIDGE) -> torch.Tensor:
        """PCG on ``(AᵀA + Λ) X = AᵀT + Λ X₀`` from ``X₀``; stores ``iterations``."""
        lam = ridge_diagonal(self._diagonal(), self.dim, rho)
        inv_c, inv_b = self._block_inverses(lam)
        d, nf = self.dim, self.num_basis

        def apply(v):
            return self._matvec(v) + lam[..., None] * v

        def precond(r):
            ra = r[:, :d].reshape(self.groups, d // nf, nf, -1)
            za = (inv_c @ ra).reshape(self.groups, d, -1)
            if inv_b is None:
                return za
            return torch.cat([za, inv_b @ r[:, d:]], 1)

        b = self._rhs() + lam[..., None] * x0
        x = x0.clone()
        r = b - apply(x)
        bnorm = b.norm(dim=1).clamp_min(1e-300)
        z = precond(r)
        p = z.clone()
        rz = (r * z).sum(1)
        self.iterations = 0
        for it in range(self.max_iter):
            if float((r.norm(dim=1) / bnorm).max()) < self.tol:
                break
            ap = apply(p)
            step = rz / (p * ap).sum(1).clamp_min(1e-300)
            x += step[:, None] * p
            r -= step[:, None] * ap
            z = precond(r)
            rz_new = (r * z).sum(1)
            p = z + (rz_new / rz.clamp_min(1e-300))[:, None] * p
            rz = rz_new
            self.iterations = it + 1
        return x
