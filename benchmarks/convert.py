"""Conversion cost and training-step cost of njetify's surgery (CPU, random weights).

Prints two tables:

1. conversion time (min / median of ``--repeats`` runs) and peak extra memory of the
   first conversion (RSS sampled every 2 ms, minus the RSS before it; one process per model) for timm
   resnet50 and efficientnet_b0; with ``--against REV`` the same for njetify at git revision REV
   (checked out in a temporary worktree), processes alternating, and the ratios now / REV;
2. one SGD training step of converted vs original torchvision resnet18 at 64×64,
   batch 32, for ``subsample="safe"`` and ``"keep"`` — as a ratio against the
   original measured in the same run (steps interleaved, median of ``--steps``).

Run: ``uv run python benchmarks/convert.py [--repeats 3] [--steps 5] [--threads N] [--against REV]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from rich.console import Console
from rich.table import Table

import njetify
from _rss import PeakRSS  # benchmarks/_rss.py




def bench_conversion(repeats: int, against: str | None = None) -> list[dict]:
    """Each model in a fresh process, so memory freed by one model does not hide the next one's peak.
    With ``against``, the same in a process that imports njetify from that source folder, alternating."""
    rows = []
    for name in ("resnet50", "efficientnet_b0"):
        for label, src in [("now", None)] + ([("then", against)] if against else []):
            env = dict(os.environ, PYTHONPATH=src) if src else None
            out = subprocess.run([sys.executable, __file__, "--one", name, "--repeats", str(repeats)],
                                 capture_output=True, text=True, check=True, env=env)
            rows.append({**json.loads(out.stdout.strip().splitlines()[-1]), "version": label})
    return rows


@contextlib.contextmanager
def checkout(rev: str):
    """A temporary git worktree of this repository at ``rev`` (its path)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = tempfile.mkdtemp(prefix="njetify-")
    subprocess.run(["git", "-C", root, "worktree", "add", "--detach", "-q", path, rev], check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", root, "worktree", "remove", "--force", path], check=True)


def _convert_one(name: str, repeats: int) -> dict:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    times, peaks = [], []
    for _ in range(repeats):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            conv, report = njetify.convert(model)
            times.append(time.perf_counter() - t0)
        peaks.append(mem.peak)
        del conv
    return {
        "model": f"timm/{name}", "params_mib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
        "min_s": min(times), "median_s": statistics.median(times), "peak_mib": peaks[0],
        "converted": report.converted, "sites": len(report.select("subsample", "subsampled")),
    }


def _step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def bench_training(steps: int) -> list[dict]:
    import torchvision

    torch.manual_seed(0)
    x = torch.randn(32, 3, 64, 64)
    y = torch.randint(0, 1000, (32,))
    orig = torchvision.models.resnet18().train()
    models = {"original": orig}
    for mode in ("safe", "keep"):
        models[mode] = njetify.njetify(orig, subsample=mode).train()
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, m in models.items()}
    for k in models:  # warm-up
        _step(models[k], opts[k], x, y)
    times = {k: [] for k in models}
    for _ in range(steps):  # interleaved, so load changes hit every model alike
        for k in models:
            t0 = time.perf_counter()
            _step(models[k], opts[k], x, y)
            times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["original"])
    return [{"model": k, "median_s": statistics.median(v), "ratio": statistics.median(v) / base}
            for k, v in times.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="conversions per model (default 3)")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps per model (default 5)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--against", default=None, metavar="REV",
                    help="also convert with njetify at git revision REV and print the ratios now / REV")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one model, JSON out
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(_convert_one(args.one, args.repeats)))
        return
    console = Console(width=max(100, Console().width))
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
                  f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    t = Table(title="conversion (random weights, no calibration)")
    for c in ("model", "njetify", "weights MiB", "min s", "median s", "peak +MiB", "convs", "sites"):
        t.add_column(c, justify="right" if c != "model" else "left")
    with checkout(args.against) if args.against else contextlib.nullcontext() as src:
        rows = bench_conversion(args.repeats, src)
    for r in rows:
        t.add_row(r["model"], args.against if r["version"] == "then" else "now", f"{r['params_mib']:.0f}",
                  f"{r['min_s']:.2f}", f"{r['median_s']:.2f}", f"{r['peak_mib']:.0f}", str(r["converted"]),
                  str(r["sites"]))
    console.print(t)
    if args.against:
        for now, then in zip(rows[::2], rows[1::2]):
            console.print(f"{now['model']}: time {now['min_s'] / then['min_s']:.2f}x, peak memory "
                          f"{now['peak_mib'] / max(then['peak_mib'], 1e-9):.2f}x of njetify {args.against}")
    t = Table(title="training step, torchvision resnet18, 64x64, batch 32 (SGD)")
    for c in ("model", "median s/step", "ratio vs original"):
        t.add_column(c, justify="right" if c != "model" else "left")
    for r in bench_training(args.steps):
        t.add_row(r["model"] if r["model"] == "original" else f"njetify subsample={r['model']!r}",
                  f"{r['median_s']:.3f}", f"{r['ratio']:.2f}x")
    console.print(t)


if __name__ == "__main__":
    main()
