"""How often filter sizes change while a converted network fine-tunes: each change recompiles a compiled model.

Converts the CIFAR-style resnet20 for MNIST (σ₀ = 0.5 in every layer: on the 3 → 5 px boundary),
fine-tunes it for ``--steps`` steps on MNIST digits (eager, SGD on α and σ) and counts the size changes
logged on ``njetify.sizes``: growths, shrinks, and layers that changed size more than once. Run it in
two checkouts to compare revisions (``PYTHONPATH=<checkout>``).

    uv run python benchmarks/size_changes.py                  # 64 steps, batch 64, σ-lr 0.05
    uv run python benchmarks/size_changes.py --steps 200 --sigma-lr 0.1
"""

from __future__ import annotations

import argparse
import logging
import os
from collections import Counter

import torch

import njetify
from njetify.data import get_dataset, limit
from njetify.train import fit


class _Changes(logging.Handler):
    """Collects ``(layer, old, new)`` from the size-change messages of ``njetify.sizes``."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.changes: list[tuple[str, str, str]] = []

    def emit(self, record):
        msg = record.getMessage()
        if ": filter size " in msg:
            layer, rest = msg.split(": filter size ", 1)
            old, new = rest.split(" px", 1)[0].split(" → ")
            self.changes.append((layer.split(" ", 1)[0], old, new))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sigma-lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    net, _ = njetify.convert(njetify.create_model("resnet20", in_chans=1, num_classes=10))
    handler = _Changes()
    log = logging.getLogger("njetify.sizes")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    data_dir = os.environ.get("NJETIFY_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    train = limit(get_dataset("mnist", "train", data_dir=data_dir), args.steps * args.batch_size)
    val = limit(get_dataset("mnist", "test", data_dir=data_dir), 256)
    fit(net, train, val, task="classification", config=njetify.load_recipe("default").finetune, epochs=1,
        batch_size=args.batch_size, lr=0.05, sigma_lr=args.sigma_lr, out_dir=None, progress=False)
    per_layer = Counter(layer for layer, _, _ in handler.changes)
    grew = sum(int(new) > int(old) for _, old, new in handler.changes)
    layers = sum(isinstance(m, njetify.NJetConv2d) for m in net.modules())
    print(f"resnet20 on MNIST, {args.steps} steps of {args.batch_size}, σ-lr {args.sigma_lr}, {layers} N-Jet layers")
    print(f"size changes: {len(handler.changes)} ({grew} growths, {len(handler.changes) - grew} shrinks) "
          f"in {len(per_layer)} layers; layers that changed more than once: {sum(n > 1 for n in per_layer.values())}, "
          f"most changes of one layer: {max(per_layer.values(), default=0)}")
    print("filters at the end:", dict(sorted(Counter(m.kernel_size[0] for m in net.modules()
                                                      if isinstance(m, njetify.NJetConv2d)).items())))


if __name__ == "__main__":
    main()
