"""Speed of a tied DeepLab v2 ASPP head, as ratios against the original head (DESIGN §7).

Head: 2048 → 21 channels, four branches at rates 6/12/18/24 (σ₀ 3/6/9/12, filters 13/25/37/49 px).
Compared, in one run and on the same input:

* original — the four dilated 3×3 ``nn.Conv2d`` (the k×k convs that were replaced);
* dense conv — four ``nn.Conv2d`` with the tied head's materialised 13…49 px filters
  (what a naive N-Jet implementation would run);
* tied — :class:`TiedNJetConv2d` (separable evaluation), forward and forward+backward.

Run: ``uv run python benchmarks/aspp_head.py [--size 33] [--batch 1] [--repeats 5]``.
Prints milliseconds (median) and ratios; timings depend on the machine, the ratios less so.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from njetify.layers.tied import TiedNJetConv2d

RATES = (6, 12, 18, 24)


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=33, help="feature-map side (65 ≈ a 513 px image at OS 8)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--channels", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--order", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    convs = [nn.Conv2d(args.channels, args.classes, 3, padding=r, dilation=r) for r in RATES]
    tied = TiedNJetConv2d.from_convs(convs, order=args.order)
    dense = tied.to_convs()
    x = torch.randn(args.batch, args.channels, args.size, args.size)
    res = {}
    with torch.no_grad():
        res["original"] = median_ms(lambda: sum(c(x) for c in convs), args.repeats)
        res["dense conv (materialised)"] = median_ms(lambda: sum(c(x) for c in dense), max(1, args.repeats // 2))
        res["tied (separable)"] = median_ms(lambda: sum(b(x) for b in tied.branches), args.repeats)

    def fwd_bwd(mods):
        tied.zero_grad()
        sum(m(x) for m in mods).square().mean().backward()

    res["original fwd+bwd"] = median_ms(lambda: fwd_bwd(convs), args.repeats)
    res["tied fwd+bwd"] = median_ms(lambda: fwd_bwd(tied.branches), args.repeats)
    print(f"ASPP head {args.channels}->{args.classes}, rates {RATES}, sizes "
          f"{[tied.kernel_size(k)[0] for k in range(4)]}, input {tuple(x.shape)}, {torch.get_num_threads()} threads")
    for name, ms in res.items():
        base = res["original fwd+bwd"] if "fwd+bwd" in name else res["original"]
        print(f"  {name:28s} {ms:9.2f} ms   x{ms / base:.2f} of original")
    return res


if __name__ == "__main__":
    main()
