"""Experiment 1 — the learned σ follows the input scale (paper Exp. 1.2A).

A small all-N-Jet classifier (three NJetConv2d layers, each followed by BatchNorm and ReLU,
the first two by a safe-subsampling driven by their σ, r = 4; global average pooling; a linear layer),
σ initialised to 1, trained from scratch on MNIST upscaled 1×, 1.5× and 2× for several
seeds. The paper reports (2.0/1.5)·σ₁.₅ = 2.81 ± 0.04 vs σ₂.₀ = 2.82 ± 0.04: σ scales
with the input. We report σ per layer (in the pixels of its own map and in input pixels),
the ratio σ₂.₀/σ₁.₅ against 4/3 and σ₁.₅/σ₁.₀ against 3/2.

    uv run python examples/exp1_sigma_follows_scale.py            # full run, writes docs/
    uv run python examples/exp1_sigma_follows_scale.py --quick    # smoke run, temp dir
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from njetify import NJetConv2d, SafeSubsample  # noqa: E402
from njetify.data import get_dataset  # noqa: E402

SCALES = (1.0, 1.5, 2.0)
NAME = "exp1"
MAX_SIZE = 21  # px: σ up to 5 untruncated; the last layer still reaches it (see the reading)
LR = 1e-2
R = 4.0  # safe-subsampling constant of the paper


class ToyNJet(nn.Module):
    """``(N, 1, S, S)`` → logits ``(N, 10)``: [NJetConv2d → BN → ReLU → SafeSubsample] × 2,
    NJetConv2d → BN → ReLU, global average pooling, linear."""

    def __init__(self, widths=(8, 16, 16), order: int = 3, sigma: float = 1.0, r: float = R,
                 max_size: int = MAX_SIZE):
        super().__init__()
        layers, cin = [], 1
        for i, w in enumerate(widths):
            conv = NJetConv2d(cin, w, order=order, sigma=sigma, bias=False, max_size=max_size)
            layers += [conv, nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:  # the last layer feeds global average pooling: no subsampling there
                layers.append(SafeSubsample(conv, stride=2, r=r, source_name=f"features.{4 * i}"))
            cin = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, 10)

    def njet_layers(self) -> list[NJetConv2d]:
        """The N-Jet layers, input side first."""
        return [m for m in self.features if isinstance(m, NJetConv2d)]

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def run_one(scale: float, seed: int, args, n_train: int, n_test: int, epochs: int) -> dict:
    """Train one model on MNIST at ``scale``; σ per layer per epoch and the test accuracy."""
    train_ds = C.materialize(get_dataset("mnist-resized", "train", args.data_dir, scale=scale), n_train, seed=0)
    test_ds = C.materialize(get_dataset("mnist-resized", "test", args.data_dir, scale=scale), n_test, seed=0)
    torch.manual_seed(seed)
    model = ToyNJet(max_size=MAX_SIZE)
    hist = C.train(model, train_ds, None, task="classification", epochs=epochs, lr=LR, sigma_lr=args.sigma_lr,
                   batch_size=32, seed=seed)
    names = [f"features.{4 * i}" for i in range(3)]
    sig_epochs = [[row["layers"][n]["sigma"] for n in names] for row in hist.epochs]
    acc = C.evaluate(model, test_ds, "classification")
    return {"scale": scale, "seed": seed, "sigma": [float(m.sigma.item()) for m in model.njet_layers()],
            "sigma_cascade": cascade_sigmas([float(m.sigma.item()) for m in model.njet_layers()]),
            "sigma_per_epoch": sig_epochs, "size": [m.kernel_size[0] for m in model.njet_layers()],
            "test_acc": acc, "capped": [bool(m.size_capped) for m in model.njet_layers()]}


def cascade_sigmas(sigmas, r: float = R) -> list[float]:
    """Scale in *input* pixels of the cascade of layers 1..l, for each l.

    Layer j blurs by σ_j pixels of a map subsampled by ∏_{i<j} f_i, f_i = (1/2)^(σ_i/r), i.e. by
    σ_j / ∏ f_i input pixels; Gaussian scales of a cascade add in quadrature (the semigroup
    property), so the cascade's scale is ``sqrt(Σ_j (σ_j / ∏_{i<j} f_i)²)``. This is the quantity that
    must grow in proportion to the input when the network is scale-covariant, however the growth
    is split between the layers.
    """
    out, total, step = [], 0.0, 1.0
    for sig in sigmas:
        total += (sig / step) ** 2
        out.append(math.sqrt(total))
        step *= 0.5 ** (sig / r)
    return out


def plot(results: list[dict], seeds, path: Path) -> None:
    """σ per layer and the cascade's scale against the input scale, and the cascade's scale over epochs."""
    fig = C.figure((15, 4))
    axes = fig.subplots(1, 3)
    for ax, key, title in ((axes[0], "sigma", "learned σ per layer (px of its own map)"),
                           (axes[1], "sigma_cascade", "scale of layers 1..l in input pixels")):
        for layer in range(3):
            ms = [C.mean_std([r[key][layer] for r in results if r["scale"] == s]) for s in SCALES]
            lab = f"layer {layer + 1}" if key == "sigma" else f"layers 1–{layer + 1}"
            line = ax.errorbar(SCALES, [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", capsize=3, label=lab)
            ax.plot(SCALES, [ms[0][0] * s for s in SCALES], ls="--", color=line[0].get_color(), alpha=0.5)
        ax.set_xlabel("input scale (× 28 px)")
        ax.set_ylabel("σ (px)")
        ax.set_yscale("log")
        ax.set_title(f"{title}\n(dashed: value at 1× · scale)", fontsize=10)
        ax.legend(fontsize=8)
    ax = axes[2]
    for s in SCALES:
        runs = [r for r in results if r["scale"] == s]
        per_epoch = [C.mean_std([cascade_sigmas(r["sigma_per_epoch"][e])[1] for r in runs])[0]
                     for e in range(len(runs[0]["sigma_per_epoch"]))]
        ax.plot(range(1, len(per_epoch) + 1), per_epoch, marker="o", label=f"{s:g}×")
    ax.set_xlabel("epoch")
    ax.set_ylabel("scale of layers 1–2 (input px, mean over seeds)")
    ax.set_title("scale of layers 1–2 during training", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _ratios(by: dict, seeds, key: str, layer: int) -> tuple[list[float], list[float]]:
    """Per seed: σ₂.₀/σ₁.₅ and σ₁.₅/σ₁.₀ of ``by[..][key][layer]``."""
    r21 = [by[2.0, k][key][layer] / by[1.5, k][key][layer] for k in seeds]
    r10 = [by[1.5, k][key][layer] / by[1.0, k][key][layer] for k in seeds]
    return r21, r10


ROWS = [("sigma", 0, "layer 1 σ"), ("sigma", 1, "layer 2 σ"), ("sigma", 2, "layer 3 σ"),
        ("sigma_cascade", 1, "layers 1–2, input px"), ("sigma_cascade", 2, "layers 1–3, input px")]


def report(results: list[dict], run: C.Run, img: Path, cfg: dict) -> str:
    """The Markdown section: σ tables, ratios, accuracy, figure and provenance."""
    by = {(r["scale"], r["seed"]): r for r in results}
    seeds = run.seeds
    rows = [[label] + [C.pm([by[s, k][key][i] for k in seeds]) for s in SCALES] for key, i, label in ROWS]
    rows.append(["test accuracy (%)"] + [C.pm([by[s, k]["test_acc"] for k in seeds], 1) for s in SCALES])
    t1 = C.md_table(["learned scale (px)"] + [f"{s:g}×" for s in SCALES], rows)
    rat = []
    for key, i, label in ROWS:
        r21, r10 = _ratios(by, seeds, key, i)
        rat.append([label, C.pm(r21, 3), C.pm(r10, 3),
                    C.pm([(2.0 / 1.5) * by[1.5, k][key][i] for k in seeds]), C.pm([by[2.0, k][key][i] for k in seeds])])
    t2 = C.md_table(["", "σ₂.₀/σ₁.₅ (ideal 1.333)", "σ₁.₅/σ₁.₀ (ideal 1.5)", "(2/1.5)·σ₁.₅", "σ₂.₀"], rat)
    per_seed = C.md_table(["seed"] + [f"{s:g}×: σ₁ / σ₂ / σ₃" for s in SCALES],
                          [[k] + [" / ".join(f"{v:.2f}" for v in by[s, k]["sigma"]) for s in SCALES] for k in seeds])
    sizes = sorted({tuple(r["size"]) for r in results})
    capped = [layer + 1 for layer in range(3) if any(r["capped"][layer] for r in results)]
    return f"""## Experiment 1 — the learned σ follows the input scale (paper Exp. 1.2A)

