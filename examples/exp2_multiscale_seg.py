"""Experiment 2 — segmentation of multi-scale objects (paper Exp. 1.1B, MNIST digits).

``unet_small`` (width 8) as a plain CNN baseline against its N-Jet conversions with the
built-in recipes ``paper-unet-order2`` and ``paper-unet-order4`` (σ₀ = 1, pooling kept),
all trained from scratch on ``mnist-multiscale-seg`` with digit scales s ∈ {1}, {2}, {4}
and the mixed {1, 2, 3, 4}. To fit the CPU budget the unit digit is 14 px (MNIST
downscaled by 2), so s = 4 means 56 px digits on a 112 px canvas. Reported: validation
mIoU (11 classes: background + 10 digits) and the learned σ per layer; the paper finds
that σ grows with the object scale and that the baseline's mIoU decays for large objects
while the N-Jet model's holds.

    uv run python examples/exp2_multiscale_seg.py            # full run, writes docs/
    uv run python examples/exp2_multiscale_seg.py --quick    # smoke run, temp dir
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import njetify  # noqa: E402
from njetify.basis import filter_size  # noqa: E402
from njetify.data import get_dataset  # noqa: E402
from njetify.recipes import load_recipe  # noqa: E402
from njetify.train import layer_snapshot  # noqa: E402

NAME = "exp2"
UNIT = 0.5  # unit digit = 14 px
MAX_SIZE = 9  # px cap on the N-Jet filters: a 13×13 filter on a 112 px canvas would triple the run time
SETTINGS = {"1": (1,), "2": (2,), "4": (4,), "1,2,3,4": (1, 2, 3, 4)}
MODELS = ("baseline", "njet-order2", "njet-order4")
COLORS = {"baseline": "tab:blue", "njet-order2": "tab:orange", "njet-order4": "tab:green"}


def make_model(kind: str, width: int, seed: int, max_size: int | None = MAX_SIZE):
    """``unet_small`` (11 classes, 1 channel) or its N-Jet conversion with a built-in paper recipe,
    N-Jet filters capped at ``max_size`` px."""
    torch.manual_seed(seed)
    net = njetify.create_model("unet_small", num_classes=11, in_chans=1, width=width)
    if kind == "baseline":
        return net
    recipe = replace(load_recipe(f"paper-unet-{kind.split('-')[1]}"), max_size=max_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net, _ = njetify.convert(net, recipe=recipe)
    return net


def data(scales, split: str, n: int, data_dir: str, seed: int):
    """``n`` canvases of ``mnist-multiscale-seg`` with digits at ``UNIT·s`` for s in ``scales``."""
    ds = get_dataset("mnist-multiscale-seg", split, data_dir, scales=[UNIT * s for s in scales], length=n,
                     seed=seed, normalize=True)
    return C.materialize(ds, None), ds.canvas


def plot(res: dict, path: Path) -> None:
    """mIoU and mean σ against the object scale s, per model."""
    keys = list(SETTINGS)
    fig = C.figure((10, 4))
    axes = fig.subplots(1, 2)
    for kind in MODELS:
        axes[0].plot(keys, [res[k][kind]["miou"] for k in keys], marker="o", label=kind, color=COLORS[kind])
        if kind != "baseline":
            axes[1].plot(keys, [res[k][kind]["mean_sigma"] for k in keys], marker="o", label=kind, color=COLORS[kind])
    axes[0].set_xlabel("digit scale s (× 14 px)")
    axes[0].set_ylabel("validation mIoU (%)")
    axes[0].set_title("mIoU vs object scale")
    axes[0].legend()
    axes[1].set_xlabel("digit scale s (× 14 px)")
    axes[1].set_ylabel("mean learned σ over layers (px)")
    axes[1].set_title("learned σ vs object scale")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_layers(res: dict, path: Path) -> None:
    """σ per layer for every scale setting (order 2 and order 4 side by side)."""
    fig = C.figure((11, 4))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, kind in zip(axes, MODELS[1:]):
        for k in SETTINGS:
            layers = res[k][kind]["layers"]
            ax.plot(range(len(layers)), [v["sigma"] for v in layers.values()], marker="o", ms=3, label=f"s ∈ {{{k}}}")
        names = list(res["1"][kind]["layers"])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=90, fontsize=7)
        ax.set_title(f"{kind}: learned σ per layer")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("σ (px)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    def extra(p):
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--width", type=int, default=8, help="unet_small width (channels of the first level)")
        p.add_argument("--n-train", type=int, default=1000, help="training canvases per scale setting")
        p.add_argument("--epochs", type=int, default=4)
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--max-size", type=int, default=MAX_SIZE, help="cap on the N-Jet filter size in px")
        p.add_argument("--class-weights", choices=["none", "inverse_frequency"], default="inverse_frequency")

    args = C.parse_args(__doc__.splitlines()[0], argv, extra)
    n_train, n_val, epochs = (8, 4, 1) if args.quick else (args.n_train, 80, args.epochs)
    bs, cw = args.batch_size, None if args.class_weights == "none" else args.class_weights
    settings = {"1": (1,), "2": (2,)} if args.quick else SETTINGS
    run = C.Run(Path(__file__).name, [args.seed], args.quick)
    res: dict = {}
    for key, scales in settings.items():
        train_ds, canvas = data(scales, "train", n_train, args.data_dir, args.seed)
        val_ds, _ = data(scales, "val", n_val, args.data_dir, args.seed)
        res[key] = {"canvas": canvas, "floor_miou": bg_miou(val_ds)}
        for kind in MODELS:
            model = make_model(kind, args.width, args.seed, args.max_size)
            C.train(model, train_ds, None, task="segmentation", epochs=epochs, lr=3e-3, sigma_lr=0.03,
                    batch_size=bs, class_weights=cw, seed=args.seed)
            layers = layer_snapshot(model)
            sig = [v["sigma"] for v in layers.values()]
            res[key][kind] = {"miou": C.evaluate(model, val_ds, "segmentation", batch_size=16), "layers": layers,
                              "mean_sigma": C.mean_std(sig)[0] if sig else None}
            print(f"s ∈ {{{key}}} canvas {canvas}: {kind}: mIoU {res[key][kind]['miou']:.1f}%"
                  + (f", mean σ {res[key][kind]['mean_sigma']:.3f}" if sig else ""), flush=True)
    if args.quick:  # the plots need every setting: fill the missing ones with the ones run, clearly quick
        for key in SETTINGS:
            res.setdefault(key, res["2"])
    img1, img2 = C.img_path(args.out, f"{NAME}_miou_sigma_vs_scale.png"), C.img_path(args.out, f"{NAME}_sigma_per_layer.png")
    plot(res, img1)
    plot_layers(res, img2)
    cfg = {"n_train": n_train, "n_val": n_val, "epochs": epochs, "width": args.width, "unit_px": 28 * UNIT,
           "lr": 3e-3, "sigma_lr": 0.03, "batch_size": bs, "class_weights": cw, "max_size": args.max_size}
    C.save_json(args.out, NAME, {"meta": run.meta(), "config": cfg, "results": res})

    rows = []
    for key in SETTINGS:
        r = res[key]
        rows.append([f"{{{key}}}", r["canvas"], f"{r['floor_miou']:.1f}"] + [f"{r[k]['miou']:.1f}" for k in MODELS]
                    + [f"{r[k]['mean_sigma']:.3f}" for k in MODELS[1:]])
    table = C.md_table(["s", "canvas (px)", "mIoU all-background", "mIoU baseline", "mIoU N-Jet order 2", "mIoU N-Jet order 4",
                        "mean σ order 2", "mean σ order 4"], rows)
    names = list(res["1"]["njet-order2"]["layers"])
    lrows = [[n] + [f"{res[k][kind]['layers'][n]['sigma']:.2f}" for kind in MODELS[1:] for k in SETTINGS] for n in names]
    ltable = C.md_table(["layer"] + [f"o{kind[-1]} s∈{{{k}}}" for kind in MODELS[1:] for k in SETTINGS], lrows)
    capped = [f"{kind} s∈{{{k}}} {n}" for k in SETTINGS for kind in MODELS[1:]
              for n, v in res[k][kind]["layers"].items() if filter_size(v["sigma"]) > args.max_size]
    capped_txt = (f"reached in this run by {len(capped)} of {len(SETTINGS) * 2 * len(names)} layers: larger σ "
                  "truncate the basis" if capped else "never reached in this run")
    text = f"""## Experiment 2 — segmentation of multi-scale objects (paper Exp. 1.1B, MNIST digits)

