"""Tie a DeepLab-v2-style ASPP head on a toy segmentation task and fine-tune it (DESIGN §5).

Task: ``mnist-multiscale-seg`` — four MNIST digits per canvas, each at a random scale,
per-pixel labels (background + 10 digits). Model: a small conv backbone (output stride 4)
and a v2 ASPP head of four biased 3×3 convs with rates 1/2/3/4 whose outputs are summed.

Steps:
  1. train the original model (``--steps`` SGD steps) and measure val mIoU;
  2. tie its ASPP with :func:`njetify.tie_aspp` — weight-space and data-aware
     (``--calib`` training batches) — and measure mIoU right after tying;
  3. fine-tune the data-aware tied model (``--finetune`` steps; σ with its own lr) and
     print σ per branch and val mIoU every ``--every`` steps;
  4. with ``--control``: train the untied model for the same extra steps, for comparison.

Run: ``uv run python examples/aspp_mnist_seg.py`` (about 2–3 min on 2 CPU cores).
MNIST is read from ``--data`` (torchvision layout), never downloaded.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from njetify.data.synthetic import MnistMultiscaleSeg
from njetify import tie_aspp

NUM_CLASSES = 11
IGNORE = 255


class TinyASPP(nn.Module):
    """Biased dilated 3×3 branches ``c0..c3``, summed (kazuto1011's v2 ``_ASPP``)."""

    def __init__(self, in_ch: int, out_ch: int, rates=(1, 2, 3, 4)):
        super().__init__()
        for i, r in enumerate(rates):
            self.add_module(f"c{i}", nn.Conv2d(in_ch, out_ch, 3, padding=r, dilation=r))

    def forward(self, x):
        return sum(b(x) for b in self.children())


class TinyDeepLab(nn.Module):
    """Backbone (2 strided + 2 plain 3×3 conv-BN-ReLU, OS 4) → ASPP → bilinear upsampling."""

    def __init__(self, width: int = 32, rates=(1, 2, 3, 4)):
        super().__init__()

        def cbr(i, o, s):
            return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

        self.backbone = nn.Sequential(cbr(1, 16, 2), cbr(16, width, 2), cbr(width, width, 1), cbr(width, width, 1))
        self.aspp = TinyASPP(width, NUM_CLASSES, rates)

    def forward(self, x):
        y = self.aspp(self.backbone(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


@torch.no_grad()
def miou(model: nn.Module, loader) -> float:
    """Mean IoU over the classes present (prediction or label), ignoring label 255."""
    was = model.training
    model.eval()
    conf = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    for x, y in loader:
        p = model(x).argmax(1)
        keep = y != IGNORE
        conf += torch.bincount(y[keep] * NUM_CLASSES + p[keep], minlength=NUM_CLASSES**2).view(NUM_CLASSES, -1)
    model.train(was)
    inter = conf.diag().double()
    union = conf.sum(0).double() + conf.sum(1).double() - inter
    return float((inter[union > 0] / union[union > 0]).mean())


def batches(loader):
    while True:
        yield from loader


def train(model, loader, steps, lr, sigma_lr=None, log=None, every=0):
    """SGD with momentum; parameters named ``log_sigma`` get ``sigma_lr``. Calls ``log(step)`` every ``every`` steps."""
    sig = [p for n, p in model.named_parameters() if n.endswith("log_sigma")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("log_sigma")]
    groups = [{"params": rest, "lr": lr}] + ([{"params": sig, "lr": sigma_lr or lr}] if sig else [])
    opt = torch.optim.SGD(groups, momentum=0.9, weight_decay=1e-4)
    model.train()
    it = batches(loader)
    for step in range(1, steps + 1):
        x, y = next(it)
        loss = F.cross_entropy(model(x), y, ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log is not None and every and step % every == 0:
            log(step, loss.item())
    return model


def sigmas(model) -> list[float]:
    return [round(v, 3) for n, p in model.named_parameters() if n.endswith("log_sigma") for v in p.exp().tolist()]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--steps", type=int, default=300, help="training steps of the original model")
    ap.add_argument("--finetune", type=int, default=200, help="fine-tuning steps of the tied model")
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--calib", type=int, default=4, help="calibration batches for the data-aware fit")
    ap.add_argument("--val", type=int, default=256, help="validation samples")
    ap.add_argument("--order", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--sigma-lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--control", action="store_true",
                    help="also train the untied model for the fine-tuning steps (same budget, for comparison)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    scales = (0.75, 1.0, 1.5)
    train_set = MnistMultiscaleSeg("train", args.data, scales=scales, length=20000, seed=args.seed)
    val_set = MnistMultiscaleSeg("val", args.data, scales=scales, length=args.val, seed=args.seed)
    loader = DataLoader(train_set, batch_size=args.batch, shuffle=True)
    val = DataLoader(val_set, batch_size=64)
    print(f"canvas {train_set.canvas}px, digit scales {scales}")

    model = train(TinyDeepLab(), loader, args.steps, args.lr)
    base = miou(model, val)
    print(f"original: val mIoU {base:.4f} after {args.steps} steps ({time.perf_counter() - t0:.0f}s)")

    ws, _ = tie_aspp(model, order=args.order)
    ws_miou = miou(ws, val)
    calib = [x for x, _ in [next(iter(DataLoader(train_set, batch_size=args.batch, shuffle=True)))
                            for _ in range(args.calib)]]
    da, report = tie_aspp(model, order=args.order, calibration_data=calib)
    da_miou = miou(da, val)
    print(report)
    print(f"tied (weight-space fit): val mIoU {ws_miou:.4f}; tied (data-aware fit): val mIoU {da_miou:.4f}")

    history = [(0, sigmas(da), da_miou)]

    def log(step, loss):
        history.append((step, sigmas(da), miou(da, val)))
        print(f"  fine-tune step {step:4d}: loss {loss:.3f}  σ {history[-1][1]}  val mIoU {history[-1][2]:.4f}")

    train(da, loader, args.finetune, args.lr, args.sigma_lr, log, args.every)
    control = None
    if args.control:
        control = miou(train(model, loader, args.finetune, args.lr), val)
        print(f"control: untied model trained {args.finetune} more steps: val mIoU {control:.4f}")
    print(f"done in {time.perf_counter() - t0:.0f}s")
    return {"original": base, "tied_weight_space": ws_miou, "tied_data_aware": da_miou, "history": history,
            "control": control, "report": report.to_dict()}


if __name__ == "__main__":
    main()
