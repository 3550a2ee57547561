"""The data-aware fit of one standalone σ layer or tied head: the calibration engine's fit on given inputs.

``NJetConv2d.from_conv(conv, inputs=...)`` and ``TiedNJetConv2d.from_convs(convs, inputs=...)`` use it:
the given inputs are what reaches the layer (or every branch of the head) and its original conv(s),
so no model is run: the convs' outputs at sampled positions are the targets
(:func:`~.targets.collect_targets`) and :func:`~.layer_fit.fit_unit` refits α and the bias so that the
layer's outputs match them (output matching, no gate, σ kept). Each layer is solved per input channel
(:mod:`.channel_fit`: no stored design, robust on a few images) unless ``options`` ask for the joint fit
that ``convert``'s calibration uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .batches import prepare_batches
from .layer_fit import fit_unit, sample_budget
from .options import CalibrationOptions, LayerOptions
from .results import LayerResult
from .targets import collect_targets
from .units import build_units

__all__ = ["PER_CHANNEL", "fit_on_inputs"]

#: The engine settings of the standalone fit: every layer solved per input channel (the fit the
#: per-channel moments gave before it moved into the engine). A joint fit on a few images overfits:
#: ``uv run python benchmarks/data_fit.py`` measures it on held-out images.
PER_CHANNEL = {"wide_solver": "per_channel", "direct_max_dim": 0}


class _SideBySide(nn.ModuleList):
    """Modules that all read one input; the output is the list of theirs."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [m(x) for m in self]


def fit_on_inputs(layers: Sequence[nn.Module], convs: Sequence[nn.Conv2d], inputs, options: dict | None = None
                  ) -> LayerResult:
    """Refit ``layers`` (one σ layer, or the K branches of one tied head) to reproduce ``convs``.

    ``inputs``: a tensor ``(N, C_in, H, W)`` or an iterable of them, what reaches the convs. The
    layers are changed in place (α and bias); returns the engine's result for the unit (output
    errors before and after, samples, solver). Raises ValueError when the layer cannot be fitted on
    these inputs (the message says why). ``options``: :class:`CalibrationOptions` fields over
    :data:`PER_CHANNEL` (``{"direct_max_dim": 8192}``: the joint fit of ``convert``'s calibration).
    """
    original, converted = _SideBySide(convs), _SideBySide(layers)
    try:
        batches = prepare_batches(original, inputs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"data-aware fit: {e}".replace("calibration_data", "inputs")) from None
    (unit,) = build_units(original, converted, [str(i) for i in range(len(convs))])
    opts = CalibrationOptions(**{**PER_CHANNEL, **(options or {})})
    targets = collect_targets(original, [unit], batches, budgets={unit.index: sample_budget(unit, opts)},
                              seed=opts.seed)
    res = fit_unit(unit, list(enumerate(batches)), targets[unit.index], opts, LayerOptions(max_error=None))
    if res.status != "calibrated":
        raise ValueError(f"data-aware fit: the layer was {res.status}: {res.reason}")
    return res
