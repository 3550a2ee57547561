"""Speed and memory of NJetConv2d's dense, factorised and auto paths, as ratios measured in one run.

σ sweep (default; σ = 0.5, 1, 2, 4, 6, 12) for the shapes of issue 14 — 64→64 at 56²,
256→256 at 33² and 2048→256 at 33² (ASPP-like). For each point, a training step (forward +
backward with a fixed random output gradient; the input requires grad, as inside a network)
and an eval forward (no_grad, eval mode: the dense filter is cached) of

* ``dense``  — NJetConv2d(path="dense"): the materialised s×s filter, one conv2d;
* ``fact``   — NJetConv2d(path="factorised"): separable filtering + 1×1 mix, never the filter;
* ``auto``   — NJetConv2d(path="auto"): the cost model's choice (the letter after the ratio:
  d = dense, b = basis-first, m = mix-first);
* ``conv3``  — the 3×3 nn.Conv2d the layer replaces; ``conv_s`` — nn.Conv2d with the same s×s filter.

Candidates are timed interleaved, repetition by repetition, and the median is printed as a
ratio to conv3 (and auto to the better of dense and fact, and to conv_s). A candidate whose
first run takes longer than ``--max-seconds`` is timed once (marked ``¹``). Where the dense
s×s filter alone exceeds ``--max-filter-gib`` (2048→256 at σ = 12: 4.7 GiB, with its gradient
and conv_s's copy ~19 GiB) dense and conv_s are not run (``—``). Activation memory is what
autograd saves for backward in one forward (each storage once), in MiB. Every point is
appended to ``--json`` (one JSON object per line) as soon as it is measured; ``--table FILE``
prints the tables from such a file (several runs may append to one file).

    uv run python benchmarks/layer.py --json sweep.jsonl   # the σ sweep (hours on 2 loaded cores)
    uv run python benchmarks/layer.py --only 256 --sigmas 6 # one shape (label substring), some σ
    uv run python benchmarks/layer.py --quick         # small shapes, under a minute
    uv run python benchmarks/layer.py --shapes        # fixed-size table incl. depthwise
    uv run python benchmarks/layer.py --conversion    # time and peak memory of fitting ASPP-sized layers
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from njetify import NJetConv2d
from njetify.layers.factorised import release_workspace

SIGMAS = (0.5, 1.0, 2.0, 4.0, 6.0, 12.0)
# (label, batch, in, out, H=W, groups)
SWEEP = [("64→64 @56²", 8, 64, 64, 56, 1), ("256→256 @33²", 8, 256, 256, 33, 1), ("2048→256 @33²", 1, 2048, 256, 33, 1)]
QUICK_SWEEP = [("16→16 @24²", 2, 16, 16, 24, 1), ("64→32 @20²", 2, 64, 32, 20, 1)]
QUICK_SIGMAS = (0.5, 2.0, 6.0)
# fixed-size table: (label, batch, in, out, H=W, groups, σ)
SHAPES = [
    ("64→64 @32², 5×5", 32, 64, 64, 32, 1, 1.0),
    ("64→64 @32², 11×11", 32, 64, 64, 32, 1, 2.5),
    ("256→256 @14², 7×7", 32, 256, 256, 14, 1, 1.5),
    ("dw 96 @56², 5×5", 32, 96, 96, 56, 96, 1.0),
    ("dw 96 @56², 11×11", 32, 96, 96, 56, 96, 2.5),
]
QUICK_SHAPES = [("16→16 @16², 5×5", 8, 16, 16, 16, 1, 1.0), ("dw 16 @16², 7×7", 8, 16, 16, 16, 16, 1.5)]
PATH_LETTER = {"dense": "d", "basis_first": "b", "mix_first": "m"}


def median_times(fns: dict, reps: int, device: torch.device, max_seconds: float) -> tuple[dict, set]:
    """Median wall time in ms of each ``fns[name]()``, interleaved rep by rep so that load from
    other processes hits every candidate alike, after one warm-up each. The order rotates every
    rep, so that no candidate always runs right after the same one (a slow candidate leaves the
    caches cold for the next: a fixed order made ``auto``, timed after the slowest path, up to 1.6×
    the same path forced). Candidates whose warm-up took longer than ``max_seconds`` keep that
    single time; their names are returned too."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times, single = {name: [] for name in fns}, set()
    for name, fn in fns.items():
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        first = time.perf_counter() - t0
        if first > max_seconds:
            times[name].append(first * 1e3)
            single.add(name)
        else:
            fn()
    names = list(fns)
    for rep in range(reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            fn = fns[name]
            if name in single:
                continue
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}, single


