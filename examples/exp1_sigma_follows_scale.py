"""Experiment 1 — the learned σ follows the input scale (paper Exp. 1.2A).

A small all-N-Jet classifier (three NJetConv2d layers, each followed by BatchNorm, ReLU
and a safe-subsampling driven by its σ, r = 4; global average pooling; a linear layer),
σ initialised to 1, trained from scratch on MNIST upscaled 1×, 1.5× and 2× for several
seeds. The paper reports (2.0/1.5)·σ₁.₅ = 2.81 ± 0.04 vs σ₂.₀ = 2.82 ± 0.04: σ scales
with the input. We report σ per layer, the ratio σ₂.₀/σ₁.₅ against 4/3 and σ₁.₅/σ₁.₀
against 3/2.

    uv run python examples/exp1_sigma_follows_scale.py            # full run, writes docs/
    uv run python examples/exp1_sigma_follows_scale.py --quick    # smoke run, temp dir
"""

from __future__ import annotations

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


class ToyNJet(nn.Module):
    """``(N, 1, S, S)`` → logits ``(N, 10)``: [NJetConv2d → BN → ReLU → SafeSubsample] × 3, GAP, linear."""

    def __init__(self, widths=(8, 16, 16), order: int = 3, sigma: float = 1.0, r: float = 4.0, max_size: int = 17):
        super().__init__()
        layers, cin = [], 1
        for i, w in enumerate(widths):
            conv = NJetConv2d(cin, w, order=order, sigma=sigma, bias=False, max_size=max_size)
            layers += [conv, nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       SafeSubsample(conv, stride=2, r=r, source_name=f"features.{4 * i}")]
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
    model = ToyNJet()
    hist = C.train(model, train_ds, None, task="classification", epochs=epochs, lr=1e-2, sigma_lr=args.sigma_lr,
                   batch_size=32, seed=seed)
    names = [f"features.{4 * i}" for i in range(3)]
    sig_epochs = [[row["layers"][n]["sigma"] for n in names] for row in hist.epochs]
    acc = C.evaluate(model, test_ds, "classification")
    return {"scale": scale, "seed": seed, "sigma": [float(m.sigma.item()) for m in model.njet_layers()],
            "sigma_per_epoch": sig_epochs, "size": [m.kernel_size[0] for m in model.njet_layers()],
            "test_acc": acc, "capped": [bool(m.size_capped) for m in model.njet_layers()]}


def plot(results: list[dict], seeds, path: Path) -> None:
    """σ per layer against the input scale (mean ± std over seeds) with the proportional prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ax = axes[0]
    for layer in range(3):
        ms = [C.mean_std([r["sigma"][layer] for r in results if r["scale"] == s]) for s in SCALES]
        line = ax.errorbar(SCALES, [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", capsize=3,
                           label=f"layer {layer + 1}")
        ax.plot(SCALES, [ms[0][0] * s for s in SCALES], ls="--", color=line[0].get_color(), alpha=0.5)
    ax.set_xlabel("input scale (× 28 px)")
    ax.set_ylabel("learned σ (px)")
    ax.set_title("learned σ vs input scale (dashed: σ at 1× · scale)")
    ax.legend()
    ax = axes[1]
    for s in SCALES:
        runs = [r for r in results if r["scale"] == s]
        per_epoch = torch.tensor([r["sigma_per_epoch"] for r in runs])[:, :, 0].mean(0)
        ax.plot(range(1, len(per_epoch) + 1), per_epoch.tolist(), marker="o", label=f"{s:g}×")
    ax.set_xlabel("epoch")
    ax.set_ylabel("σ of layer 1 (mean over seeds)")
    ax.set_title("σ of the first layer during training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results: list[dict], run: C.Run, img: Path, cfg: dict) -> str:
    """The Markdown section: σ table, ratios, accuracy, figure and provenance."""
    by = {(r["scale"], r["seed"]): r for r in results}
    seeds = run.seeds
    rows = []
    for layer in range(3):
        rows.append([f"layer {layer + 1}"] + [C.pm([by[s, k]["sigma"][layer] for k in seeds]) for s in SCALES])
    rows.append(["test accuracy (%)"] + [C.pm([by[s, k]["test_acc"] for k in seeds], 1) for s in SCALES])
    t1 = C.md_table(["learned σ (px)"] + [f"{s:g}×" for s in SCALES], rows)
    rat = []
    for layer in range(3):
        r21 = [by[2.0, k]["sigma"][layer] / by[1.5, k]["sigma"][layer] for k in seeds]
        r10 = [by[1.5, k]["sigma"][layer] / by[1.0, k]["sigma"][layer] for k in seeds]
        pred = [(2.0 / 1.5) * by[1.5, k]["sigma"][layer] for k in seeds]
        s2 = [by[2.0, k]["sigma"][layer] for k in seeds]
        rat.append([f"layer {layer + 1}", C.pm(r21, 3), C.pm(r10, 3), C.pm(pred), C.pm(s2)])
    t2 = C.md_table(["layer", "σ₂.₀/σ₁.₅ (ideal 1.333)", "σ₁.₅/σ₁.₀ (ideal 1.5)", "(2/1.5)·σ₁.₅", "σ₂.₀"], rat)
    return f"""## Experiment 1 — the learned σ follows the input scale (paper Exp. 1.2A)

