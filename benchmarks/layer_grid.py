"""``path="auto"`` against every forced path of NJetConv2d on a grid of shapes; the worst ratio last.

Points are drawn (seeded) from channels 32–1024, maps 7²–112², batch 1–64, σ 0.5–12 and groups 1
or depthwise; a point whose dense filter or work is beyond ``--max-gmacs`` is redrawn. At each
point the layer runs with ``path="auto"`` (its first call measures and picks, not timed) and with
each path forced (``dense``, ``basis_first``, ``mix_first`` where it can run), timed interleaved
(:func:`layer.median_times`): a train step (forward + backward into the input, α and σ) and an
eval forward. Printed per point: the time of every path ÷ the best forced one, which path auto
took, and auto ÷ the best path timed again head to head (the two alternately, 3× the reps: next
to paths 50× slower, a sub-millisecond layer's time depends on what ran before it); last, the
worst auto ÷ best over the grid (the target is ≤ 1.10×).

    uv run python benchmarks/layer_grid.py --points 24 --write docs/measured/layer_grid_cpu.txt
    uv run python benchmarks/layer_grid.py --points 6 --reps 3           # a quick look
"""

from __future__ import annotations

import argparse
import random
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from layer import median_times  # noqa: E402

from njetify import NJetConv2d  # noqa: E402
from njetify import basis as B  # noqa: E402

CHANNELS = (32, 64, 128, 256, 512, 1024)
MAPS = (7, 14, 28, 56, 112)
BATCHES = (1, 8, 32, 64)
SIGMAS = (0.5, 1.0, 2.0, 4.0, 8.0, 12.0)
PATHS = ("dense", "basis_first", "mix_first")


def draw(rng: random.Random, max_gmacs: float) -> dict:
    """One grid point whose dense train step stays below ``max_gmacs`` GMACs."""
    while True:
        c, hw, n, sigma = rng.choice(CHANNELS), rng.choice(MAPS), rng.choice(BATCHES), rng.choice(SIGMAS)
        depthwise = rng.random() < 0.25
        size = 2 * B.half_width(sigma, 2.0) + 1
        cg = 1 if depthwise else c
        if size > 2 * hw + 1 or 3 * n * c * cg * hw * hw * min(size * size, 9 * 15) / 1e9 > max_gmacs:
            continue
        return {"channels": c, "map": hw, "batch": n, "sigma": sigma, "groups": c if depthwise else 1, "size": size}


def point(p: dict, reps: int, max_seconds: float) -> dict:
    """Times of every path and of auto at point ``p``, train and eval, in ms."""
    torch.manual_seed(0)
    c, g = p["channels"], p["groups"]
    layers = {name: NJetConv2d(c, c, order=3, sigma=p["sigma"], groups=g, path=name) for name in ("auto", *PATHS)}
    for m in layers.values():
        m.load_state_dict(layers["auto"].state_dict())
    x = torch.randn(p["batch"], c, p["map"], p["map"], requires_grad=True)
    gy = torch.randn(p["batch"], c, p["map"], p["map"])
    runnable = {}
    for name, m in layers.items():
        try:
            m(x)
            runnable[name] = m
        except ValueError:  # e.g. basis-first with per-channel σ: not a candidate
            continue
    out = dict(p)
    for kind in ("train", "eval"):
        for m in runnable.values():
            m.train(kind == "train")
        if kind == "train":
            fns = {n: (lambda m=m: m(x).backward(gy)) for n, m in runnable.items()}
            ms, _ = median_times(fns, reps, torch.device("cpu"), max_seconds)
        else:
            with torch.no_grad():
                fns = {n: (lambda m=m: m(x)) for n, m in runnable.items()}
                ms, _ = median_times(fns, reps, torch.device("cpu"), max_seconds)
        best_name = min((k for k in ms if k != "auto"), key=ms.get)
        out[kind] = {k: v / ms[best_name] for k, v in ms.items()}
        # auto against the best path head to head: in the round above, auto's runs follow paths up to
        # 50× slower whose cold caches cost sub-millisecond layers up to 1.6× (auto and dense run the
        # same conv2d: measured in isolation they take the same time)
        two = {"auto": fns["auto"], best_name: fns[best_name]}
        if kind == "train":
            head, _ = median_times(two, 3 * reps, torch.device("cpu"), max_seconds)
        else:
            with torch.no_grad():
                head, _ = median_times(two, 3 * reps, torch.device("cpu"), max_seconds)
        out[kind]["auto"] = head["auto"] / head[best_name]
        out[f"{kind}_auto_path"] = runnable["auto"].last_path
    return out


def _line(r: dict) -> str:
    shape = f"{'dw ' if r['groups'] > 1 else ''}{r['channels']} @{r['map']}², b{r['batch']}, σ={r['sigma']:g} ({r['size']}px)"
    cells = [shape]
    for kind in ("train", "eval"):
        paths = "  ".join(f"{k[:5]} {v:.2f}" for k, v in r[kind].items() if k != "auto")
        cells.append(f"{kind}: auto {r[kind]['auto']:.2f} ({r[f'{kind}_auto_path']}) | {paths}")
    return " | ".join(cells)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-seconds", type=float, default=4.0)
    ap.add_argument("--max-gmacs", type=float, default=60.0, help="redraw points whose dense train step is larger")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    rng = random.Random(args.seed)
    lines, worst = [], {}
    for _ in range(args.points):
        r = point(draw(rng, args.max_gmacs), args.reps, args.max_seconds)
        lines.append(_line(r))
        print(lines[-1], flush=True)
        for kind in ("train", "eval"):
            worst[kind] = max(worst.get(kind, 0.0), r[kind]["auto"])
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    summary = (f"worst auto ÷ best forced path over {args.points} points: train {worst['train']:.2f}×, "
               f"eval {worst['eval']:.2f}×")
    cmd = "uv run python benchmarks/layer_grid.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = (f"# {cmd.strip()}\n# CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, load average at end "
            f"{load}; times ÷ the best forced path at each point\n" + "\n".join(lines) + "\n" + summary + "\n")
    print(summary)
    if args.write:
        args.write.write_text(text)
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
