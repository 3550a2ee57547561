"""Time and peak memory of output-matching calibration on timm ``resnet50`` (random weights).

The model is converted without data (``njetify.convert``, default recipe), then the engine
(:func:`njetify.calibration.calibrate_model`) refits its 17 converted convolutions on
``--batches`` random batches of ``--batch`` images at ``--size``×``--size``. Printed per
repetition, interleaved with the baseline — one plain forward pass of the original model over
the same batches, in eval mode without gradients — : seconds, the ratio to the baseline, and
the peak resident memory above what the process held before the call (models and batches
loaded), sampled every 5 ms from ``/proc/self/statm``. ``--sigma-fit`` also tries the σ₀
candidates of ``sigma_init: fit`` for every layer.

    uv run python benchmarks/calibrate.py                 # 8 batches of 16 at 224, 2 repetitions
    uv run python benchmarks/calibrate.py --sigma-fit
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

import njetify
from _rss import PeakRSS  # benchmarks/_rss.py
from njetify.calibration import CalibrationOptions, LayerOptions, calibrate_model, sigma_candidates
from njetify.recipes import resolve_recipe



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sigma-fit", action="store_true")
    ap.add_argument("--engine", action="append", default=[], metavar="KEY=VALUE",
                    help="CalibrationOptions field, e.g. max_samples=4096")
    args = ap.parse_args()
    import timm

    torch.manual_seed(0)
    original = timm.create_model(args.model, pretrained=False).eval()
    converted0, report = njetify.convert(original, recipe=resolve_recipe(max_fit_error=float("inf")))
    paths = [p for p, m in converted0.named_modules() if isinstance(m, njetify.NJetConv2d)]
    batches = [torch.randn(args.batch, 3, args.size, args.size) for _ in range(args.batches)]
    engine = {k: (float(v) if "." in v or "e" in v else int(v)) for k, v in (e.split("=", 1) for e in args.engine)}
    opts = CalibrationOptions(**engine)

    def layer_options(path):
        conv = original.get_submodule(path)
        sig = sigma_candidates(conv.kernel_size[0], conv.dilation[0]) if args.sigma_fit else None
        return LayerOptions(sigmas=sig)

    print(f"{args.model}: {len(paths)} converted convs, {args.batches} batches of {args.batch} at "
          f"{args.size}×{args.size}, threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}, "
          f"σ₀ search {'on' if args.sigma_fit else 'off'}, engine options {engine or 'defaults'}")
    base_t, cal_t = [], []
    for rep in range(args.repeats):
        with torch.no_grad(), PeakRSS() as fwd_mem:
            t = time.perf_counter()
            for x in batches:
                original(x)
            base_t.append(time.perf_counter() - t)
        converted = copy.deepcopy(converted0)
        with PeakRSS() as cal_mem:
            t = time.perf_counter()
            res = calibrate_model(original, converted, paths, batches, options=opts, layer_options=layer_options)
            cal_t.append(time.perf_counter() - t)
        slow = sorted(res.layers, key=lambda r: -r.seconds)[:3]
        fits = sum(r.seconds for r in res.layers)
        print(f"repeat {rep}: baseline forward {base_t[-1]:.1f} s (peak +{fwd_mem.peak:.0f} MiB); "
              f"calibration {cal_t[-1]:.1f} s = {cal_t[-1] / base_t[-1]:.1f}× baseline "
              f"(targets {res.target_seconds:.1f} s, layer fits {fits:.1f} s, the rest is the converted model's "
              f"forward), peak +{cal_mem.peak:.0f} MiB; "
              f"{res.summary()['calibrated']} calibrated"
              + "".join(f", {r.path} {r.status} ({r.reason})" for r in res.layers if r.status != "calibrated")
              + "; slowest layers: "
              + ", ".join(f"{r.path} {r.seconds:.1f} s ({r.samples} samples, {r.solver})" for r in slow), flush=True)
        del converted, res
    print(f"median: baseline {statistics.median(base_t):.1f} s, calibration {statistics.median(cal_t):.1f} s "
          f"({statistics.median(cal_t) / statistics.median(base_t):.1f}×)")


if __name__ == "__main__":
    main()
