"""Training history (JSON + CSV) and snapshots of the learned resolution of a model.

History layout (``history.json``)::

    {"meta": {"task", "config", "model", "input_shape": [C, H, W],
              "feature_sizes_original": {subsample: [H, W]}, "subsample_sources": {subsample: layer}, ...},
     "epochs": [{"epoch", "step", "time_s", "throughput", "train": {...}, "val": {...},
                 "lr": {group: lr}, "layers": {layer: {"sigma", "sigma_min", "sigma_max", "size"}},
                 "feature_sizes": {subsample: [H, W]}}, ...],
     "steps": [{"step", "epoch", "loss", "sigma": {layer: σ}, "macs"}, ...],
     "step_log": {"every", "loss_sum", "n", "macs_max"}}

``macs`` (steps and epoch rows; meta ``macs_original`` and ``budget``): MACs per sample at the
input size of conversion (:mod:`njetify.budget`), the largest over the steps a point stands for;
absent for a model converted without example inputs.

Epoch 0 is the model before fine-tuning (no ``train`` entry). A run stopped inside an
epoch (``max_steps``) ends with a row ``"partial": true`` whose ``epoch`` is fractional
(epochs done + batches done / batches per epoch). ``steps`` samples σ and the mean
training loss during training: every step at first, every 2nd, 4th, … step once the
log would exceed :data:`MAX_STEP_POINTS` points. ``history.csv`` holds the epoch rows
flattened (``train/loss``, ``sigma/<layer>``, ``fmap/<subsample>`` = ``HxW``, …).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from ..layers import SafeSubsample, sigma_layers
from ..modes import evaluating
from .checkpoint import atomic_write_bytes

JSON_NAME, CSV_NAME = "history.json", "history.csv"
#: Upper bound on the points of the step log (older points are thinned to every 2nd).
MAX_STEP_POINTS = 1000


def subsample_modules(model: nn.Module) -> dict[str, SafeSubsample]:
    """Every :class:`SafeSubsample`, by path."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SafeSubsample)}


@torch.no_grad()
def layer_snapshot(model: nn.Module) -> dict[str, dict]:
    """σ (mean, min, max, in pixels) and filter size of every N-Jet module."""
    out = {}
    for name, m in sigma_layers(model).items():
        s = m.sigma.detach().float().cpu()
        out[name] = {"sigma": float(s.mean()), "sigma_min": float(s.min()), "sigma_max": float(s.max()),
                     "size": int(m.kernel_size[0])}
    return out


@torch.no_grad()
def sigma_values(njets: dict[str, nn.Module]) -> dict[str, float]:
    """Mean σ (pixels) of every module of :func:`njetify.layers.sigma_layers`, by path."""
    out = {}
    for name, m in njets.items():
        s = m.sigma if hasattr(m, "sigma") else m.log_sigma.exp()
        out[name] = float(s.detach().float().mean())
    return out


@contextlib.contextmanager
def _fixed_factors(subs: dict[str, SafeSubsample]):
    """Temporarily detach every SafeSubsample from its σ source: factor = 1/stride (the original net)."""
    saved = {n: m.source for n, m in subs.items()}
    try:
        for m in subs.values():
            object.__setattr__(m, "_source", None)
        yield
    finally:
        for n, m in subs.items():
            object.__setattr__(m, "_source", saved[n])


@torch.no_grad()
def feature_sizes(model: nn.Module, sample: torch.Tensor, *, original: bool = False) -> dict[str, list[int]]:
    """Output ``[H, W]`` of every SafeSubsample for one forward of ``sample`` (``(1, C, H, W)``).

    ``original=True``: with every factor fixed at ``1/stride``, i.e. the sizes of the
    unconverted network (= at σ₀ with ``r="auto"``). Runs in eval mode, restores the mode.
    """
    subs = subsample_modules(model)
    if not subs:
        return {}
    sizes: dict[str, list[int]] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: sizes.__setitem__(n, list(o.shape[-2:])))
             for n, m in subs.items()]
    try:
        with evaluating(model), _fixed_factors(subs) if original else contextlib.nullcontext():
            model(sample)
    finally:
        for h in hooks:
            h.remove()
    return sizes


