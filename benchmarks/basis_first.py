"""Basis-first factorised path on one layer: train step and eval forward ÷ the 3×3 nn.Conv2d it replaces.

    uv run python benchmarks/basis_first.py                      # 256→256 @28², batch 8, σ 1, 6, 12
    uv run python benchmarks/basis_first.py --shapes 8,64,56,64 --sigmas 1,4

Each shape is ``batch,channels_in,side,channels_out``; order 3, same padding, ``path="basis_first"``;
median of ``--reps`` runs, conv and N-Jet layer timed alternately in one process. Run it in two
checkouts to compare revisions.
"""

from __future__ import annotations

import argparse
import math

import torch

from _timing import median_ms  # benchmarks/_timing.py
from njetify import NJetConv2d


def _train(module, x):
    def step():
        y = module(x)
        y.backward(torch.ones_like(y))
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="8,256,28,256", help="space-separated batch,C_in,side,C_out")
    p.add_argument("--sigmas", default="1,6,12")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {args.threads} threads; ratios ÷ the 3×3 conv in the same run")
    for shape in args.shapes.split():
        n, cin, side, cout = (int(v) for v in shape.split(","))
        x = torch.randn(n, cin, side, side, requires_grad=True)
        conv = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        for sigma in (float(s) for s in args.sigmas.split(",")):
            layer = NJetConv2d(cin, cout, order=3, sigma=sigma, path="basis_first", max_size=4 * side)
            tc, tb = median_ms(_train(conv, x), args.reps), median_ms(_train(layer, x), args.reps)
            with torch.no_grad():
                ec, eb = median_ms(lambda: conv(x), args.reps), median_ms(lambda: layer(x), args.reps)
            size = 2 * math.ceil(2 * sigma) + 1
            print(f"{cin}→{cout} @{side}², batch {n}, σ={sigma:g} ({size}px): train {tb / tc:.2f}× "
                  f"({tb:.0f} vs {tc:.0f} ms), eval {eb / ec:.2f}× ({eb:.0f} vs {ec:.0f} ms)", flush=True)


if __name__ == "__main__":
    main()
