"""The shared state of one conversion and the ordered list of passes that work on it.

A pass is a function ``fn(ctx) -> None`` that reads and changes the
:class:`SurgeryContext`. :data:`PASSES` is the default pipeline; another pass
slots in with :func:`insert_pass` (e.g. ASPP tying before ``"convs"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import fx, nn

from ..recipes.schema import Recipe
from .report import ConversionReport, ReportRow


@dataclass
class Region:
    """A traced part of the model: ``gm`` sits at module path ``prefix`` ("" = the root)."""

    prefix: str
    gm: fx.GraphModule

    def full_path(self, target: str) -> str:
        """Module path in the whole model of a ``call_module`` target of this region."""
        return f"{self.prefix}.{target}" if self.prefix else target


@dataclass
class SurgeryContext:
    """What the passes share.

    ``model``: the model being rewritten (replaced by a GraphModule when the root traces).
    ``calibration``: list of input batches (already on the model's device) or None.
    ``example_inputs``: tuple of example tensors or None (for shapes and checks).
    ``regions``: the traced parts (empty in module-swap mode).
    ``kernels``: for every N-Jet layer made from a conv, ``id(layer) -> (path, dense kernel)``,
    kept for the data-aware fit.
    ``rows``: ``module path -> conv ReportRow`` (passes update fit errors, strides).
    ``state``: free slots for passes (e.g. the subsampling plan).
    """

    model: nn.Module
    recipe: Recipe
    report: ConversionReport
    calibration: list[torch.Tensor] | None = None
    example_inputs: tuple | None = None
    regions: list[Region] = field(default_factory=list)
    kernels: dict[int, tuple[str, torch.Tensor]] = field(default_factory=dict)
    rows: dict[str, ReportRow] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    def get_module(self, path: str) -> nn.Module:
        """The module at ``path`` in the (current) model."""
        return self.model.get_submodule(path) if path else self.model

    def set_module(self, path: str, module: nn.Module) -> None:
        """Put ``module`` at ``path`` (the root cannot be replaced this way)."""
        parent, _, name = path.rpartition(".")
        setattr(self.get_module(parent), name, module)


@dataclass
class Pass:
    """A named step of the pipeline; ``enabled(ctx)`` decides whether it runs."""

    name: str
    fn: Callable[[SurgeryContext], None]
    enabled: Callable[[SurgeryContext], bool] = lambda ctx: True


#: The default pipeline, filled in by :mod:`njetify.surgery.api` (names: "trace", "plan",
#: "convs", "subsample", "guards", "calibrate", "finish").
PASSES: list[Pass] = []


def insert_pass(p: Pass, *, before: str | None = None, after: str | None = None) -> None:
    """Add ``p`` to :data:`PASSES` before or after the pass named ``before``/``after``.

    A pass with the same name is replaced. Raises ``ValueError`` for an unknown anchor.
    """
    PASSES[:] = [q for q in PASSES if q.name != p.name]
    anchor = before if before is not None else after
    if anchor is None:
        PASSES.append(p)
        return
    names = [q.name for q in PASSES]
    if anchor not in names:
        raise ValueError(f"insert_pass: no pass named {anchor!r}; passes are {names}")
    i = names.index(anchor) + (0 if before is not None else 1)
    PASSES.insert(i, p)


def run_passes(ctx: SurgeryContext, passes: list[Pass] | None = None) -> SurgeryContext:
    """Run the pipeline in order on ``ctx``."""
    for p in PASSES if passes is None else passes:
        if p.enabled(ctx):
            p.fn(ctx)
    return ctx
