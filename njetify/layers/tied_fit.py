"""The shared α of tied N-Jet branches: the K-kernel case of the weight-space fit in :mod:`njetify.fit`
(one implementation for a single layer and K branches: kernels used at their taps only, bounded memory),
and the data-based refit of a head through the calibration engine."""

from __future__ import annotations

import torch

from ..fit import joint_weight_fit, weight_errors

__all__ = ["fit_alpha", "fit_on_data"]


def fit_alpha(owner, weights, dilations) -> tuple[torch.Tensor, float, list[float]]:
    """Shared α of a :class:`~njetify.layers.tied.TiedNJetConv2d` for K kernels ``(O, C/groups, k, k)``.

    Returns α, the joint and the per-branch weight-space relative errors.
    """
    return joint_weight_fit(weights, dilations, [owner.basis(k) for k in range(owner.num_branches)])


def fit_on_data(owner, convs, inputs) -> None:
    """α and the biases refitted so every branch's outputs match its conv's on ``inputs`` (tensors
    reaching the head; the calibration engine); ``fit_error``/``branch_errors`` become that α's."""
    from ..calibration.on_inputs import fit_on_inputs  # the engine builds on the layers

    fit_on_inputs(list(owner.branches), list(convs), inputs)
    owner.fit_error, owner.branch_errors = weight_errors(
        owner.alpha, [c.weight for c in convs], [c.dilation[0] for c in convs],
        [owner.basis(k) for k in range(owner.num_branches)])
