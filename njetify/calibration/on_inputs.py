"""The data-aware fit of one standalone σ layer or tied head: the calibration engine on given inputs.

``NJetConv2d.from_conv(conv, inputs=...)`` and ``TiedNJetConv2d.from_convs(convs, inputs=...)`` use it:
the layer (or each branch of the head) and its original conv are set side by side, both read the
same inputs, and :func:`~.engine.calibrate_model` refits α and the bias so that the layer's
outputs match the conv's (output matching, no gate, σ kept), the fit a converted model gets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .batches import prepare_batches
from .engine import calibrate_model
from .options import LayerOptions
from .results import LayerResult

__all__ = ["fit_on_inputs"]


class _SideBySide(nn.ModuleList):
    """Modules that all read one input; the output is the list of theirs."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [m(x) for m in self]


def fit_on_inputs(layers: Sequence[nn.Module], convs: Sequence[nn.Conv2d], inputs) -> LayerResult:
    """Refit ``layers`` (one σ layer, or the K branches of one tied head) to reproduce ``convs``.

    ``inputs``: a tensor ``(N, C_in, H, W)`` or an iterable of them, what reaches the convs. The
    layers are changed in place (α and bias); returns the engine's result for the unit (output
    errors before and after, samples, solver). Raises ValueError when the layer cannot be fitted on
    these inputs (the message says why).
    """
    original, converted = _SideBySide(convs), _SideBySide(layers)
    try:
        batches = prepare_batches(original, inputs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"data-aware fit: {e}".replace("calibration_data", "inputs")) from None
    no_gate = LayerOptions(max_error=None)
    result = calibrate_model(original, converted, [str(i) for i in range(len(convs))], batches,
                             layer_options=lambda path: no_gate)
    (res,) = result.layers
    if res.status != "calibrated":
        raise ValueError(f"data-aware fit: the layer was {res.status}: {res.reason}")
    return res
