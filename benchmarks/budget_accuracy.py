"""What a cost budget costs in accuracy: the MNIST nets of tests/mnist_nets.py, converted with
output-matching calibration under several budgets, fine-tuned briefly, evaluated on the 10k test digits.

Per network (a plain CNN, a ResNet-8, a MobileNet-like net, each trained here on 12k digits) and
budget (none, then × the original's MACs per sample at 28×28): the test accuracy of the original,
of the conversion before fine-tuning, and after ``--steps`` steps of fine-tuning (σ learning at
``--sigma-lr``); the MACs ratio at conversion, the largest over the fine-tuning steps (from the
training history) and at the end. A budget below what a network can reach is reported with its
minimum and skipped. Same seed, data and steps for every variant.

    uv run python benchmarks/budget_accuracy.py                 # writes docs/measured/budget_accuracy.txt
    uv run python benchmarks/budget_accuracy.py --nets plain --budgets none,1.3 --steps 50 --no-write
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import mnist_nets as M  # noqa: E402

import njetify  # noqa: E402
from njetify.budget import BudgetError, macs_now  # noqa: E402
from njetify.train import fit  # noqa: E402


def _budget(text: str, original, x) -> float | None:
    """``none`` → None, ``min`` → the smallest budget the network can reach (rounded up), else the number."""
    if text == "none":
        return None
    if text == "min":
        model, _ = njetify.convert(original, example_inputs=x)
        return math.ceil(model.njetify_costs.minimum * 100) / 100
    return float(text)


def run(net_name: str, budget_text: str, args, data) -> list:
    xtr, ytr, xte, yte = data
    original = M.trained(net_name)
    budget = _budget(budget_text, original, xtr[:2])
    cal = M.calibration_batches(4, 128)
    torch.manual_seed(0)
    try:
        model, report = njetify.convert(original, calibration_data=cal, example_inputs=xtr[:2], budget=budget)
    except BudgetError as e:
        return [net_name, "none" if budget is None else f"{budget:g}", "-", "-", "-", "-", "-",
                f"below the minimum: {str(e).split('needs: ')[-1].split(' the')[0]}"]
    base = report.macs["before"]
    at_conversion = report.macs["after"] / base
    before = M.accuracy(model, xte, yte)
    g = torch.Generator().manual_seed(1)
    idx = torch.randperm(len(ytr), generator=g)[: args.steps * args.batch]
    hist = fit(model, TensorDataset(xtr[idx], ytr[idx]), None, epochs=1, batch_size=args.batch, lr=args.lr,
               sigma_lr=args.sigma_lr, optimizer="adamw", weight_decay=0.0, progress=False, evaluate_first=False,
               seed=0)
    peak = max(p["macs"] for p in hist.steps) / base
    end = macs_now(model) / base
    after = M.accuracy(model, xte, yte)
    return [net_name, "none" if budget is None else f"{budget:g}", f"{M.accuracy(original, xte, yte):.2f}",
            f"{before:.2f}", f"{after:.2f}", f"{at_conversion:.2f}×", f"{peak:.2f}×", f"{end:.2f}×"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", default=",".join(M.NAMES))
    p.add_argument("--budgets", default="none,2,min", help="comma-separated: none, min (the smallest reachable), numbers")
    p.add_argument("--steps", type=int, default=100, help="fine-tuning steps per variant")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--sigma-lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true", help="print only (no docs/measured/budget_accuracy.txt)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = M.mnist()
    header = ["net", "budget", "original %", "converted %", "fine-tuned %", "MACs at conversion",
              "MACs peak (steps)", "MACs end"]
    rows = []
    for net in args.nets.split(","):
        for b in args.budgets.split(","):
            rows.append(run(net, b, args, data))
            print(" | ".join(rows[-1]), flush=True)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    cmd = "uv run python benchmarks/budget_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = (f"# {cmd.strip()}\n# {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"{args.steps} steps of {args.batch} (AdamW lr {args.lr:g}, σ lr {args.sigma_lr:g}), "
            f"calibration 4×128 digits, safe mode, MACs per sample at 1×28×28 ÷ the original's\n" + "\n".join(lines) + "\n")
    print(text)
    if not args.no_write:
        out = ROOT / "docs" / "measured" / "budget_accuracy.txt"
        out.write_text(text)
        print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
