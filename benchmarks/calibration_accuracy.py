"""Accuracy kept by conversion, and what the chosen σ₀ costs per training step (docs/calibration.md).

Three networks trained on MNIST in this run (tests/mnist_nets.py: a plain CNN with BatchNorm,
a 5×5 conv, max-pooling and a strided conv; a CIFAR-style ResNet-8; a MobileNet-like
depthwise-separable net) are converted at each order and evaluated on the 10k test digits
before any fine-tuning:

* ``weight-space``: no calibration data (α fitted to the kernels);
* ``kernel``: output-matching calibration on 4×128 training digits, σ₀ from the kernel rule;
* ``fit``: the same with ``sigma_init: fit`` (the default recipe's).

``--engine KEY=VALUE`` sets :class:`njetify.calibration.CalibrationOptions` fields (e.g.
``ridge=1e-4``, ``max_samples=2048``, ``dense_strided=true``) for the calibrated variants, which
then call the engine directly on a model converted without data. ``--train-step`` adds the
median time of one training step (forward, backward, Adam) of every variant on a batch of 128,
interleaved over rounds, as a ratio to the original network's step measured in the same rounds,
with σ learned and with σ frozen at σ₀ (σ₀ = 0.5 sits on the 3 → 5 px boundary: the first
step that grows σ makes the filter 5×5, so only the frozen figures separate the sizes).

    uv run python benchmarks/calibration_accuracy.py
    uv run python benchmarks/calibration_accuracy.py --orders 3 --engine ridge=1e-2 --nets plain
    uv run python benchmarks/calibration_accuracy.py --orders 3 --variants kernel,fit --train-step --threads 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import mnist_nets as M  # noqa: E402

import njetify  # noqa: E402
from njetify.calibration import CalibrationOptions, LayerOptions, calibrate_model, sigma_candidates  # noqa: E402
from njetify.recipes import resolve_recipe  # noqa: E402

VARIANTS = ("weight-space", "kernel", "fit")


def _value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def convert(net, variant: str, order: int, cal, engine: dict | None, subsample: str, dw_order: int | None):
    """``(converted model, seconds of calibration, report or engine result)`` for one variant."""
    rules = [] if dw_order is None else [{"match": p, "order": dw_order, "depthwise_order": dw_order}
                                         for p, m in net.named_modules()
                                         if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    sigma = "fit" if variant == "fit" else "kernel"
    if variant == "weight-space":
        model, report = njetify.convert(net, order=order, subsample=subsample, recipe=resolve_recipe(rules=rules))
        return model, 0.0, report
    if engine is None:
        t = time.perf_counter()
        model, report = njetify.convert(net, order=order, subsample=subsample, calibration_data=cal,
                                        recipe=resolve_recipe(sigma_init=sigma, rules=rules))
        return model, time.perf_counter() - t, report
    model, _ = njetify.convert(net, order=order, subsample=subsample,
                               recipe=resolve_recipe(rules=rules, max_fit_error=float("inf")))
    paths = [p for p, m in model.named_modules() if isinstance(m, njetify.NJetConv2d)]

    def options(path):
        conv = net.get_submodule(path)
        sig = sigma_candidates(conv.kernel_size[0], conv.dilation[0]) if sigma == "fit" else None
        return LayerOptions(sigmas=sig)

    t = time.perf_counter()
    res = calibrate_model(net, model, paths, cal, options=CalibrationOptions(**engine), layer_options=options)
    return model, time.perf_counter() - t, res


def step_times(models: dict, rounds: int = 7) -> dict[str, float]:
    """Median seconds of one training step per model (batch 128), rounds interleaved."""
    x = M.mnist()[0][:128]
    y = M.mnist()[1][:128]
    opts = {k: torch.optim.Adam(m.parameters(), 1e-4) for k, m in models.items()}
    times: dict[str, list] = {k: [] for k in models}
    for r in range(rounds + 1):
        for k, m in models.items():
            m.train()
            t = time.perf_counter()
            opts[k].zero_grad()
            F.cross_entropy(m(x), y).backward()
            opts[k].step()
            if r:
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default=",".join(M.NAMES))
    ap.add_argument("--orders", default="3,2")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--subsample", default="safe", choices=("safe", "keep"))
    ap.add_argument("--engine", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--dw-order", type=int, default=None, help="order of the depthwise convs (a recipe rule)")
    ap.add_argument("--train-step", action="store_true")
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds of --train-step")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--cache", default=None, help="directory caching the trained networks' weights")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = dict((k, _value(v)) for k, v in (e.split("=", 1) for e in args.engine)) if args.engine else None
    if not M.available():
        sys.exit(f"MNIST not found under {M.DATA.resolve()}")
    cal = M.calibration_batches()
    print(f"calibration: {len(cal)}×{cal[0].shape[0]} training digits; subsample={args.subsample}; "
          f"engine options: {engine or 'defaults (pipeline)'}; depthwise order: {args.dw_order or 'recipe'}")
    print("| net | original | order | variant | accuracy | Δ points | calibration s | σ₀ chosen | reverted |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.nets.split(","):
        net = M.trained(name, args.cache)
        base = M.accuracy(net)
        models = {"original": net}
        for order in map(int, args.orders.split(",")):
            for variant in args.variants.split(","):
                model, secs, info = convert(net, variant, order, cal, engine, args.subsample, args.dw_order)
                acc = M.accuracy(model)
                if hasattr(info, "layers"):  # an engine result
                    sig = " ".join(f"{r.sigma0[0]:g}" for r in info.layers if r.status == "calibrated")
                    kept = len(info.select("reverted"))
                else:
                    sig = " ".join(f"{r.sigma0:g}" for r in info.select("conv", "converted"))
                    kept = len(info.calibration.get("reverted", []))
                print(f"| {name} | {base:.2f} | {order} | {variant} | {acc:.2f} | {acc - base:+.2f} | {secs:.1f} | "
                      f"{sig} | {kept} |", flush=True)
                models[f"{variant} o{order}"] = model
        if args.train_step:
            for key in [k for k in models if k != "original"]:  # σ frozen at σ₀: the filter size stays put
                frozen = copy.deepcopy(models[key])
                for m in frozen.modules():
                    if isinstance(m, njetify.NJetConv2d):
                        m.log_sigma.requires_grad_(False)
                models[f"{key} σ frozen"] = frozen
            t = step_times(models, args.rounds)
            print(f"train step ({name}, batch 128, median of {args.rounds} interleaved rounds): "
                  + ", ".join(f"{k} {v * 1e3:.1f} ms ({v / t['original']:.2f}×)" for k, v in t.items()), flush=True)


if __name__ == "__main__":
    main()