Script: `examples/exp1_sigma_follows_scale.py`. Network: three `NJetConv2d` layers
(order 3, 8/16/16 channels, σ₀ = 1 at every scale, extent 2, filter size capped at {MAX_SIZE} px), each followed by
BatchNorm and ReLU; the first two are followed by a `SafeSubsample` driven by their σ (factor (1/2)^(σ/r),
r = {R:g}, the paper's constant); then global average pooling and a linear classifier. Trained from scratch with
`njetify.train.fit` (AdamW, lr {cfg['lr']}, σ lr {cfg['sigma_lr']}, cosine, batch 32, {cfg['epochs']} epochs) on
{cfg['n_train']} MNIST training digits upscaled bilinearly by 1×, 1.5×, 2×; test accuracy on
{cfg['n_test']} test digits. Mean ± std over seeds {', '.join(map(str, seeds))}.

Besides σ per layer (in pixels of the layer's own input map) we report the scale of the cascade of
layers 1..l in *input* pixels, `sqrt(Σ_j (σ_j / ∏_(i<j) f_i)²)` with f_i the subsampling factors
(Gaussian scales of a cascade add in quadrature): a scale-covariant network must grow this in
proportion to the input, however it splits the growth between its layers.

{t1}

Ratios per seed (mean ± std over seeds); the paper reports (2/1.5)·σ₁.₅ = 2.81 ± 0.04 vs
σ₂.₀ = 2.82 ± 0.04:

{t2}

σ per seed (px of each layer's own map):

{per_seed}

Final filter sizes (px) per layer over the runs: {', '.join('/'.join(map(str, s)) for s in sizes)}; layers that hit
the {MAX_SIZE} px cap in some run: {', '.join(map(str, capped)) or 'none'}.

![learned sigma vs input scale]({img})

{cfg['discussion']}

{run.footer()}
"""


def discussion(results: list[dict], seeds) -> str:
    """An honest reading of the ratios against the paper's finding (computed, not hand-written numbers)."""
    by = {(r["scale"], r["seed"]): r for r in results}
    lines, stds = [], {}
    for key, i, label in ROWS:
        r21, r10 = _ratios(by, seeds, key, i)
        m21, m10 = C.mean_std(r21)[0], C.mean_std(r10)[0]
        stds[label] = C.mean_std(r10)[1]
        lines.append(f"{label}: σ₂.₀/σ₁.₅ = {m21:.3f} ({100 * (m21 - 4 / 3) / (4 / 3):+.0f}% from 4/3), "
                     f"σ₁.₅/σ₁.₀ = {m10:.3f} ({100 * (m10 - 1.5) / 1.5:+.0f}% from 3/2)")
    c21, c10 = (C.mean_std(v)[0] for v in _ratios(by, seeds, "sigma_cascade", 1))
    c20 = C.mean_std([by[2.0, k]["sigma_cascade"][1] / by[1.0, k]["sigma_cascade"][1] for k in seeds])[0]
    c2 = [by[s, k]["sigma_cascade"][1] for s in SCALES for k in seeds]
    grows = all(by[2.0, k]["sigma_cascade"][1] > by[1.5, k]["sigma_cascade"][1] > by[1.0, k]["sigma_cascade"][1]
                for k in seeds)
    text = "**Reading.** " + "; ".join(lines) + ". "
    text += ("In every seed the scale of layers 1–2 grows with the input (1× < 1.5× < 2×), as in the paper; "
             if grows else "The scale of layers 1–2 does **not** grow with the input in every seed, unlike the paper; ")
    text += (f"its ratios are {c21:.2f} (2×/1.5×, ideal 1.33) and {c10:.2f} (1.5×/1×, ideal 1.5): it grows "
             f"{c20:.2f}× from 1× to 2× digits where proportionality asks for 2× "
             f"(range of that scale over all runs: {min(c2):.2f}–{max(c2):.2f} px). ")
    if stds["layer 1 σ"] > stds["layers 1–2, input px"] or stds["layer 2 σ"] > stds["layers 1–2, input px"]:
        text += ("Per layer the ratios vary more between seeds than the cascade's: seeds split the growth "
                 "differently between layers 1 and 2 (a larger σ₁ also subsamples more, so either layer can "
                 "enlarge the receptive field), which is why the paper's per-layer proportionality is better "
                 "read off the cascade here. ")
    if any(r["capped"][2] for r in results):
        text += (f"Layer 3 hits the {MAX_SIZE} px cap: feeding global average pooling, a wider blur costs "
                 "nothing, so σ₃ grows until the filter spans the whole map; beyond that its σ is not "
                 "identifiable, and its ratios say little. ")
    early = [f"layer {layer + 1} in {sum(r['capped'][layer] for r in results)} of {len(results)} runs"
             for layer in range(2) if any(r["capped"][layer] for r in results)]
    if early:
        text += f"The cap also truncated {', '.join(early)}, which pulls those ratios down. "
    text += ("σ starts at 1 at every scale and the schedule is short (CPU budget), so σ has further to travel "
             "at larger scales and the ratios fall short of proportional; the paper trains to convergence.")
    return text


def main(argv=None) -> None:
    def extra(p):
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        p.add_argument("--sigma-lr", type=float, default=0.05, help="learning rate of log σ (AdamW)")
        p.add_argument("--n-train", type=int, default=2250, help="training digits per run (full mode)")
        p.add_argument("--epochs", type=int, default=4, help="epochs per run (full mode)")
        p.add_argument("--max-size", type=int, default=MAX_SIZE, help="cap on the N-Jet filter size in px")

    global MAX_SIZE
    args = C.parse_args(__doc__.splitlines()[0], argv, extra)
    MAX_SIZE = args.max_size
    seeds = args.seeds
    n_train, n_test, epochs = (64, 64, 1) if args.quick else (args.n_train, 1000, args.epochs)
    if args.quick:
        seeds = seeds[:2]
    run = C.Run(Path(__file__).name, seeds, args.quick)
    results = []
    for scale in SCALES:
        for seed in seeds:
            r = run_one(scale, seed, args, n_train, n_test, epochs)
            print(f"scale {scale:g} seed {seed}: σ = {[round(s, 3) for s in r['sigma']]}, "
                  f"acc {r['test_acc']:.1f}%", flush=True)
            results.append(r)
    img = C.img_path(args.out, f"{NAME}_sigma_vs_scale.png")
    plot(results, seeds, img)
    cfg = {"lr": LR, "sigma_lr": args.sigma_lr, "epochs": epochs, "n_train": n_train, "n_test": n_test,
           "discussion": discussion(results, seeds)}
    C.save_json(args.out, NAME, {"meta": run.meta(), "config": {k: v for k, v in cfg.items() if k != "discussion"},
                                 "runs": results})
    md = C.write_section(args.out, NAME, report(results, run, Path("img") / img.name, cfg))
    print(f"wrote {md} and {img}")


if __name__ == "__main__":
    main()
