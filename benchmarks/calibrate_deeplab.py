"""Time and peak memory of converting torchvision's DeepLabv3-ResNet50 with calibration data (CPU, random weights).

Output matching refits every converted layer and the tied ASPP head on the calibration images, so
this measures the calibration engine on a real segmentation network: dilated backbone convs and
ASPP branches with large filters. To compare two revisions, run it in a checkout of each.

    uv run python benchmarks/calibrate_deeplab.py [--size 129] [--images 2] [--wide-solver per_channel]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import time
import warnings

import torch
import torchvision

import njetify


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=129, help="input side in pixels")
    ap.add_argument("--images", type=int, default=2, help="calibration images (one per batch)")
    ap.add_argument("--wide-solver", default=None, help="recipe calibration.wide_solver (pcg | per_channel)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None).eval()
    data = [torch.randn(1, 3, args.size, args.size) for _ in range(args.images)]
    t0 = time.perf_counter()
    calibration = {"wide_solver": args.wide_solver} if args.wide_solver else None
    net, report = njetify.convert(model, calibration_data=data, calibration=calibration)
    seconds = time.perf_counter() - t0
    for head in report.select("aspp"):
        if head.error_after is not None:
            print(f"ASPP head {head.path}: solver {head.extra.get('solver')}, output error "
                  f"{head.error_before:.3f} → {head.error_after:.3f}")
    with torch.no_grad():
        y0, y1 = model(data[0])["out"], net(data[0])["out"]
    print(f"model output error against the original: {float((y1 - y0).norm() / y0.norm()):.4f}")
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"revision {rev}, {torch.get_num_threads()} threads: tv:deeplabv3_resnet50 at {args.size}², "
          f"{args.images} calibration images: convert {seconds:.1f} s, peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
