"""The per-layer errors behind the fidelity gate's default (``max_fit_error``, docs/calibration.md).

Printed: the relative weight-space fit errors of random-init timm models (every layer the
default recipe converts, gate off) and of dilated 3×3 kernels at orders 3 and 2, and the
relative output errors after output-matching calibration of the three MNIST networks of
``tests/mnist_nets.py`` (trained in the run; ``--cache DIR`` keeps their weights).

    uv run python benchmarks/fit_errors.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import mnist_nets as M  # noqa: E402

import njetify  # noqa: E402
from njetify.recipes import resolve_recipe  # noqa: E402

NO_GATE = dict(max_fit_error=float("inf"))


def _range(values) -> str:
    v = sorted(values)
    return f"{v[0]:.2f}–{v[-1]:.2f} (median {v[len(v) // 2]:.2f}, {len(v)} layers)"


def weight_errors(model: nn.Module, order: int) -> dict[str, float]:
    """``{path: weight-space error}`` of every converted conv (gate off, σ₀ from the kernel rule)."""
    _, report = njetify.convert(model, order=order, recipe=resolve_recipe(**NO_GATE))
    return {r.path: r.fit_error for r in report.select("conv", "converted")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,mobilenetv2_100,efficientnet_b0")
    ap.add_argument("--cache", default=None, help="directory caching the trained MNIST networks' weights")
    args = ap.parse_args()
    import timm

    print("weight-space errors, random init (timm, pretrained=False), kernel rule σ₀, no gate:")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False)
        for order in (3, 2):
            errs = weight_errors(model, order)
            k3 = [e for p, e in errs.items() if model.get_submodule(p).kernel_size[0] == 3]
            big = [e for p, e in errs.items() if model.get_submodule(p).kernel_size[0] > 3]
            line = f"  {name} order {order}: 3×3 {_range(k3)}"
            print(line + (f"; larger kernels {_range(big)}" if big else ""))
    print("weight-space errors, dilated 3×3 kernels (random init, 8→8 channels):")
    for d in (2, 4):
        torch.manual_seed(0)
        conv = nn.Sequential(nn.Conv2d(8, 8, 3, padding=d, dilation=d))
        print(f"  dilation {d}: " + ", ".join(f"order {o} {weight_errors(conv, o)['0']:.2f}" for o in (3, 2)))
    if not M.available():
        print(f"MNIST not found under {M.DATA.resolve()}: trained networks skipped")
        return
    print("output errors after calibration (default recipe, gate off), trained MNIST networks:")
    cal = M.calibration_batches()
    for name in M.NAMES:
        net = M.trained(name, args.cache)
        for order in (3, 2):
            _, report = njetify.convert(net, order=order, calibration_data=cal, recipe=resolve_recipe(**NO_GATE))
            rows = report.select("conv", "converted")
            print(f"  {name} order {order}: before {_range([r.error_before for r in rows])}; "
                  f"after {_range([r.error_after for r in rows])}")


if __name__ == "__main__":
    main()
