"""The input resolution a model was built for, and the record of :func:`njetify.rescale`.

A rescaled model carries ``model.njetify_resolution``, a :class:`ResolutionRecord`: the
accumulated resolution factor, the input side the network was converted for (from its
conversion's example input) and the ``scale`` of every safe-subsampling site that
:func:`njetify.rescale` changed. :func:`njetify.save` writes it into the file's metadata and
:func:`njetify.load` puts it back, so the rebuilt subsampling has the saved sizes; ``njetify
inspect`` prints :func:`resolution_line`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from torch import nn

from .layers import SafeSubsample

__all__ = ["RESOLUTION_ATTR", "ResolutionRecord", "apply_resolution", "base_input_size", "current_input_size",
           "resolution_line", "resolution_of"]

#: Attribute of a model that holds its :class:`ResolutionRecord`.
RESOLUTION_ATTR = "njetify_resolution"


@dataclass
class ResolutionRecord:
    """``factor``: input side now / input side the network was built for (1: not rescaled).
    ``base_size``: ``(H, W)`` in pixels the network was built for (None: not recorded).
    ``subsample_scales``: ``{path: [scale, sigma_scale]}`` of the safe-subsampling sites :func:`njetify.rescale`
    changed (see :class:`~njetify.layers.SafeSubsample`)."""

    factor: float = 1.0
    base_size: tuple[int, int] | None = None
    subsample_scales: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["base_size"] = None if self.base_size is None else list(self.base_size)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> ResolutionRecord:
        base = data.get("base_size")
        return cls(float(data.get("factor", 1.0)), None if base is None else (int(base[0]), int(base[1])),
                   {str(k): [float(x) for x in v] for k, v in (data.get("subsample_scales") or {}).items()})


def base_input_size(model: nn.Module) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of the example input the model was converted with (saved metadata, else its report)."""
    meta = getattr(model, "njetify_meta", None) or {}
    shapes = meta.get("input_shapes") or getattr(getattr(model, "njetify_report", None), "example_input_shape", None)
    if not shapes or len(shapes[0]) != 4:
        return None
    return tuple(int(v) for v in shapes[0][1:])


def resolution_of(model: nn.Module) -> ResolutionRecord:
    """The model's record (factor 1 and the conversion's input size when it was never rescaled)."""
    rec = getattr(model, RESOLUTION_ATTR, None)
    if isinstance(rec, ResolutionRecord):
        return rec
    base = base_input_size(model)
    return ResolutionRecord(1.0, None if base is None else base[1:])


def scaled_side(side: int, factor: float) -> int:
    """``round(side · factor)``, at least 1 (pixels)."""
    return max(1, int(math.floor(side * factor + 0.5)))


def current_input_size(model: nn.Module) -> tuple[int, int, int] | None:
    """``(C, H, W)`` the model runs at now: the size it was built for times its resolution factor
    (None when neither the record nor the conversion gives a size)."""
    rec = resolution_of(model)
    conv = base_input_size(model)
    if rec.base_size is None:
        return None
    chans = conv[0] if conv is not None else next((m.in_channels for m in model.modules() if hasattr(m, "in_channels")), 3)
    return (chans, scaled_side(rec.base_size[0], rec.factor), scaled_side(rec.base_size[1], rec.factor))


def apply_resolution(model: nn.Module, data: dict | ResolutionRecord | None) -> None:
    """Set the subsampling scales of ``data`` (a saved record) on ``model`` and attach the record.

    Raises ``ValueError`` when a recorded site is not a safe-subsampling of ``model``."""
    if data is None:
        return
    rec = data if isinstance(data, ResolutionRecord) else ResolutionRecord.from_dict(data)
    modules = dict(model.named_modules())
    for path, (scale, sigma_scale) in rec.subsample_scales.items():
        site = modules.get(path)
        if not isinstance(site, SafeSubsample):
            raise ValueError(f"the resolution record names {path!r}, which is not a safe-subsampling of this "
                             f"{type(model).__name__} (a different architecture or conversion?)")
        site.scale, site.sigma_scale = scale, sigma_scale
        site.invalidate()
    setattr(model, RESOLUTION_ATTR, rec)


def site_scales(model: nn.Module) -> dict[str, list[float]]:
    """``{path: [scale, sigma_scale]}`` of the safe-subsampling sites that are not at scale 1."""
    return {p: [float(m.scale), float(m.sigma_scale)] for p, m in model.named_modules()
            if isinstance(m, SafeSubsample) and (m.scale != 1.0 or m.sigma_scale != 1.0)}


def record_of(model: nn.Module) -> dict | None:
    """The record to save: None for a model never rescaled, else :meth:`ResolutionRecord.to_dict`
    with the scales read from the model's own safe-subsampling sites."""
    rec = getattr(model, RESOLUTION_ATTR, None)
    scales = site_scales(model)
    if not isinstance(rec, ResolutionRecord) and not scales:
        return None
    rec = rec if isinstance(rec, ResolutionRecord) else resolution_of(model)
    return ResolutionRecord(rec.factor, rec.base_size, scales).to_dict()


def resolution_line(model: nn.Module) -> str:
    """``"built for inputs of 28×28 px; rescaled ×2 → 56×56"`` (one line, for ``njetify inspect``)."""
    rec = resolution_of(model)
    if rec.base_size is None:
        text = "input size it was built for: not recorded"
    else:
        text = f"built for inputs of {rec.base_size[0]}×{rec.base_size[1]} px"
    if not math.isclose(rec.factor, 1.0):
        now = "" if rec.base_size is None else " → " + "×".join(str(scaled_side(s, rec.factor)) for s in rec.base_size)
        text += f"; rescaled ×{rec.factor:.4g}{now}"
    return text
