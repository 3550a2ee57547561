"""Joint fits for tied N-Jet branches — now the K-kernel case of :mod:`njetify.fit`.

A single layer and K tied branches share one implementation (kernels used at their taps
only, bounded memory); these names stay importable from here.
"""

from __future__ import annotations

from ..fit import basis_at_taps, joint_data_aware_fit, joint_weight_fit, tap_offsets
from ..moments import TapMoments as TiedMoments

__all__ = ["TiedMoments", "basis_at_taps", "joint_data_aware_fit", "joint_weight_fit", "tap_offsets"]
