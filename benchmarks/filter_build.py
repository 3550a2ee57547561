"""Filter construction ``W = α @ basis`` on CPU: the plain matrix product against the 1×1-conv form.

    uv run python benchmarks/filter_build.py
    uv run python benchmarks/filter_build.py --shapes "512,512,10,9 64,64,10,9" --reps 30

Each shape is ``out_channels,in_channels/groups,basis_functions,taps`` (order 3: 10 functions;
3×3: 9 taps). Timed: forward + backward (gradients to α and to the basis, as in a train step) and
forward alone, median of ``--reps``, both forms alternately in one process. Printed: ms of each and
the ratio conv ÷ product (below 1: the 1×1-conv form is faster). :func:`njetify.layers.functional.combine_basis`
uses the conv form from ``COMBINE_AS_CONV_MIN`` filters on.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from _timing import median_ms  # benchmarks/_timing.py
from njetify.layers.functional import COMBINE_AS_CONV_MIN

SHAPES = "32,32,10,9 64,64,10,9 128,64,10,9 128,128,10,9 256,256,10,9 512,512,10,9 256,256,10,25 256,256,15,49 512,1,10,25"


def as_conv(alpha, basis):
    """The 1×1-conv form (what combine_basis runs above its threshold), with no threshold."""
    o, cg, nf = alpha.shape
    image = alpha.view(1, o, cg, nf).permute(0, 3, 1, 2)
    w = F.conv2d(image, basis.t().reshape(basis.shape[1], nf, 1, 1))
    return w.permute(0, 2, 3, 1).reshape(o, cg, basis.shape[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=SHAPES)
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"# {torch.get_num_threads()} threads, torch {torch.__version__}; COMBINE_AS_CONV_MIN = {COMBINE_AS_CONV_MIN}")
    print("| O | C/g | F | taps | O·C/g | train product ms | train conv ms | conv ÷ product | eval product ms | eval conv ms | conv ÷ product |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for spec in args.shapes.split():
        o, cg, nf, k = (int(v) for v in spec.split(","))
        alpha = torch.randn(o, cg, nf, requires_grad=True)
        basis = torch.randn(nf, k, requires_grad=True)
        grad = torch.randn(o, cg, k)
        forms = {"product": lambda a, b: a @ b, "conv": as_conv}
        train, evals = {}, {}
        for _ in range(2):  # alternate the forms twice; keep each one's faster median
            for name, form in forms.items():
                t = median_ms(lambda: torch.autograd.grad(form(alpha, basis), (alpha, basis), grad), args.reps)
                train[name] = min(train.get(name, t), t)
                with torch.no_grad():
                    t = median_ms(lambda: form(alpha, basis), args.reps)
                evals[name] = min(evals.get(name, t), t)
        print(f"| {o} | {cg} | {nf} | {k} | {o * cg} | {train['product']:.2f} | {train['conv']:.2f} | "
              f"{train['conv'] / train['product']:.2f} | {evals['product']:.2f} | {evals['conv']:.2f} | "
              f"{evals['conv'] / evals['product']:.2f} |")


if __name__ == "__main__":
    main()
