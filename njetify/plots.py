"""PNG plots of a fine-tuning history: σ per layer, feature-map and filter sizes, loss/accuracy.

Uses matplotlib's Agg canvas directly (no pyplot, the global backend is left alone).
Every function takes a :class:`njetify.train.History`, a ``history.json`` path or the
run folder, and writes one PNG.
"""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .train.history import History

HistoryLike = History | str | os.PathLike


def _history(h: HistoryLike) -> History:
    if isinstance(h, History):
        return h
    if isinstance(h, (str, os.PathLike)):
        return History.load(h)
    raise TypeError(f"history must be a History or a path to history.json, got {type(h).__name__}")


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _colors(n: int):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(1, n - 1) * 0.9) for i in range(n)]


def _epoch_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch (0 = before fine-tuning)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_sigma(history: HistoryLike, path: str | os.PathLike) -> Path:
    """σ (pixels) of every N-Jet layer over the epochs, one line per layer (colour = depth).

    Layers with several σ (per channel) show their mean with a min–max band.
    """
    h = _history(history)
    rows = [r for r in h.epochs if r.get("layers")]
    if not rows:
        raise ValueError("history has no N-Jet layers to plot (no 'layers' in its epochs)")
    names = list(rows[-1]["layers"])
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    for name, color in zip(names, _colors(len(names))):
        pts = [(r["epoch"], r["layers"][name]) for r in rows if name in r["layers"]]
        ep = [e for e, _ in pts]
        ax.plot(ep, [d["sigma"] for _, d in pts], color=color, marker="o", ms=3, lw=1.5, label=name)
        lo, hi = [d["sigma_min"] for _, d in pts], [d["sigma_max"] for _, d in pts]
        if any(a != b for a, b in zip(lo, hi)):
            ax.fill_between(ep, lo, hi, color=color, alpha=0.15)
    _epoch_axis(ax)
    ax.set_ylabel("σ (pixels)")
    ax.set_title("Learned scale σ per N-Jet layer")
    ax.grid(alpha=0.3)
    if len(names) <= 12:
        ax.legend(fontsize=8, loc="best")
    else:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        sm = ScalarMappable(norm=Normalize(0, len(names) - 1), cmap="viridis")
        fig.colorbar(sm, ax=ax, label="layer index (input → output)")
    return _save(fig, path)


def plot_feature_sizes(history: HistoryLike, path: str | os.PathLike, epoch: int | None = None) -> Path:
    """Per layer, learned vs original sizes (the paper's Fig. 7–8): feature-map side after
    every safe-subsampling (top) and filter size of every N-Jet layer (bottom).

    ``epoch``: which epoch is "learned" (default: the last one).
    """
    h = _history(history)
    if not h.epochs:
        raise ValueError("history has no epochs")
    row = h.epochs[-1] if epoch is None else next((r for r in h.epochs if r["epoch"] == epoch), None)
    if row is None:
        raise ValueError(f"epoch {epoch} is not in the history (epochs {[r['epoch'] for r in h.epochs]})")
    first = h.epochs[0]
    orig = h.meta.get("feature_sizes_original", {})
    subs = [n for n in row.get("feature_sizes", {})]
    layers = list(row.get("layers", {}))
    panels = [p for p in (subs, layers) if p]
    if not panels:
        raise ValueError("history has neither subsampling sites nor N-Jet layers to plot")
    fig = Figure(figsize=(max(6.0, 0.35 * max(map(len, panels)) + 3), 3.4 * len(panels)))
    k = 1
    if subs:
        ax = fig.add_subplot(len(panels), 1, k)
        k += 1
        _bars(ax, subs, [orig.get(n, [None])[0] for n in subs], [row["feature_sizes"][n][0] for n in subs],
              f"epoch {row['epoch']}")
        ax.set_ylabel("feature-map side (px)")
        ax.set_title("Feature-map size after each subsampling: original vs learned")
    if layers:
        ax = fig.add_subplot(len(panels), 1, k)
        start = [first.get("layers", {}).get(n, {}).get("size") for n in layers]
        _bars(ax, layers, start, [row["layers"][n]["size"] for n in layers], f"epoch {row['epoch']}",
              first_label=f"epoch {first['epoch']}")
        ax.set_ylabel("filter size (px)")
        ax.set_title("N-Jet filter size per layer")
    fig.tight_layout()
    return _save(fig, path)


def _bars(ax, names, before, after, after_label, first_label="original"):
    import numpy as np

    x = np.arange(len(names))
    w = 0.4
    ax.bar(x - w / 2, [v if v is not None else 0 for v in before], w, label=first_label, color="#9aa5b1")
    ax.bar(x + w / 2, after, w, label=f"learned ({after_label})", color="#2a7ab9")
    ax.set_xticks(x, names, rotation=60 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center",
                  fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot_curves(history: HistoryLike, path: str | os.PathLike) -> Path:
    """Loss (left) and accuracy or mIoU in % (right) over the epochs, training and validation."""
    h = _history(history)
    task = h.meta.get("task", "classification")
    key = "miou" if task == "segmentation" else "acc"
    fig = Figure(figsize=(10, 3.8))
    for i, (metric, label) in enumerate((("loss", "loss"), (key, "mIoU (%)" if key == "miou" else "top-1 accuracy (%)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for split, style in (("train", "--"), ("val", "-")):
            pts = [(e, v) for e, v in h.metric(split, metric) if v is not None]
            if pts:
                ax.plot(*zip(*pts), style, marker="o", ms=3, label=split)
        _epoch_axis(ax)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle("Fine-tuning curves")
    fig.tight_layout()
    return _save(fig, path)


def plot_history(history: HistoryLike, out_dir: str | os.PathLike, prefix: str = "") -> list[Path]:
    """All plots into ``out_dir``: ``{prefix}sigma.png``, ``{prefix}feature_sizes.png``,
    ``{prefix}curves.png`` (plots without data — e.g. no N-Jet layer — are skipped)."""
    h = _history(history)
    out = Path(out_dir)
    written = []
    for name, fn in (("sigma", plot_sigma), ("feature_sizes", plot_feature_sizes), ("curves", plot_curves)):
        try:
            written.append(fn(h, out / f"{prefix}{name}.png"))
        except ValueError:
            continue
    return written
