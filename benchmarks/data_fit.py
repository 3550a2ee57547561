"""Output error of the data-based fits of one layer on the images they saw and on held-out ones.

``NJetConv2d.from_conv(conv, inputs=...)`` solves each input channel on its own (the calibration
engine's per-channel solver); ``convert``'s calibration solves all channels jointly. This script fits a
random conv on a few spatially smooth random batches both ways and prints the relative output error
``‖layer(x) − conv(x)‖ / ‖conv(x)‖`` on the fitted images and on held-out images, next to the
weight-space fit's (no data). Inputs with independent channels are the case where the joint fit has
nothing real to learn from cross-channel terms, so what it learns there is the sample's.

    uv run python benchmarks/data_fit.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from njetify import NJetConv2d
from njetify.calibration.on_inputs import fit_on_inputs

# (label, in, out, dilation, images fitted, H=W)
CASES = [("512→64, 3×3 d=6", 512, 64, 6, 8, 33), ("128→64, 3×3", 128, 64, 1, 8, 33)]
HELD_OUT = 4


def _error(layer, conv, x) -> float:
    with torch.no_grad():
        ref = conv(x)
        return float((layer(x) - ref).norm() / ref.norm())


def main() -> None:
    torch.manual_seed(0)
    console = Console(width=120)
    table = Table(title="Relative output error of one layer's fit (smooth random inputs, CPU)")
    for col in ("layer", "fit", "solver", "fitted images", "held-out images", "seconds"):
        table.add_column(col, justify="left" if col in ("layer", "fit", "solver") else "right")
    for label, cin, cout, d, n, hw in CASES:
        conv = nn.Conv2d(cin, cout, 3, padding=d, dilation=d)
        x = F.avg_pool2d(torch.randn(n + HELD_OUT, cin, hw, hw), 5, stride=1, padding=2)
        fit, held = x[:n], x[n:]
        plain = NJetConv2d.from_conv(conv)
        table.add_row(label, "weight space", "-", f"{_error(plain, conv, fit):.3f}", f"{_error(plain, conv, held):.3f}", "-")
        for name, opts in (("per channel (from_conv inputs=)", None), ("joint (convert's calibration)", {"direct_max_dim": 8192})):
            layer = NJetConv2d.from_conv(conv)
            t0 = time.perf_counter()
            res = fit_on_inputs([layer], [conv], list(fit.split(4)), opts)
            seconds = time.perf_counter() - t0
            table.add_row("", name, res.solver, f"{_error(layer, conv, fit):.3f}", f"{_error(layer, conv, held):.3f}",
                          f"{seconds:.1f}")
    console.print(table)


if __name__ == "__main__":
    main()
