"""Baked form of an N-Jet layer: the factorised form (1-D convs + 1×1 conv) ÷ the dense conv, eval forward.

Why :mod:`njetify.layers.bake_form` measures instead of counting: for each shape and σ this prints the
dense ÷ factorised multiply-adds ratio next to the measured time ratio (factorised ÷ dense; below 1: the
factorised form is faster), interleaved, best of ``--reps``; and what ``bake`` picked (``auto``).

    uv run python benchmarks/bake_form.py --write docs/measured/bake_form_cpu.txt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

from njetify import NJetConv2d
from njetify.bake import FactorisedConv2d, bake
from njetify.layers.factorised_conv import factorised_macs_per_pixel

#: (C_in, C_out, side, batch): a stem, ResNet stages at 224², CIFAR stages at 32² and 8²
SHAPES = [(3, 64, 224, 8), (64, 64, 56, 8), (256, 256, 14, 8), (16, 16, 32, 128), (64, 64, 8, 128)]
SIGMAS = [0.6, 1.5, 3.0, 6.0]


def _best(modules: dict, x, reps: int) -> dict[str, float]:
    times = {k: float("inf") for k in modules}
    with torch.no_grad():
        for m in modules.values():
            m(x)
        for _ in range(reps):
            for k, m in modules.items():
                t0 = time.perf_counter()
                m(x)
                times[k] = min(times[k], time.perf_counter() - t0)
    return times


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--order", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = ["| C_in→C_out | map | batch | σ | filter | dense ÷ factorised MACs | factorised ÷ dense time | dense ms | bake picks |",
             "|---|---|---|---|---|---|---|---|---|"]
    print(lines[0], flush=True)
    for cin, cout, side, batch in SHAPES:
        for sigma in SIGMAS:
            torch.manual_seed(0)
            layer = NJetConv2d(cin, cout, order=args.order, sigma=sigma).eval()
            x = torch.randn(batch, cin, side, side)
            with torch.no_grad():
                layer(x)  # bake measures on the last input
            s = layer.kernel_size[0]
            dense, fact = layer.to_conv().eval(), layer.to_factorised().eval()
            t = _best({"dense": dense, "fact": fact}, x, args.reps)
            macs, _ = factorised_macs_per_pixel(cin, cout, 1, s, args.order)
            picked = bake(nn.Sequential(layer))[0]
            lines.append(f"| {cin}→{cout} | {side}² | {batch} | {sigma:g} | {s}×{s} | {cout * cin * s * s / macs:.1f}× | "
                         f"{t['fact'] / t['dense']:.2f}× | {1e3 * t['dense']:.1f} | "
                         f"{'factorised' if isinstance(picked, FactorisedConv2d) else 'dense'} |")
            print(lines[-1], flush=True)
    cmd = "uv run python benchmarks/bake_form.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = (f"# {cmd.strip()}\n# CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, order {args.order}; "
            f"best of {args.reps} interleaved eval forwards\n" + "\n".join(lines) + "\n")
    if args.write:
        args.write.write_text(text)
        print(f"wrote {args.write}")


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")  # bake's note on factorised layers
    main()
