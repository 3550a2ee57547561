"""Calibrate and check the cost model that picks dense or factorised N-Jet execution.

1. Measures the throughputs the model uses (``njetify.layers.path_cost.Rates``) with the same
   kinds of calls the paths make — dense conv2d (normal and depthwise), the mix GEMM, thin GEMMs,
   batched per-plane products, memory traffic and the fixed cost of a factorised call — and prints
   them as a ``Rates(...)`` line.
2. Checks the model: for a grid of layers, times dense, basis-first and mix-first (train step and
   eval, interleaved) and compares the model's choice with the measured best.

3. ``--alternatives``: the 1-D filtering implemented three ways on one layer (256→256 at 33²,
   batch 8, σ = 6), as ratios to the 3×3 conv: depthwise ``conv2d`` passes then a 1×1 conv
   (the first prototype), the factorised path with fresh tensors instead of scratch buffers
   (page faults), and the factorised path as shipped.

    uv run python benchmarks/path_cost.py              # rates and the model check (a few minutes)
    uv run python benchmarks/path_cost.py --rates      # only the rates
    uv run python benchmarks/path_cost.py --alternatives
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from njetify import NJetConv2d
from njetify.layers import path_cost

from _timing import run_times  # benchmarks/_timing.py


def timed(fn, reps: int) -> float:
    """Fastest of ``reps`` runs of ``fn()`` after one warm-up, in seconds (load from other processes
    only ever adds time, so the minimum estimates the cost of the call itself)."""
    return min(run_times(fn, reps))


def measure_rates(reps: int) -> path_cost.Rates:
    """Throughputs of the primitive calls on this machine (medians over a few shapes)."""
    g = torch.Generator().manual_seed(0)

    def rnd(*s):
        return torch.randn(*s, generator=g)

    conv = []
    for c, s, hw in ((64, 5, 32), (128, 9, 24), (128, 3, 32), (256, 5, 16)):
        x, w = rnd(4, c, hw, hw), rnd(c, c, s, s)
        conv.append(4 * hw * hw * c * c * s * s / timed(lambda: F.conv2d(x, w, padding=s // 2), reps))
    dw, dw_train, conv_train = [], [], []
    for c, s, hw in ((64, 5, 56), (128, 9, 32)):
        x, w = rnd(4, c, hw, hw), rnd(c, 1, s, s)
        dw.append(4 * hw * hw * c * s * s / timed(lambda: F.conv2d(x, w, padding=s // 2, groups=c), reps))
        xr, wr, gy = x.clone().requires_grad_(), w.clone().requires_grad_(), rnd(4, c, hw, hw)
        dw_train.append(4 * hw * hw * c * s * s
                        / timed(lambda: F.conv2d(xr, wr, padding=s // 2, groups=c).backward(gy), reps))
    for c, s, hw in ((64, 5, 32), (256, 3, 16)):
        xr, wr, gy = rnd(4, c, hw, hw).requires_grad_(), rnd(c, c, s, s).requires_grad_(), rnd(4, c, hw, hw)
        conv_train.append(4 * hw * hw * c * c * s * s / timed(lambda: F.conv2d(xr, wr, padding=s // 2).backward(gy), reps))
    gemm = []
    for o, k, p in ((640, 64, 3136), (256, 2560, 1089), (2560, 512, 1089)):
        a, b = rnd(o, k), rnd(4, k, p)
        out = torch.empty(4, o, p)
        gemm.append(4 * o * k * p / timed(lambda: torch.matmul(a, b, out=out), reps))
    thin = []
    for rows, k, n in ((65536, 33, 132), (28672, 56, 224)):
        a, b = rnd(rows, k), rnd(k, n)
        out = torch.empty(rows, n)
        thin.append(rows * k * n / timed(lambda: torch.mm(a, b, out=out), reps))
    planes = []
    for batch, m, k in ((2048, 132, 33), (512, 224, 56), (4096, 20, 12)):
        a, b = rnd(m, k), rnd(batch, k, k)
        out = torch.empty(batch, m, k)
        t = timed(lambda: torch.matmul(a, b, out=out), reps)
        planes.append((batch * m * k * k, t, batch))
    # t = macs / rate + batch · per_plane: least squares on the three shapes
    a = torch.tensor([[p[0], p[2]] for p in planes], dtype=torch.float64)
    t = torch.tensor([p[1] for p in planes], dtype=torch.float64)
    inv_rate, per_plane = torch.linalg.lstsq(a, t).solution.tolist()
    big, dst = rnd(2**24), torch.empty(2**24)
    bandwidth = 2 * 4 * 2**24 / timed(lambda: dst.copy_(big), reps)
    fresh = 4 * 2**24 / timed(lambda: torch.empty(2**24).fill_(1.0), reps)
    layer = NJetConv2d(2, 2, sigma=1.0, path="basis_first")
    x = rnd(1, 2, 8, 8)
    with torch.no_grad():
        call = timed(lambda: layer(x), reps * 4)
    return path_cost.Rates(
        conv=statistics.median(conv), conv_train=statistics.median(conv_train), conv_depthwise=statistics.median(dw),
        conv_depthwise_train=statistics.median(dw_train), gemm=statistics.median(gemm),
        gemm_thin=statistics.median(thin), planes=1 / max(inv_rate, 1e-13), plane_call=max(per_plane, 0.0),
        bandwidth=bandwidth, fresh=fresh, call=call, sample_call=path_cost.CPU_THREAD.sample_call,
    )


CHECK = [  # (batch, in, out, H, groups, σ)
    (8, 64, 64, 56, 1, 0.5), (8, 64, 64, 56, 1, 1.0), (8, 64, 64, 56, 1, 1.5), (8, 64, 64, 56, 1, 2.0),
    (8, 256, 256, 33, 1, 0.5), (8, 256, 256, 33, 1, 1.0), (8, 256, 256, 33, 1, 1.5),
    (1, 2048, 256, 33, 1, 0.5), (1, 2048, 256, 33, 1, 1.0),
    (16, 32, 32, 32, 1, 1.0), (16, 32, 32, 32, 1, 2.0), (4, 128, 128, 64, 1, 1.0), (4, 128, 128, 64, 1, 2.0),
    (8, 96, 96, 56, 96, 1.0), (8, 96, 96, 56, 96, 2.5), (2, 16, 16, 24, 1, 2.0), (4, 512, 128, 28, 1, 1.5),
]


def check_model(reps: int) -> None:
    """Measured dense / basis-first / mix-first (fastest of ``reps``, interleaved) against the model's pick."""
    print(f"{'layer':<28}{'kind':<6}{'dense':>9}{'basis':>9}{'mix':>9}  best  model  model/best")
    worst = 1.0
    for batch, cin, cout, hw, groups, sigma in CHECK:
        torch.manual_seed(0)
        layers = {p: NJetConv2d(cin, cout, sigma=sigma, groups=groups, path=p)
                  for p in ("dense", "basis_first", "mix_first")}
        auto = NJetConv2d(cin, cout, sigma=sigma, groups=groups)
        x = torch.randn(batch, cin, hw, hw, requires_grad=True)
        gy = torch.randn(batch, cout, hw, hw)
        for kind in ("train", "eval"):
            for m in (*layers.values(), auto):
                m.train(kind == "train")

            def run(m):
                if kind == "train":
                    m(x).backward(gy)
                else:
                    with torch.no_grad():
                        m(x)

            times = {p: [] for p in layers}
            for m in layers.values():
                run(m)
            for _ in range(reps):
                for p, m in layers.items():
                    t0 = time.perf_counter()
                    run(m)
                    times[p].append(time.perf_counter() - t0)
            med = {p: min(t) for p, t in times.items()}
            run(auto)
            pick = auto.last_path
            shape = path_cost.ConvShape(batch, cin, cout, groups, hw, hw, hw, hw, auto.kernel_size[0], 3)
            rates = path_cost.rates_for("cpu")
            pred = [path_cost.dense_seconds(shape, rates, kind == "train")] + [
                path_cost.factorised_seconds(shape, rates, kind == "train", o) for o in ("basis_first", "mix_first")]
            best = min(med, key=med.get)
            ratio = med[pick] / med[best]
            worst = max(worst, ratio)
            name = f"{batch}×{cin}→{cout}{'' if groups == 1 else f'/g{groups}'} @{hw}² s={auto.kernel_size[0]}"
            print(f"{name:<28}{kind:<6}" + "".join(f"{med[p] * 1e3:9.1f}" for p in layers)
                  + f"  {best[:5]:<5} {pick[:5]:<5} {ratio:6.2f}   model: " + " ".join(f"{p * 1e3:.1f}" for p in pred))
    print(f"worst model/best: {worst:.2f}")


