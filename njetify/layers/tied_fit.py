"""The shared α of tied N-Jet branches: the K-kernel case of the fits in :mod:`njetify.fit`
(one implementation for a single layer and K branches: kernels used at their taps only, bounded memory)."""

from __future__ import annotations

import torch

from ..fit import joint_data_aware_fit, joint_weight_fit, tap_offsets
from ..moments import TapMoments

__all__ = ["fit_alpha"]


def fit_alpha(owner, weights, dilations, inputs=None) -> tuple[torch.Tensor, float, list[float]]:
    """Shared α of a :class:`~njetify.layers.tied.TiedNJetConv2d` for K kernels ``(O, C/groups, k, k)``.

    Weight-space, or data-aware when ``inputs`` (a tensor or an iterable of tensors reaching the
    branches) are given. Returns α, the joint and the per-branch weight-space relative errors.
    """
    bases = [owner.basis(k) for k in range(owner.num_branches)]
    if inputs is None:
        return joint_weight_fit(weights, dilations, bases)
    offsets = [tap_offsets(w.shape[-1], d) for w, d in zip(weights, dilations)]
    moments = TapMoments([owner.basis_1d(k) for k in range(owner.num_branches)], owner.order, offsets, owner.trims)
    for x in [inputs] if isinstance(inputs, torch.Tensor) else inputs:
        moments.update(x)
    return joint_data_aware_fit(weights, dilations, bases, moments, owner.groups)
