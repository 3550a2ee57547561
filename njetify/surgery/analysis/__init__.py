"""What the model is: torch.fx graphs of it, for analysis only (DESIGN §6).

:func:`analyse` traces the model (or its largest traceable parts) into :class:`Region`
graphs; :func:`record_shapes` runs example inputs through them. The passes read the
graphs to find subsampling sites, the branches that meet, ``flatten → Linear`` heads and
ASPP heads — and then rewrite the model's own modules, never the graphs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ...modes import evaluating
from ...inputs import call_model
from .trace import Region, trace_regions

__all__ = ["Analysis", "Region", "analyse", "record_shapes"]


@dataclass
class Analysis:
    """The traced parts of a model.

    ``mode``: ``"fx"`` (whole model), ``"fx-partial"`` (sub-modules) or ``"swap"`` (nothing traced);
    ``failures``: ``{"module", "reason"}`` per part that did not trace; ``jit_traced``: region
    prefixes traced with ``torch.jit.is_tracing()`` answering True.
    """

    mode: str
    regions: list[Region] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    jit_traced: list[str] = field(default_factory=list)


def analyse(model: nn.Module) -> Analysis:
    """Trace ``model`` (see :func:`njetify.surgery.analysis.trace.trace_regions`)."""
    mode, regions, failures, jit = trace_regions(model)
    return Analysis(mode, regions, failures, jit)


def record_shapes(analysis: Analysis, model: nn.Module, example_inputs: tuple):
    """Run ``example_inputs`` through ``model`` (eval mode, no gradients) and record every traced
    node's ``tensor_meta``; returns the model's output. Regions rooted below the model get the
    inputs their root receives in that run."""
    roots = {id(r.root): r for r in analysis.regions if r.prefix}
    args: dict[int, tuple] = {}

    def grab(module, a, kw):
        if not kw:
            args.setdefault(id(module), a)

    handles = [r.root.register_forward_pre_hook(grab, with_kwargs=True) for r in roots.values()]
    try:
        with evaluating(model):
            out = call_model(model, example_inputs[0] if len(example_inputs) == 1 else example_inputs)
            for region in analysis.regions:
                inputs = example_inputs if not region.prefix else args.get(id(region.root))
                if inputs is not None and all(isinstance(t, torch.Tensor) for t in inputs):
                    _propagate(region, inputs)
    finally:
        for h in handles:
            h.remove()
    return out


def _propagate(region: Region, inputs: tuple) -> None:
    gm = torch.fx.GraphModule(region.root, region.graph)
    try:
        ShapeProp(gm).propagate(*inputs)
    except Exception:  # noqa: BLE001 - shapes are a help, not a requirement: regions stay usable
        for node in region.graph.nodes:
            node.meta.pop("tensor_meta", None)
