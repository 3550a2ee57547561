"""Figures of σ and resolution: over a fine-tuning run (a :class:`~njetify.train.History`, its
``history.json`` or run folder) and of one converted model (a :class:`~njetify.summary.ModelSummary`).

One concept per function, each writing one PNG and returning its path:

* :func:`plot_sigma` — σ of every N-Jet layer over the training steps, on bands that show the
  filter size each σ gives (σ ≤ 0.5 → 3×3, ≤ 1 → 5×5, … for extent 2);
* :func:`plot_sigma_layers` — σ per layer at one moment, with σ at conversion (σ₀);
* :func:`plot_sizes` — per layer, original vs learned: feature-map side after every
  subsampling, and filter size of every N-Jet layer;
* :func:`plot_curves` — training loss per step, validation loss and accuracy/mIoU;
* :func:`plot_filters` — one layer's Gaussian-derivative basis and its filters.

:func:`plot_history` (a run) and :func:`plot_summary` (a model) write the sets the CLI writes.
Everything draws on a ``matplotlib.figure.Figure`` with the Agg canvas: pyplot and the
global backend are never touched.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .summary.core import ModelSummary
from .train.history import History

__all__ = ["plot_curves", "plot_filters", "plot_history", "plot_sigma", "plot_sigma_layers", "plot_sizes",
           "plot_summary"]

Source = History | ModelSummary | str | os.PathLike


def _history(h) -> History:
    if isinstance(h, History):
        return h
    if isinstance(h, (str, os.PathLike)):
        return History.load(h)
    raise TypeError(f"history must be a History or a path to history.json, got {type(h).__name__}")


def _source(s) -> History | ModelSummary:
    return s if isinstance(s, ModelSummary) else _history(s)


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _colors(n: int):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(1, n - 1) * 0.9) for i in range(n)]


def _size_bands(ax, extent: float, lo: float, hi: float) -> None:
    """Dotted lines where the filter size changes (σ = k/extent) and the size of each band, at the right."""
    span = max(hi - lo, 0.05)
    lo, hi = max(0.0, lo - 0.15 * span), hi + 0.15 * span
    ax.set_ylim(lo, hi)
    k = max(1, math.floor(lo * extent))
    while k / extent <= hi + 1 / extent:
        edge = k / extent
        if lo < edge < hi:
            ax.axhline(edge, color="0.55", ls=":", lw=1)
        mid = (max(lo, (k - 1) / extent) + min(hi, edge)) / 2
        if lo < mid < hi:
            s = 2 * k + 1
            ax.annotate(f"{s}×{s}", (1.0, mid), xycoords=("axes fraction", "data"), xytext=(4, 0),
                        textcoords="offset points", va="center", fontsize=8, color="0.35")
        k += 1


def _extent(h: History) -> float:
    ext = h.meta.get("extent") or {}
    return Counter(ext.values()).most_common(1)[0][0] if ext else 2.0


def _layer_legend(fig: Figure, ax, names: list[str], colors) -> None:
    if len(names) <= 10:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.08, 1.0), title="layer", title_fontsize=8)
        return
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    sm = ScalarMappable(norm=Normalize(0, len(names) - 1), cmap="viridis")
    bar = fig.colorbar(sm, ax=ax, pad=0.1)
    bar.set_ticks([0, len(names) - 1], labels=[f"{names[0]} (first)", f"{names[-1]} (last)"], fontsize=7)
    bar.set_label("layer depth", fontsize=8)


def plot_sigma(history, path) -> Path:
    """σ (pixels) of every N-Jet layer over the training steps (epochs when the run has no step log),
    one line per layer coloured by depth; the bands say which filter size each σ gives, so a line
    crossing a dotted line is a layer whose filter grew or shrank. The layers that moved most are named."""
    h = _history(history)
    names = list(h.meta.get("njet_layers") or (h.epochs[-1].get("layers", {}) if h.epochs else {}))
    first = h.epochs[0] if h.epochs else {}
    start = {n: d["sigma"] for n, d in (first.get("layers") or {}).items()} if first.get("step", 0) == 0 else {}
    points = [(0, start)] if start else []
    if h.steps:
        points += [(p["step"], p["sigma"]) for p in h.steps]
    else:
        points += [(r["step"], {n: d["sigma"] for n, d in r.get("layers", {}).items()}) for r in h.epochs[1:]]
    if not names or not points:
        raise ValueError("history has no N-Jet layers to plot (no σ was recorded)")
    fig = Figure(figsize=(8, 4.4))
    ax = fig.add_subplot()
    colors = _colors(len(names))
    values = []
    for name, color in zip(names, colors):
        pts = [(s, d[name]) for s, d in points if name in d]
        values += [v for _, v in pts]
        ax.plot([s for s, _ in pts], [v for _, v in pts], color=color, lw=1.4, label=name,
                marker="o" if len(pts) < 20 else None, ms=3)
    _size_bands(ax, _extent(h), min(values), max(values))
    if len(names) > 10:
        _name_movers(ax, points, names)
    ax.set_xlabel("training step")
    spe = h.meta.get("steps_per_epoch")
    if spe and points[-1][0] >= spe:
        top = ax.secondary_xaxis("top", functions=(lambda s: s / spe, lambda e: e * spe))
        top.set_xlabel("epoch", fontsize=8)
    ax.set_ylabel("σ (pixels)")
    ax.set_title("Learned scale σ per N-Jet layer (dotted: where the filter size changes)", fontsize=10)
    ax.grid(alpha=0.25)
    _layer_legend(fig, ax, names, colors)
    return _save(fig, path)


def _name_movers(ax, points, names, n: int = 3) -> None:
    """Name the ``n`` layers whose σ moved most, at the end of their lines, labels kept apart."""
    end, start = points[-1][1], points[0][1]
    moved = sorted((n for n in names if n in end), key=lambda k: -abs(end[k] - start.get(k, end[k])))[:n]
    lo, hi = ax.get_ylim()
    gap, placed = 0.05 * (hi - lo), []
    for name in sorted(moved, key=lambda k: end[k]):
        y = max([end[name]] + [p + gap for p in placed])
        placed.append(y)
        ax.annotate(name, (points[-1][0], end[name]), xytext=(points[-1][0], y), textcoords="data", fontsize=7,
                    ha="right", va="bottom", color="0.2")


def _layer_sigmas(src) -> tuple[list[str], list[float], list[float | None], float, str]:
    """Names, σ now, σ₀, extent and a label of 'now' for :func:`plot_sigma_layers`."""
    if isinstance(src, ModelSummary):
        rows = src.njet_layers
        return [r.path for r in rows], [r.sigma for r in rows], [r.sigma0 for r in rows], 2.0, "this model"
    last = next((r for r in reversed(src.epochs) if r.get("layers")), None)
    if last is None:
        raise ValueError("history has no N-Jet layers to plot (no σ was recorded)")
    orig = src.meta.get("original_sizes") or {}
    first = src.epochs[0].get("layers", {})
    names = list(last["layers"])
    s0 = [(orig.get(n) or {}).get("sigma0", (first.get(n) or {}).get("sigma")) for n in names]
    return names, [last["layers"][n]["sigma"] for n in names], s0, _extent(src), f"after {last['step']} steps"


def plot_sigma_layers(source: Source, path) -> Path:
    """σ of every N-Jet layer in execution order at one moment (a model, or the end of a run), next to
    σ₀ (σ at conversion), on the filter-size bands of :func:`plot_sigma`."""
    names, now, s0, extent, label = _layer_sigmas(_source(source))
    if not names:
        raise ValueError("the model has no N-Jet layer (nothing has a σ)")
    fig = Figure(figsize=(max(6.0, 0.22 * len(names) + 2), 4.0))
    ax = fig.add_subplot()
    xs = list(range(len(names)))
    if any(v is not None for v in s0):
        ax.plot(xs, [math.nan if v is None else v for v in s0], "s", color="0.6", ms=4, label="σ₀ (at conversion)")
    ax.plot(xs, now, "o-", color="#2a7ab9", ms=4, lw=1.2, label=f"σ ({label})")
    _size_bands(ax, extent, min(now + [v for v in s0 if v is not None]), max(now + [v for v in s0 if v is not None]))
    ax.set_xticks(xs, names, rotation=90, fontsize=7)
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_ylabel("σ (pixels)")
    ax.set_title("σ per N-Jet layer (dotted: where the filter size changes)", fontsize=10)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def _sizes(src, at_conversion: dict | None = None):
    """(subsampling names, original sides, learned sides, layer names, original sizes, sizes at conversion,
    learned sizes, label)."""
    if isinstance(src, ModelSummary):
        subs = [r for r in src.layers if r.kind == "subsample" and r.out_size]
        njet = src.njet_layers
        conv = at_conversion or {}
        return ([r.path for r in subs], [(r.out_size_original or (None,))[0] for r in subs],
                [r.out_size[0] for r in subs], [r.path for r in njet], [r.size_original for r in njet],
                [conv.get(r.path) for r in njet], [r.size for r in njet], "this model")
    if not src.epochs:
        raise ValueError("history has no epochs")
    last, first = src.epochs[-1], src.epochs[0]
    fm, fm0 = last.get("feature_sizes", {}), src.meta.get("feature_sizes_original", {})
    layers, start = last.get("layers", {}), first.get("layers", {})
    orig = src.meta.get("original_sizes") or {}
    size0 = [(orig.get(n) or {}).get("size") for n in layers]
    return (list(fm), [fm0.get(n, [None])[0] for n in fm], [v[0] for v in fm.values()], list(layers), size0,
            [(start.get(n) or {}).get("size") for n in layers], [d["size"] for d in layers.values()],
            f"after {last['step']} steps")


def _bars(ax, names, series) -> None:
    """Grouped bars: ``series`` is ``[(label, values, colour)]``; series without any value are left out.
    The legend sits above the axes, never on the bars."""
    import numpy as np

    series = [(label, vals, c) for label, vals, c in series if any(v is not None for v in vals)]
    x, width = np.arange(len(names)), 0.8 / max(1, len(series))
    for i, (label, vals, color) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, [v or 0 for v in vals], width, label=label, color=color)
    turn = len(names) > 6
    ax.set_xticks(x, names, rotation=60 if turn else 0, ha="right" if turn else "center", fontsize=7)
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.02), ncol=len(series), frameon=False,
              borderaxespad=0.0)
    ax.grid(axis="y", alpha=0.3)


def plot_sizes(source: Source, path, *, at_conversion: dict | None = None) -> Path:
    """Per layer: feature-map side after every safe-subsampling, original network vs learned (top), and
    filter size of every N-Jet layer in the original network, at conversion (σ₀) and learned (bottom),
    in pixels. A history knows the size at conversion (its first row); for a model summary pass
    ``at_conversion`` (``{layer: size}``, as :func:`plot_summary` does)."""
    subs, side0, side, layers, size0, size_c, size, label = _sizes(_source(source), at_conversion)
    panels = [p for p in (subs, layers) if p]
    if not panels:
        raise ValueError("nothing to plot: neither subsampling sites nor N-Jet layers")
    fig = Figure(figsize=(max(6.0, 0.3 * max(map(len, panels)) + 3), 3.6 * len(panels)))
    k = 1
    if subs:
        ax = fig.add_subplot(len(panels), 1, k)
        k += 1
        _bars(ax, subs, [("original network", side0, "#b8c0c8"), (f"learned ({label})", side, "#2a7ab9")])
        ax.set_ylabel("feature-map side (px)")
        ax.set_title("Feature-map size after each subsampling", fontsize=10, pad=22)
    if layers:
        ax = fig.add_subplot(len(panels), 1, k)
        _bars(ax, layers, [("original kernel", size0, "#b8c0c8"), ("at conversion (σ₀)", size_c, "#8fb8d8"),
                           (f"learned ({label})", size, "#2a7ab9")])
        ax.set_ylabel("filter size (px)")
        ax.set_title("Filter size per N-Jet layer", fontsize=10, pad=22)
    fig.tight_layout()
    return _save(fig, path)


def plot_curves(history, path) -> Path:
    """Loss (left) and accuracy or mIoU in % (right) over the training steps: the training loss per
    step (from the step log), training metrics per epoch, validation at every evaluation."""
    h = _history(history)
    key = "miou" if h.meta.get("task") == "segmentation" else "acc"
    fig = Figure(figsize=(10, 3.8))
    for i, (metric, label) in enumerate((("loss", "loss"), (key, "mIoU (%)" if key == "miou" else "top-1 accuracy (%)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        if metric == "loss" and h.steps:
            ax.plot([p["step"] for p in h.steps], [p["loss"] for p in h.steps], color="C0", lw=0.8, alpha=0.7,
                    label="train (per step)")
        for split, style, color, name in (("train", "--s", "C0", "train (epoch mean)"), ("val", "-o", "C1", "validation")):
            pts = [(r["step"], r[split][metric]) for r in h.epochs
                   if r.get(split, {}).get(metric) is not None and not (split == "train" and metric == "loss" and h.steps)]
            if pts:
                ax.plot(*zip(*pts), style, color=color, ms=4, label=name)
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle("Fine-tuning: loss and accuracy" if key == "acc" else "Fine-tuning: loss and mIoU")
    fig.tight_layout()
    return _save(fig, path)


def plot_filters(layer, path, *, name: str = "", max_filters: int = 8, in_channel: int = 0) -> Path:
    """The basis of an N-Jet layer at its σ (top row) next to its first ``max_filters`` filters for
    input channel ``in_channel`` (bottom row); red positive, blue negative, one colour bar per row;
    the title says which output and input channels are shown."""
    import torch

    from .layers import carries_sigma

    if not carries_sigma(layer):
        raise TypeError(f"plot_filters: expected an N-Jet layer (a σ layer: NJetConv2d, a tied branch or a "
                        f"SigmaModule of your own), got {type(layer).__name__}")
    with torch.no_grad():  # the layer says what it is made of (SigmaModule.basis_images)
        basis, labels = layer.basis_images()
        w, sigma = layer.filters(), float(layer.sigma.detach().float().mean())
    if not 0 <= in_channel < w.shape[1]:
        raise ValueError(f"plot_filters: in_channel must be in 0..{w.shape[1] - 1}, got {in_channel}")
    filt = w[:max_filters, in_channel].float().cpu()
    rows = [(imgs, kind) for imgs, kind in ((basis, "basis"), (filt, "filters")) if imgs is not None]
    cols = max(imgs.shape[0] for imgs, _ in rows)
    fig = Figure(figsize=(1.1 * cols + 1.2, 1.5 * len(rows)))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for row, (imgs, kind) in enumerate(rows):
        lim = float(imgs.float().abs().max()) or 1.0  # one symmetric scale per row: the colour bar's
        shown = None
        for i in range(cols):
            ax = axes[row][i]
            ax.axis("off")
            if i < imgs.shape[0]:
                shown = ax.imshow(imgs[i].float().cpu().numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim,
                                  interpolation="nearest")
                ax.set_title(labels[i] if kind == "basis" else f"out {i}", fontsize=7)
        bar = fig.colorbar(shown, ax=list(axes[row]), fraction=0.02, pad=0.01)
        bar.ax.tick_params(labelsize=6)
        bar.set_label("basis value" if kind == "basis" else "weight", fontsize=7)
    size = w.shape[-1]
    n_out = w.shape[0]
    outs = f"output channels 0–{filt.shape[0] - 1} of {n_out}" if filt.shape[0] > 1 else f"output channel 0 of {n_out}"
    fig.suptitle(f"{name or 'N-Jet layer'}: σ = {sigma:.3g} px, {size}×{size} filter\n"
                 + ("top: the Gaussian-derivative basis; bottom: " if basis is not None else "")
                 + f"the filters of {outs}, "
                 f"for input channel {in_channel} of {w.shape[1]}", fontsize=8)
    return _save(fig, path)


def plot_macs(history, path) -> Path:
    """MACs per sample over the training steps, as × the original's (the budget as a line when there
    is one). Raises ``ValueError`` for a history without MAC counts."""
    h = _history(history)
    original = h.meta.get("macs_original")
    pts = [(p["step"], p["macs"]) for p in h.steps if p.get("macs") is not None]
    if not original or not pts:
        raise ValueError("plot_macs: the history has no MAC counts (a model converted without example inputs)")
    fig = Figure(figsize=(6, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    steps, macs = zip(*pts)
    ax.step(steps, [m / original for m in macs], where="post", color="C0", label="converted (largest per point)")
    ax.axhline(1.0, color="0.5", lw=0.8, ls=":", label="original")
    if h.meta.get("budget") is not None:
        ax.axhline(h.meta["budget"], color="C3", lw=1.0, ls="--", label=f"budget {h.meta['budget']:g}×")
    ax.set_xlabel("training step")
    ax.set_ylabel("MACs per sample (× original)")
    ax.set_title(f"Cost while σ learns (original {original / 1e6:,.1f}M MACs per sample)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_history(history, out_dir, prefix: str = "") -> list[Path]:
    """A run's figures into ``out_dir``: ``{prefix}sigma.png`` (σ over steps), ``{prefix}sigma_layers.png``
    (σ per layer at the end), ``{prefix}sizes.png``, ``{prefix}curves.png``, ``{prefix}macs.png`` (MACs
    per step, :func:`plot_macs`); figures without data
    (e.g. no N-Jet layer) are skipped."""
    h = _history(history)
    out, written = Path(out_dir), []
    for name, fn in (("sigma", plot_sigma), ("sigma_layers", plot_sigma_layers), ("sizes", plot_sizes),
                     ("curves", plot_curves), ("macs", plot_macs)):
        try:
            written.append(fn(h, out / f"{prefix}{name}.png"))
        except ValueError:
            continue
    return written


def conversion_sizes(summary: ModelSummary, model) -> dict[str, int]:
    """``{layer: filter size at σ₀}`` of the summary's N-Jet layers (the size rule and cap of each layer)."""
    from .basis import filter_size

    out = {}
    for r in summary.njet_layers:
        m = model.get_submodule(r.path) if r.sigma0 is not None else None
        extent, cap = getattr(m, "extent", 2.0), getattr(m, "max_size", None)
        if m is not None:
            s = filter_size(r.sigma0, extent)
            out[r.path] = s if cap is None else min(s, cap if cap % 2 else cap - 1)
    return out


def plot_summary(summary: ModelSummary, model, out_dir, layer: str | None = None) -> list[Path]:
    """A model's figures into ``out_dir``: ``sigma_layers.png``, ``sizes.png`` and
    ``filters_<layer>.png`` (``layer``: an N-Jet layer's path, default the first)."""
    out, paths = Path(out_dir), []
    njet = summary.njet_layers
    names = [r.path for r in njet]
    if layer is not None and layer not in names:
        raise ValueError(f"layer must be the path of an N-Jet layer (e.g. {', '.join(names[:5])}), got {layer!r}")
    if njet:
        paths.append(plot_sigma_layers(summary, out / "sigma_layers.png"))
    if njet or any(r.kind == "subsample" for r in summary.layers):
        paths.append(plot_sizes(summary, out / "sizes.png", at_conversion=conversion_sizes(summary, model)))
    layer = layer or (names[0] if names else None)
    if layer is not None:
        paths.append(plot_filters(model.get_submodule(layer), out / f"filters_{layer.replace('.', '_')}.png",
                                  name=layer))
    return paths