Script: `examples/exp2_multiscale_seg.py`. `unet_small` (width {args.width}: {args.width}/{2 * args.width}/{4 * args.width} channels,
two 2×2 max-pools) against its N-Jet conversions with the built-in recipes `paper-unet-order2` and
`paper-unet-order4` (every 3×3 conv → N-Jet, σ₀ = 1, pooling kept; filters capped at {args.max_size} px,
{capped_txt}), all trained from scratch
on `mnist-multiscale-seg` (four digits per canvas, one per quadrant, 11 classes). The unit
digit is 14 px (s = 4: 56 px digits on a 112 px canvas; the canvas is the dataset's default,
2 × the largest digit). {n_train} training canvases, {n_val} validation canvases (MNIST test
digits), {epochs} epochs of AdamW (lr 3e-3, σ lr 0.03, batch {bs}, cosine, class weights: {args.class_weights}), seed {args.seed}.

{table}

![mIoU and sigma vs scale]({Path('img') / img1.name})

Learned σ per layer (px; o2/o4 = order 2/4):

{ltable}

![sigma per layer]({Path('img') / img2.name})

{reading(res, epochs * -(-n_train // bs), n_train)}

{run.footer()}
"""
    md = C.write_section(args.out, NAME, text)
    print(f"wrote {md}, {img1}, {img2}")


def bg_miou(ds) -> float:
    """mIoU (%) of a model that predicts background everywhere: the floor of this task."""
    y = ds.tensors[1]
    y = y[y != 255]
    return 100.0 * float((y == 0).float().mean()) / len(torch.unique(y))  # IoU 0 for every digit class present


def reading(res: dict, steps: int, n_train: int) -> str:
    """Which of the paper's two findings hold in these numbers (computed from them)."""
    o2 = [res[k]["njet-order2"]["mean_sigma"] for k in ("1", "2", "4")]
    o4 = [res[k]["njet-order4"]["mean_sigma"] for k in ("1", "2", "4")]
    grows = all(a < b for a, b in zip(o2, o2[1:])) and all(a < b for a, b in zip(o4, o4[1:]))
    base = [res[k]["baseline"]["miou"] for k in ("1", "2", "4")]
    nj = [max(res[k]["njet-order2"]["miou"], res[k]["njet-order4"]["miou"]) for k in ("1", "2", "4")]
    drop_b, drop_n = base[0] - base[2], nj[0] - nj[2]
    s1 = ("mean σ grows with the object scale s (1 → 2 → 4) for both orders, as in the paper"
          if grows else "mean σ does **not** grow monotonically with s for both orders here (paper: it does)")
    s2 = (f"from s = 1 to s = 4 the baseline's mIoU changes by {-drop_b:+.1f} points and the best N-Jet model's "
          f"by {-drop_n:+.1f}")
    learned = [f"{k} s∈{{{s}}}" for s in SETTINGS for k in MODELS if res[s][k]["miou"] > res[s]["floor_miou"] + 2]
    floors = ", ".join(f"{res[s]['floor_miou']:.1f}%" for s in SETTINGS)
    s0 = (f"Predicting background everywhere scores {floors} mIoU on the validation sets of s ∈ "
          f"{', '.join('{' + s + '}' for s in SETTINGS)} (the background IoU averaged with an IoU of 0 for each "
          "digit class present). ")
    s0 += (f"Runs clearly above that floor (+2 points): {', '.join(learned)}. " if learned else
           "**No run is clearly above that floor: within this CPU budget none of the U-Nets learned the digit "
           "classes, so the mIoU columns carry no information about the paper's claim**, and the σ values are "
           "those of barely trained networks. ")
    return (f"**Reading.** {s0}{s1}; {s2}. The paper's claim is that the fixed 3×3 receptive field of the baseline "
            f"cannot cover large digits while a learned σ can. These runs are short ({steps} AdamW steps on "
            f"{n_train} canvases, one seed), so mIoU differences of a few points are within run-to-run noise, "
            "and every mIoU stays below the paper's.")


if __name__ == "__main__":
    main()