Script: `examples/exp1_sigma_follows_scale.py`. Network: three `NJetConv2d` layers
(order 3, 8/16/16 channels, σ₀ = 1, extent 2, filter size capped at 17 px), each followed by BatchNorm, ReLU and a
`SafeSubsample` driven by its σ (r = 4, the paper's constant), global average pooling
and a linear classifier. Trained from scratch with `njetify.train.fit` (AdamW, lr
{cfg['lr']}, σ lr {cfg['sigma_lr']}, cosine, batch 32, {cfg['epochs']} epochs) on
{cfg['n_train']} MNIST training digits upscaled bilinearly by 1×, 1.5×, 2×; test accuracy on
{cfg['n_test']} test digits. Mean ± std over seeds {', '.join(map(str, seeds))}.

{t1}

Ratios per seed (mean ± std over seeds); the paper reports (2/1.5)·σ₁.₅ = 2.81 ± 0.04 vs
σ₂.₀ = 2.82 ± 0.04:

{t2}

![learned sigma vs input scale]({img})

{cfg['discussion']}

{run.footer()}
"""


def discussion(results: list[dict], seeds) -> str:
    """An honest reading of the ratios against the paper's finding (computed, not hand-written numbers)."""
    by = {(r["scale"], r["seed"]): r for r in results}
    lines = []
    for layer in range(3):
        m21, _ = C.mean_std([by[2.0, k]["sigma"][layer] / by[1.5, k]["sigma"][layer] for k in seeds])
        m10, _ = C.mean_std([by[1.5, k]["sigma"][layer] / by[1.0, k]["sigma"][layer] for k in seeds])
        lines.append(f"layer {layer + 1}: σ₂.₀/σ₁.₅ = {m21:.3f} ({100 * (m21 - 4 / 3) / (4 / 3):+.0f}% from 4/3), "
                     f"σ₁.₅/σ₁.₀ = {m10:.3f} ({100 * (m10 - 1.5) / 1.5:+.0f}% from 3/2)")
    grows = all(by[2.0, k]["sigma"][0] > by[1.0, k]["sigma"][0] for k in seeds)
    verdict = ("In every seed the first layer's σ is larger for 2× digits than for 1× digits: σ grows with the "
               "input scale, as in the paper." if grows else
               "The first layer's σ does **not** grow with the input scale in every seed here, unlike the paper.")
    return ("**Reading.** " + verdict + " Per layer: " + "; ".join(lines) + ". "
            "Differences from the paper's near-exact proportionality are expected from the short schedule: "
            "σ starts at 1 for every scale and moves only as far as a few epochs of a small training set take "
            "it, so the ratios are pulled towards 1 (σ has not converged); the paper trains to convergence.")


def main(argv=None) -> None:
    def extra(p):
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        p.add_argument("--sigma-lr", type=float, default=0.01, help="learning rate of log σ (AdamW)")
        p.add_argument("--n-train", type=int, default=1500, help="training digits per run (full mode)")
        p.add_argument("--epochs", type=int, default=3, help="epochs per run (full mode)")

    args = C.parse_args(__doc__.splitlines()[0], argv, extra)
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
    cfg = {"lr": 1e-2, "sigma_lr": args.sigma_lr, "epochs": epochs, "n_train": n_train, "n_test": n_test,
           "discussion": discussion(results, seeds)}
    C.save_json(args.out, NAME, {"meta": run.meta(), "config": {k: v for k, v in cfg.items() if k != "discussion"},
                                 "runs": results})
    md = C.write_section(args.out, NAME, report(results, run, Path("img") / img.name, cfg))
    print(f"wrote {md} and {img}")


if __name__ == "__main__":
    main()
