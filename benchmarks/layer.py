"""Speed and memory of NJetConv2d against nn.Conv2d, as ratios measured in one run.

For each shape: a training step (forward + backward) and an eval forward
(no_grad, cached filter) of

* ``njet``   — NJetConv2d at σ giving the listed filter size,
* ``conv_s`` — nn.Conv2d with the same materialised kernel size (the unavoidable cost),
* ``conv3``  — the 3×3 nn.Conv2d the N-Jet layer would replace.

Prints median times and the ratios njet/conv_s and njet/conv3, plus the bytes
autograd saves for backward (activation memory) and, on CUDA, peak allocated memory.

    uv run python benchmarks/layer.py            # full table (a few minutes on 2 CPU cores)
    uv run python benchmarks/layer.py --quick    # small shapes, seconds
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from njetify import NJetConv2d

# (label, batch, in, out, H=W, groups, σ) — σ 1.0/1.5/2.5 give 5×5/7×7/11×11 filters
FULL = [
    ("64→64 @32², 5×5", 32, 64, 64, 32, 1, 1.0),
    ("64→64 @32², 7×7", 32, 64, 64, 32, 1, 1.5),
    ("64→64 @32², 11×11", 32, 64, 64, 32, 1, 2.5),
    ("256→256 @14², 5×5", 32, 256, 256, 14, 1, 1.0),
    ("256→256 @14², 7×7", 32, 256, 256, 14, 1, 1.5),
    ("dw 96 @56², 5×5", 32, 96, 96, 56, 96, 1.0),
    ("dw 96 @56², 7×7", 32, 96, 96, 56, 96, 1.5),
    ("dw 96 @56², 11×11", 32, 96, 96, 56, 96, 2.5),
]
QUICK = [
    ("16→16 @16², 5×5", 8, 16, 16, 16, 1, 1.0),
    ("dw 16 @16², 7×7", 8, 16, 16, 16, 16, 1.5),
]


def median_times(fns: dict, reps: int, device: torch.device) -> dict[str, float]:
    """Median wall time in ms of each ``fns[name]()``, interleaved rep by rep so that
    load from other processes hits every candidate alike; two warm-ups each."""
    for fn in fns.values():
        fn(), fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for backward in one forward (activation memory)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x).sum()
    return total


def peak_cuda_mb(fn, device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def bench_shape(spec, reps: int, device: torch.device) -> dict:
    label, batch, cin, cout, hw, groups, sigma = spec
    njet = NJetConv2d(cin, cout, order=3, sigma=sigma, groups=groups, device=device)
    size = njet.kernel_size[0]
    conv_s = nn.Conv2d(cin, cout, size, padding=size // 2, groups=groups, device=device)
    conv3 = nn.Conv2d(cin, cout, 3, padding=1, groups=groups, device=device)
    x = torch.randn(batch, cin, hw, hw, device=device)
    row = {"shape": label, "size": size}
    mods = {"njet": njet, "conv_s": conv_s, "conv3": conv3}
    xr = x.clone().requires_grad_(True)

    def train_step(m):
        m.zero_grad(set_to_none=True)
        m(xr).sum().backward()

    for m in mods.values():
        m.train()
    for name, t in median_times({n: (lambda m=m: train_step(m)) for n, m in mods.items()}, reps, device).items():
        row[f"train_{name}"] = t
    for name, m in mods.items():
        row[f"saved_{name}"] = saved_bytes(m, xr) / 2**20
        row[f"peak_{name}"] = peak_cuda_mb(lambda m=m: train_step(m), device)
        m.eval()
    with torch.no_grad():
        for name, t in median_times({n: (lambda m=m: m(x)) for n, m in mods.items()}, reps, device).items():
            row[f"eval_{name}"] = t
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two small shapes")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    reps = args.reps or (5 if args.quick else 7)
    specs = QUICK if args.quick else FULL
    console = Console(width=110)
    console.print(f"device={device}, torch {torch.__version__}, threads={torch.get_num_threads()}, reps={reps}")
    table = Table(title="NJetConv2d vs nn.Conv2d: median ms, ratio = njet / baseline")
    for col in ("shape", "train ms", "/conv s×s", "/conv 3×3", "eval ms", "/conv s×s", "/conv 3×3", "act. MB njet/conv"):
        table.add_column(col, justify="left" if col == "shape" else "right", no_wrap=True)
    for spec in specs:
        r = bench_shape(spec, reps, device)
        mem = f"{r['saved_njet']:.1f}/{r['saved_conv_s']:.1f}"
        if r["peak_njet"] is not None:
            mem += f" (peak {r['peak_njet']:.0f}/{r['peak_conv_s']:.0f})"
        table.add_row(
            r["shape"],
            f"{r['train_njet']:.2f}",
            f"{r['train_njet'] / r['train_conv_s']:.3f}",
            f"{r['train_njet'] / r['train_conv3']:.2f}",
            f"{r['eval_njet']:.2f}",
            f"{r['eval_njet'] / r['eval_conv_s']:.3f}",
            f"{r['eval_njet'] / r['eval_conv3']:.2f}",
            mem,
        )
    console.print(table)


if __name__ == "__main__":
    main()