def depthwise_prototype(x, alpha, g, half):
    """Basis-first with depthwise 1-D ``conv2d`` passes (y then x per basis filter) and a 1×1 conv."""
    from njetify.basis import basis_orders

    n, c = x.shape[:2]
    pairs = basis_orders(g.shape[0] - 1)
    nf = len(pairs)
    gy = torch.stack([g[j] for _, j in pairs]).repeat(c, 1).view(c * nf, 1, -1, 1)
    gx = torch.stack([g[i] for i, _ in pairs]).repeat(c, 1).view(c * nf, 1, 1, -1)
    r = x.repeat_interleave(nf, 1)
    r = F.conv2d(r, gy, padding=(half, 0), groups=c * nf)
    r = F.conv2d(r, gx, padding=(0, half), groups=c * nf)
    return F.conv2d(r, alpha.reshape(alpha.shape[0], -1, 1, 1))


def alternatives(reps: int) -> None:
    """Ratios to the 3×3 conv of three implementations of the same factorised layer."""
    from njetify.basis import gaussian_derivatives_1d, half_width
    from njetify.layers import factorised

    torch.manual_seed(0)
    n, c, o, hw, sigma = 8, 256, 256, 33, 6.0
    half = half_width(sigma)
    x = torch.randn(n, c, hw, hw, requires_grad=True)
    alpha = torch.randn(o, c, 10, requires_grad=True)
    log_sigma = torch.tensor(sigma).log().requires_grad_()
    gy = torch.randn(n, o, hw, hw)
    conv3 = torch.nn.Conv2d(c, o, 3, padding=1)
    real_workspace = factorised.workspace

    def fresh(slot, shape, like):
        return like.new_empty(shape)

    def shipped():
        return factorised.factorised_conv2d(x, alpha, gaussian_derivatives_1d(log_sigma.exp(), 3, half), [half] * 4)

    def no_scratch():
        factorised.workspace = fresh
        try:
            return shipped()
        finally:
            factorised.workspace = real_workspace

    fns = {"conv 3×3": lambda: conv3(x),
           "depthwise conv2d passes + 1×1 conv": lambda: depthwise_prototype(
               x, alpha, gaussian_derivatives_1d(log_sigma.exp(), 3, half), half),
           "matrix products, fresh tensors": no_scratch, "matrix products + scratch (shipped)": shipped}
    for kind in ("eval", "train"):
        times = {k: [] for k in fns}
        for _ in range(reps + 1):
            for k, f in fns.items():
                t0 = time.perf_counter()
                if kind == "train":
                    factorised.workspace = fresh if "fresh" in k else real_workspace
                    f().backward(gy)
                    factorised.workspace = real_workspace
                else:
                    with torch.no_grad():
                        f()
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(t[1:]) for k, t in times.items()}
        print(f"{kind}: " + "; ".join(f"{k} {v * 1e3:.0f} ms = {v / med['conv 3×3']:.2f}×" for k, v in med.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", action="store_true", help="only measure the rates")
    ap.add_argument("--alternatives", action="store_true", help="compare implementations of the 1-D filtering")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, load {open('/proc/loadavg').read().split()[:3]}")
    if args.alternatives:
        alternatives(args.reps)
        return
    rates = measure_rates(args.reps)
    print("measured:", ", ".join(f"{k}={v:.3g}" for k, v in vars(rates).items()))
    print("in use:  ", ", ".join(f"{k}={v:.3g}" for k, v in vars(path_cost.rates_for("cpu")).items()))
    if not args.rates:
        check_model(args.reps)


if __name__ == "__main__":
    main()