def saved_mib(module: nn.Module, x: torch.Tensor) -> float:
    """MiB of the tensors autograd saves for backward in one forward (each storage once)."""
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(seen.values()) / 2**20


def sweep_point(spec, sigma: float, reps: int, device, max_seconds: float, max_filter_gib: float) -> dict:
    label, batch, cin, cout, hw, groups = spec
    torch.manual_seed(0)
    njet = {p: NJetConv2d(cin, cout, order=3, sigma=sigma, groups=groups, path=p, device=device)
            for p in ("dense", "factorised", "auto")}
    for m in njet.values():
        m.load_state_dict(njet["dense"].state_dict())
    size = njet["dense"].kernel_size[0]
    mods = {"conv3": nn.Conv2d(cin, cout, 3, padding=1, groups=groups, device=device)}
    filter_gib = cout * cin // groups * size * size * 4 / 2**30
    if filter_gib <= max_filter_gib:
        mods["conv_s"] = nn.Conv2d(cin, cout, size, padding=size // 2, groups=groups, device=device)
        mods["dense"] = njet["dense"]
    mods.update(fact=njet["factorised"], auto=njet["auto"])
    x = torch.randn(batch, cin, hw, hw, device=device)
    xr = x.clone().requires_grad_(True)
    gy = torch.randn(batch, cout, hw, hw, device=device)

    def train_step(m):
        m.zero_grad(set_to_none=True)
        xr.grad = None
        m(xr).backward(gy)

    row = {"shape": label, "sigma": sigma, "size": size, "batch": batch, "filter_gib": filter_gib}
    for m in mods.values():
        m.train()
    t, single = median_times({n: (lambda m=m: train_step(m)) for n, m in mods.items()}, reps, device, max_seconds)
    row["train"], row["train_single"] = t, sorted(single)
    row["train_path"] = njet["auto"].last_path
    row["saved"] = {n: saved_mib(mods[n], xr) for n in ("conv3", "dense", "fact") if n in mods}
    for m in mods.values():
        m.eval()
    with torch.no_grad():
        t, single = median_times({n: (lambda m=m: m(x)) for n, m in mods.items()}, reps, device, max_seconds)
    row["eval"], row["eval_single"] = t, sorted(single)
    row["eval_path"] = njet["auto"].last_path
    return row


def _ratio(row, kind, name, base="conv3") -> str:
    if name not in row[kind] or base not in row[kind]:
        return "—"
    mark = "¹" if name in row[f"{kind}_single"] else ""
    return f"{row[kind][name] / row[kind][base]:.2f}{mark}"


def _auto_vs_best(row, kind) -> float:
    return row[kind]["auto"] / min(row[kind].get("dense", float("inf")), row[kind]["fact"])


def sweep_table(rows: list[dict], kind: str) -> Table:
    title = "train step (forward + backward)" if kind == "train" else "eval forward (no_grad)"
    table = Table(title=f"{title}: median time ÷ the 3×3 nn.Conv2d's (¹ = timed once, — = not run)")
    for col in ("shape", "batch", "σ", "s", "conv3 ms", "dense", "fact", "auto", "auto/best", "auto/conv s×s",
                "act. MiB conv3/dense/fact"):
        table.add_column(col, justify="left" if col == "shape" else "right", no_wrap=True)
    for r in rows:
        mem = "/".join(f"{r['saved'][n]:.0f}" if n in r["saved"] else "—" for n in ("conv3", "dense", "fact"))
        table.add_row(
            r["shape"], str(r["batch"]), f"{r['sigma']:g}", str(r["size"]), f"{r[kind]['conv3']:.3g}",
            _ratio(r, kind, "dense"), _ratio(r, kind, "fact"),
            f"{_ratio(r, kind, 'auto')} {PATH_LETTER.get(r[f'{kind}_path'], '?')}",
            f"{_auto_vs_best(r, kind):.2f}", _ratio(r, kind, "auto", "conv_s"), mem if kind == "train" else "",
        )
    return table


def print_sweep(rows: list[dict], console) -> None:
    for kind in ("train", "eval"):
        console.print(sweep_table(rows, kind))
    worst = max(_auto_vs_best(r, k) for r in rows for k in ("train", "eval"))
    console.print(f"auto ÷ better of dense and factorised, worst point: {worst:.2f} (target ≤ 1.10)")


def run_sweep(args, device, console) -> list[dict]:
    specs, sigmas = (QUICK_SWEEP, QUICK_SIGMAS) if args.quick else (SWEEP, SIGMAS)
    if args.only:
        specs = [s for s in specs if args.only in s[0]]
    if args.sigmas:
        sigmas = [float(v) for v in args.sigmas.split(",")]
    _warm_up(device)
    rows = []
    for spec in specs:
        for sigma in sigmas:
            row = sweep_point(spec, sigma, args.reps, device, args.max_seconds, args.max_filter_gib)
            row["threads"], row["load"] = torch.get_num_threads(), _load()
            rows.append(row)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
            console.print(f"  done {spec[0]} σ={sigma:g}", style="dim")
    print_sweep(rows, console)
    return rows


def _warm_up(device) -> None:
    """One conv forward and backward before anything is timed (CUDA context, cuDNN handles)."""
    conv = nn.Conv2d(8, 8, 3, padding=1).to(device)
    conv(torch.randn(1, 8, 16, 16, device=device, requires_grad=True)).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def markdown_sweep(rows: list[dict]) -> str:
    """The sweep as Markdown: per point, train and eval ratios to the 3×3 conv (dense / fact / auto
    with its path letter) and auto ÷ the better path."""
    out = ["| shape | σ | s | train: dense | fact | auto | auto/best | eval: dense | fact | auto | auto/best |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["shape"], f"{r['sigma']:g}", str(r["size"])]
        for kind in ("train", "eval"):
            cells += [_ratio(r, kind, "dense"), _ratio(r, kind, "fact"),
                      f"{_ratio(r, kind, 'auto')} {PATH_LETTER.get(r[f'{kind}_path'], '?')}",
                      f"{_auto_vs_best(r, kind):.2f}"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _load() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def run_shapes(args, device, console) -> list[dict]:
    rows = []
    table = Table(title="NJetConv2d (auto) vs nn.Conv2d: median ms, ratio = njet / baseline")
    for col in ("shape", "path", "train ms", "/conv s×s", "/conv 3×3", "eval ms", "/conv s×s", "/conv 3×3"):
        table.add_column(col, justify="left" if col == "shape" else "right", no_wrap=True)
    for label, batch, cin, cout, hw, groups, sigma in QUICK_SHAPES if args.quick else SHAPES:
        r = sweep_point((label, batch, cin, cout, hw, groups), sigma, args.reps, device, args.max_seconds,
                        args.max_filter_gib)
        rows.append(r)
        tr, ev = r["train"], r["eval"]
        table.add_row(label, r["train_path"], f"{tr['auto']:.1f}", f"{tr['auto'] / tr['conv_s']:.2f}",
                      f"{tr['auto'] / tr['conv3']:.2f}", f"{ev['auto']:.1f}", f"{ev['auto'] / ev['conv_s']:.2f}",
                      f"{ev['auto'] / ev['conv3']:.2f}")
    console.print(table)
    return rows


CONVERSIONS = {
    "NJetConv2d.from_conv(Conv2d(2048, 256, 3, dilation=36), max_size=63)": "single",
    "  … the same, with calibration inputs (2, 2048, 33, 33)": "single-data",
    "TiedNJetConv2d.from_convs(rates 12/24/36, 2048→256, max_size=63)": "tied",
    "  … the same head, with calibration inputs (2, 2048, 33, 33)": "tied-data",
}


def _convert_one(case: str) -> dict:
    """Fit one ASPP-sized layer in this (fresh) process: seconds and peak extra RSS in MiB."""
    from _rss import PeakRSS  # benchmarks/_rss.py

    from njetify.layers.tied import TiedNJetConv2d

    torch.manual_seed(0)
    convs = [nn.Conv2d(2048, 256, 3, padding=r, dilation=r) for r in (12, 24, 36)]
    inputs = torch.randn(2, 2048, 33, 33) if case.endswith("-data") else None
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        if case.startswith("tied"):
            layer = TiedNJetConv2d.from_convs(convs, max_size=63, inputs=inputs)
        else:
            layer = NJetConv2d.from_conv(convs[2], max_size=63, inputs=inputs)
        seconds = time.perf_counter() - t0
    weights = sum(c.weight.numel() * c.weight.element_size() for c in (convs if case.startswith("tied") else convs[2:]))
    return {"seconds": seconds, "peak_mib": mem.peak, "weights_mib": weights / 2**20, "fit_error": layer.fit_error}


def run_conversion(console) -> list[dict]:
    table = Table(title="Fitting ASPP-sized layers: one fresh process each, peak RSS above the start")
    for col in ("conversion", "seconds", "peak extra MiB", "conv weights MiB", "fit error"):
        table.add_column(col, justify="left" if col == "conversion" else "right")
    rows = []
    for label, case in CONVERSIONS.items():
        out = subprocess.run([sys.executable, __file__, "--conversion-one", case], capture_output=True, text=True,
                             check=True)
        r = {"case": label, **json.loads(out.stdout.strip().splitlines()[-1])}
        rows.append(r)
        table.add_row(label, f"{r['seconds']:.1f}", f"{r['peak_mib']:.0f}", f"{r['weights_mib']:.0f}",
                      f"{r['fit_error']:.3f}")
    console.print(table)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, three σ")
    ap.add_argument("--shapes", action="store_true", help="fixed-size table (incl. depthwise) instead of the σ sweep")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement")
    ap.add_argument("--max-seconds", type=float, default=4.0, help="time once what takes longer than this")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--max-filter-gib", type=float, default=2.0, help="skip dense where its filter exceeds this")
    ap.add_argument("--only", default=None, help="sweep only the shapes whose label contains this")
    ap.add_argument("--sigmas", default=None, help="comma-separated σ values for the sweep")
    ap.add_argument("--json", default=None, help="append the sweep's points to this file (JSON lines)")
    ap.add_argument("--table", default=None, help="print the sweep tables from a --json file and exit")
    ap.add_argument("--markdown", action="store_true", help="with --table: one Markdown table")
    ap.add_argument("--conversion", action="store_true", help="time and memory of fitting ASPP-sized layers")
    ap.add_argument("--conversion-one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.conversion_one:
        warnings.filterwarnings("ignore")
        print(json.dumps(_convert_one(args.conversion_one)))
        return
    if args.table:
        with open(args.table) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        if args.markdown:
            print(markdown_sweep(rows))
        else:
            print_sweep(rows, Console(width=150))
        return
    args.reps = args.reps or (3 if args.quick else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    warnings.filterwarnings("ignore", message=".*capped at max_size.*")
    console = Console(width=150)
    load = open("/proc/loadavg").read().split()[:3] if device.type == "cpu" else []
    console.print(f"device={device}, torch {torch.__version__}, threads={torch.get_num_threads()}, reps={args.reps}, "
                  f"load average at start {' '.join(load)}")
    if args.conversion:
        run_conversion(console)
    elif args.shapes:
        run_shapes(args, device, console)
    else:
        run_sweep(args, device, console)
    console.print(f"factorised scratch buffers held after the run: {release_workspace() / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
