"""Load a local checkpoint into a model: ``.pth``/``.pt`` (torch) or ``.safetensors`` state_dicts.

Checkpoints come wrapped (``{"state_dict": ...}``, ``{"model": ...}``) and with
prefixes (``module.`` from DataParallel/DDP, ``_orig_mod.`` from ``torch.compile``,
a wrapper's ``base.``). :func:`load_weights` unwraps, picks the key mapping that
matches the most of the model's keys, skips tensors whose shape differs, and
reports what was missing, unexpected or mismatched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

__all__ = ["WeightsReport", "read_state_dict", "load_weights"]

#: Keys under which training scripts commonly nest the state_dict.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "network", "module")
#: Prefixes that wrappers add to every key; always stripped when every key has one.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class WeightsReport:
    """What :func:`load_weights` did. ``mismatched`` holds ``(model key, checkpoint shape, model shape)``."""

    source: str
    mapping: str = "keys used as they are"
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every model tensor was loaded and every checkpoint tensor was used."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 5) -> str:
        """One paragraph: counts and the first ``limit`` keys of each problem."""

        def few(keys):
            keys = [k if isinstance(k, str) else f"{k[0]} {tuple(k[1])} vs model {tuple(k[2])}" for k in keys]
            more = f", ... (+{len(keys) - limit})" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        parts = [f"{self.source}: loaded {len(self.loaded)} tensors ({self.mapping})"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing in the checkpoint: {few(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected (not in the model): {few(self.unexpected)}")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} skipped for a shape mismatch: {few(self.mismatched)}")
        return "; ".join(parts)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a flat ``{key: tensor}`` state_dict from ``.safetensors`` or a torch file, unwrapping wrappers.

    Torch files are read with ``weights_only=True`` (no arbitrary code runs).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights: no such file {path!r}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or a pickle needing custom classes
        raise ValueError(f"weights: cannot read {path!r} as a state_dict ({type(exc).__name__}: {exc})") from exc
    return _unwrap(obj, path)


def _unwrap(obj, path: str) -> dict[str, torch.Tensor]:
    trail = []
    while isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            bad = next(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
            raise ValueError(
                f"weights: {path!r}{''.join(f'[{k!r}]' for k in trail)} is not a state_dict: entry {bad!r} is a "
                f"{type(obj[bad]).__name__}, and none of the wrapper keys {WRAPPER_KEYS} holds a dict"
            )
        trail.append(key)
        obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"weights: {path!r} holds a {type(obj).__name__}, not a non-empty state_dict")
    return dict(obj)


def _strip_wrappers(keys: list[str]) -> tuple[dict[str, str], list[str]]:
    mapping = {k: k for k in keys}
    done = []
    for prefix in WRAPPER_PREFIXES:
        while mapping and all(v.startswith(prefix) for v in mapping.values()):
            mapping = {k: v[len(prefix) :] for k, v in mapping.items()}
            done.append(prefix)
    return mapping, done


def _best_mapping(keys: list[str], model_keys: set[str]) -> tuple[dict[str, str], str]:
    """Map checkpoint keys to model keys: strip wrapper prefixes, then strip or add one leading name."""
    base, stripped = _strip_wrappers(keys)
    candidates = [(base, "")]
    for first in sorted({v.split(".", 1)[0] + "." for v in base.values() if "." in v}):
        cand = {k: v[len(first) :] if v.startswith(first) else v for k, v in base.items()}
        candidates.append((cand, f"stripped {first!r}"))
    for first in sorted({m.split(".", 1)[0] + "." for m in model_keys if "." in m}):
        candidates.append(({k: first + v for k, v in base.items()}, f"added {first!r}"))
    best, how = max(candidates, key=lambda c: sum(v in model_keys for v in c[0].values()))
    steps = [f"stripped {p!r}" for p in dict.fromkeys(stripped)] + ([how] if how else [])
    return best, ", ".join(steps) or "keys used as they are"


def load_weights(
    model: nn.Module,
    weights: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    strict: bool = False,
) -> WeightsReport:
    """Load ``weights`` (a file path or a state_dict) into ``model`` in place and report what happened.

    Tensors whose shape differs from the model's are skipped (reported in ``mismatched``),
    e.g. a classifier head trained for another number of classes. BatchNorm
    ``num_batches_tracked`` counters absent from old checkpoints are not reported.

    Raises:
        ValueError: no checkpoint key matches the model, or ``strict`` and the report is not ``ok``.
    """
    if isinstance(weights, Mapping):
        source, sd = "state_dict", _unwrap(weights, "state_dict")
    else:
        source, sd = os.fspath(weights), read_state_dict(weights)
    target = model.state_dict()
    mapping, how = _best_mapping(list(sd), set(target))
    report = WeightsReport(source=source, mapping=how)
    to_load = {}
    for key, new in mapping.items():
        if new not in target:
            report.unexpected.append(key)
        elif tuple(sd[key].shape) != tuple(target[new].shape):
            report.mismatched.append((new, tuple(sd[key].shape), tuple(target[new].shape)))
        else:
            to_load[new] = sd[key]
    report.loaded = sorted(to_load)
    skipped = {m[0] for m in report.mismatched}
    report.missing = [
        k for k in target if k not in to_load and k not in skipped and not k.endswith("num_batches_tracked")
    ]
    if not to_load:
        raise ValueError(
            f"weights: no tensor of {source!r} matches {type(model).__name__} "
            f"(checkpoint keys look like {list(sd)[:3]}, the model's like {list(target)[:3]})"
        )
    if strict and not report.ok:
        raise ValueError(f"weights (strict): {report.summary()}")
    model.load_state_dict(to_load, strict=False)
    return report
