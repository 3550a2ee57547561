"""σ's gradient against σ: where it vanishes (the threshold of njetify's SmallSigmaWarning).

For one random NJetConv2d(3→4) on random data (seeded), prints per σ the gradient of
``sum(y²)`` with respect to log σ and its ratio to ‖∂/∂α‖, with
:data:`njetify.layers.sizes.MIN_USEFUL_SIGMA`. Not a timing; a few seconds on a CPU.

    uv run python benchmarks/small_sigma_gradient.py [--dtype float64] [--order 1]
"""

from __future__ import annotations

import argparse
import warnings

import torch

from njetify.layers import NJetConv2d
from njetify.layers.sizes import MIN_USEFUL_SIGMA

SIGMAS = (1e-4, 0.01, 0.06, 0.068, 0.07, 0.1, 0.12, 0.14, 0.15, 0.16, 0.17, 0.177, 0.18, 0.2, 0.25, 0.3, 0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--order", type=int, default=3)
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    print(f"MIN_USEFUL_SIGMA = {MIN_USEFUL_SIGMA:.4f} px; {args.dtype}, order {args.order}")
    print(f"{'σ':>8} {'|∂L/∂logσ|':>12} {'/ ‖∂L/∂α‖':>12}")
    for sigma in SIGMAS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer = NJetConv2d(3, 4, order=args.order, sigma=sigma, dtype=dtype)
        torch.manual_seed(0)
        layer(torch.randn(2, 3, 12, 12, dtype=dtype)).square().sum().backward()
        g = float(layer.log_sigma.grad.abs().sum())
        print(f"{sigma:8.4g} {g:12.3g} {g / float(layer.alpha.grad.norm()):12.3g}")


if __name__ == "__main__":
    main()
