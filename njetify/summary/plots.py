"""Figures of a converted model (matplotlib, Agg backend): σ per layer, filters vs basis, feature-map sizes.

Each function writes one PNG and returns its path. They take a :class:`ModelSummary`
(from :func:`njetify.summary.summarize`) or, for the filters, the N-Jet module itself.
Feature-map sizes reuse :mod:`njetify.plots` (the fine-tuning history plots) through
:func:`as_history`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .core import ModelSummary

__all__ = ["as_history", "plot_all", "plot_feature_sizes", "plot_filters", "plot_sigmas"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return path


def plot_sigmas(summary: ModelSummary, path: str | os.PathLike) -> Path:
    """σ of every N-Jet layer (pixels) in execution order; per-channel σ as a min–max bar."""
    plt = _plt()
    rows = summary.njet_layers
    if not rows:
        raise ValueError("plot_sigmas: the model has no N-Jet layer (nothing has a σ)")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(rows)), 3.5))
    xs = range(len(rows))
    ax.plot(xs, [r.sigma for r in rows], "o-", ms=4, label="σ (mean per layer)")
    ranged = [(i, r.sigma_range) for i, r in enumerate(rows) if r.sigma_range]
    if ranged:
        ax.vlines([i for i, _ in ranged], [lo for _, (lo, _) in ranged], [hi for _, (_, hi) in ranged],
                  color="C1", label="σ range over channels")
    ax.set_xticks(list(xs), [r.path for r in rows], rotation=90, fontsize=7)
    ax.set_ylabel("σ (pixels)")
    ax.set_title("learned scale per N-Jet layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def as_history(summary: ModelSummary):
    """A one-epoch :class:`njetify.train.History` holding the summary's σ, filter sizes and
    subsampled sizes (learned and original), so :mod:`njetify.plots` can draw it."""
    from ..train.history import History

    layers = {}
    for r in summary.njet_layers:
        lo, hi = r.sigma_range or (r.sigma, r.sigma)
        layers[r.path] = {"sigma": r.sigma, "sigma_min": lo, "sigma_max": hi, "size": r.size}
    subs = [r for r in summary.layers if r.kind == "subsample" and r.out_size is not None]
    meta = {"input_shape": list(summary.input_size),
            "feature_sizes_original": {r.path: list(r.out_size_original) for r in subs if r.out_size_original}}
    epoch = {"epoch": 0, "layers": layers, "feature_sizes": {r.path: list(r.out_size) for r in subs}}
    return History(meta, [epoch])


def plot_feature_sizes(summary: ModelSummary, path: str | os.PathLike) -> Path:
    """Feature-map side after every subsampling, original vs learned, and the filter size of every
    N-Jet layer — drawn by :func:`njetify.plots.plot_feature_sizes` from :func:`as_history`."""
    from ..plots import plot_feature_sizes as plot_history_sizes

    return plot_history_sizes(as_history(summary), path)


def _basis_and_filters(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, float]:
    from ..layers import NJetConv2d
    from ..layers.tied import TiedNJetBranch

    with torch.no_grad():
        if isinstance(layer, NJetConv2d):
            basis = layer.basis()
            basis = basis[0] if basis.dim() == 4 else basis
            return basis, layer.filters(), float(layer.sigma.mean())
        if isinstance(layer, TiedNJetBranch):
            o, k = layer.owner, layer.index
            return o.basis(k), o.filters(k), float(o.sigma[k])
    raise TypeError(f"plot_filters: expected an N-Jet layer (NJetConv2d or a tied branch), got {type(layer).__name__}")


def plot_filters(layer: nn.Module, path: str | os.PathLike, *, name: str = "", max_filters: int = 8,
                 in_channel: int = 0) -> Path:
    """The basis of an N-Jet layer at its σ (top row) next to its first ``max_filters``
    materialised filters for input channel ``in_channel`` (bottom row)."""
    plt = _plt()
    basis, w, sigma = _basis_and_filters(layer)
    nb = basis.shape[0]
    cg = w.shape[1]
    if not 0 <= in_channel < cg:
        raise ValueError(f"plot_filters: in_channel must be in 0..{cg - 1}, got {in_channel}")
    filt = w[:max_filters, in_channel].float().cpu()
    cols = max(nb, filt.shape[0])
    fig, axes = plt.subplots(2, cols, figsize=(1.1 * cols, 2.6), squeeze=False)
    from ..basis import basis_orders

    orders = basis_orders(getattr(layer, "order", None) or layer.owner.order)
    for i in range(cols):
        for row, imgs, label in ((0, basis, "basis"), (1, filt, "filter")):
            ax = axes[row][i]
            ax.axis("off")
            if i < imgs.shape[0]:
                img = imgs[i].float().cpu().numpy()
                lim = float(abs(img).max()) or 1.0
                ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
                title = f"G{orders[i][0]}{orders[i][1]}" if row == 0 else f"out {i}"
                ax.set_title(title, fontsize=7)
    size = basis.shape[-1]
    fig.suptitle(f"{name or 'N-Jet layer'}: σ={sigma:.3g}, {size}x{size} px — basis (top), "
                 f"filters for input channel {in_channel} (bottom)", fontsize=8)
    return _save(fig, path)


def plot_all(summary: ModelSummary, model: nn.Module, out_dir: str | os.PathLike,
             layer: str | None = None) -> list[Path]:
    """Write ``sigma.png``, ``feature_sizes.png`` and ``filters_<layer>.png`` into ``out_dir``.

    ``layer``: module path of the N-Jet layer to draw (default: the first one).
    """
    out_dir = Path(out_dir)
    paths = []
    njet = summary.njet_layers
    if njet:
        paths.append(plot_sigmas(summary, out_dir / "sigma.png"))
    if njet or any(r.kind == "subsample" for r in summary.layers):
        paths.append(plot_feature_sizes(summary, out_dir / "feature_sizes.png"))
    if layer is None and njet:
        layer = njet[0].path
    if layer is not None:
        names = {r.path for r in njet}
        if layer not in names:
            close = ", ".join(sorted(names)[:5])
            raise ValueError(f"layer must be the path of an N-Jet layer (e.g. {close}), got {layer!r}")
        mod = model.get_submodule(layer)
        paths.append(plot_filters(mod, out_dir / f"filters_{layer.replace('.', '_')}.png", name=layer))
    return paths
