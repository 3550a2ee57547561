"""Convert a small trained CNN to N-Jet layers, then fine-tune it on MNIST (CPU, a few minutes).

1. Train a plain 4-conv CNN (two stride-2 convs) for one epoch on an MNIST subset.
2. Convert it with ``njetify.convert`` (order 3, safe-subsampling, output-matching calibration).
3. Fine-tune with ``njetify.train.fit``: weights and σ learn; every epoch is recorded.
4. Plot the history with ``njetify.plots`` (accuracy/loss, σ per layer, sizes).

    uv run python examples/finetune_mnist.py --data-dir /work/shared/data --out runs/finetune_mnist \
        --img docs/img --threads 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Subset

import njetify
from njetify.data import get_dataset
from njetify.plots import plot_curves, plot_sigma, plot_sizes
from njetify.train import fit


def small_cnn() -> nn.Sequential:
    """28×28×1 → 10 logits; two stride-2 3×3 convs (the subsampling njetify makes learnable)."""

    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(*block(1, 16, 1), *block(16, 32, 2), *block(32, 32, 1), *block(32, 64, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="data")
    p.add_argument("--out", default="runs/finetune_mnist")
    p.add_argument("--img", default=None, help="also write the PNGs here (e.g. docs/img)")
    p.add_argument("--train-samples", type=int, default=6000)
    p.add_argument("--val-samples", type=int, default=5000)
    p.add_argument("--pretrain-epochs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 helps on a busy shared CPU)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    train = get_dataset("mnist", "train", args.data_dir)
    train = Subset(train, torch.randperm(len(train), generator=g)[: args.train_samples].tolist())
    val = Subset(get_dataset("mnist", "test", args.data_dir), range(args.val_samples))

    plain = small_cnn()
    h0 = fit(plain, train, val, epochs=args.pretrain_epochs, batch_size=64, lr=0.05, warmup_epochs=0.1,
             evaluate_first=False, out_dir=Path(args.out) / "plain", progress=False)
    print(f"plain CNN after {args.pretrain_epochs} epoch(s): val acc {h0.epochs[-1]['val']['acc']:.2f}%  ({time.time() - t0:.0f} s)")

    calib = [torch.stack([train[i][0] for i in range(b * 64, (b + 1) * 64)]) for b in range(4)]
    model, report = njetify.convert(plain, order=3, subsample="safe", calibration_data=calib,
                                    example_inputs=calib[0][:2])
    print(f"converted: {sum(1 for m in model.modules() if isinstance(m, njetify.NJetConv2d))} N-Jet layers, "
          f"{sum(1 for m in model.modules() if isinstance(m, njetify.SafeSubsample))} safe-subsamplings")

    h = fit(model, train, val, epochs=args.epochs, batch_size=64, lr=0.02, sigma_lr=0.05, weight_decay=5e-4,
            schedule="cosine", warmup_epochs=0.0, out_dir=Path(args.out) / "njet", progress=True)
    first, last = h.epochs[0], h.epochs[-1]
    print(f"converted, before fine-tuning: val acc {first['val']['acc']:.2f}%")
    print(f"after {last['epoch']} epochs:           val acc {last['val']['acc']:.2f}%  "
          f"({last['throughput']:.0f} img/s training)")
    for name, d in last["layers"].items():
        print(f"  {name:>4}: σ {first['layers'][name]['sigma']:.3f} → {d['sigma']:.3f} px, "
              f"filter {first['layers'][name]['size']} → {d['size']} px")
    for name, hw in last["feature_sizes"].items():
        print(f"  {name}: feature map {h.meta['feature_sizes_original'][name]} (original) → {hw}")
    for folder in filter(None, [Path(args.out), args.img and Path(args.img)]):
        plot_curves(h, folder / "finetune_mnist_curves.png")
        plot_sigma(h, folder / "finetune_mnist_sigma.png")
        plot_sizes(h, folder / "finetune_mnist_sizes.png")
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