class History:
    """Per-epoch records of a fine-tuning run (see the module docstring for the layout)."""

    def __init__(self, meta: dict | None = None, epochs: list[dict] | None = None,
                 steps: list[dict] | None = None, step_log: dict | None = None):
        self.meta = dict(meta or {})
        self.epochs = list(epochs or [])
        self.steps = list(steps or [])
        self.step_log = {"every": 1, "loss_sum": 0.0, "n": 0, **(step_log or {})}

    def append(self, row: dict) -> None:
        self.epochs.append(row)

    def log_step(self, step: int, epoch: float, loss: float, sigma: dict[str, float],
                 macs: float | None = None) -> None:
        """Add training step ``step`` (1-based) to the step log: a point every ``every`` steps
        with the mean loss and the largest ``macs`` since the last point; thinned when it exceeds
        MAX_STEP_POINTS."""
        log = self.step_log
        log["loss_sum"] += loss
        log["n"] += 1
        if macs is not None:
            log["macs_max"] = max(log.get("macs_max") or 0.0, float(macs))
        if step % log["every"]:
            return
        point = {"step": step, "epoch": epoch, "loss": log["loss_sum"] / log["n"], "sigma": sigma}
        if log.get("macs_max"):
            point["macs"] = log["macs_max"]
        self.steps.append(point)
        log["loss_sum"], log["n"], log["macs_max"] = 0.0, 0, None
        if len(self.steps) > MAX_STEP_POINTS:
            log["every"] *= 2
            self.steps = [p for p in self.steps if p["step"] % log["every"] == 0]

    def __len__(self) -> int:
        return len(self.epochs)

    def last(self) -> dict | None:
        return self.epochs[-1] if self.epochs else None

    def metric(self, split: str, key: str) -> list[tuple[int, float]]:
        """``[(epoch, value)]`` of ``row[split][key]`` where present, e.g. ``metric("val", "acc")``."""
        return [(r["epoch"], r[split][key]) for r in self.epochs if key in r.get(split, {})]

    def to_dict(self) -> dict:
        return {"meta": self.meta, "epochs": self.epochs, "steps": self.steps, "step_log": dict(self.step_log)}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(d.get("meta"), d.get("epochs"), d.get("steps"), d.get("step_log"))

    def rows(self) -> list[dict]:
        """Flat rows for the CSV."""
        out = []
        for r in self.epochs:
            flat = {k: r.get(k) for k in ("epoch", "step", "time_s", "throughput", "partial")}
            for split in ("train", "val"):
                for k, v in r.get(split, {}).items():
                    flat[f"{split}/{k}"] = v
            for g, v in r.get("lr", {}).items():
                flat[f"lr/{g}"] = v
            for n, d in r.get("layers", {}).items():
                flat[f"sigma/{n}"] = d["sigma"]
                flat[f"size/{n}"] = d["size"]
            for n, hw in r.get("feature_sizes", {}).items():
                flat[f"fmap/{n}"] = "x".join(map(str, hw))
            for n, hw in self.meta.get("feature_sizes_original", {}).items():
                flat[f"fmap_original/{n}"] = "x".join(map(str, hw))
            out.append(flat)
        return out

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``history.json`` and ``history.csv`` into ``out_dir`` atomically; returns the JSON path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / JSON_NAME, json.dumps(_clean(self.to_dict()), indent=1).encode())
        rows = self.rows()
        cols: list[str] = []
        for r in rows:
            cols += [c for c in r if c not in cols]
        order = ("epoch", "step", "time_s", "throughput", "partial", "train/", "val/", "lr/", "sigma/", "size/", "fmap/",
                 "fmap_original/")
        cols.sort(key=lambda c: next(i for i, p in enumerate(order + ("",)) if c == p or c.startswith(p)))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
        atomic_write_bytes(out / CSV_NAME, buf.getvalue().encode())
        return out / JSON_NAME

    @classmethod
    def load(cls, path: str | os.PathLike) -> "History":
        """Read a ``history.json`` (or the run folder holding one)."""
        p = Path(path)
        if p.is_dir():
            p = p / JSON_NAME
        if not p.is_file():
            raise FileNotFoundError(f"history file not found: {p} (fit() writes {JSON_NAME} into its out_dir)")
        return cls.from_dict(json.loads(p.read_text()))


def _clean(x):
    """JSON-safe copy: NaN/inf → None, tuples → lists."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
