"""Every module a converted model can hold, one concept per file.

* :class:`NJetConv2d` — the N-Jet convolution (``njet_conv.py``);
* :class:`NJetConvTranspose2d` — the transposed N-Jet convolution (``njet_transpose.py``);
* :class:`NJetAxesConv2d` — an N-Jet convolution with one σ per axis (1×k, k×1 kernels; ``njet_axes.py``);
* :class:`TiedNJetConv2d` — tied ASPP branches: one α, a σ per branch (``tied.py``), seen at each
  branch's path as a :class:`TiedNJetBranch` (``tied_branch.py``);
* :class:`FactorisedConv2d` — a baked layer kept as 1-D filters + a 1×1 conv (``factorised_conv.py``;
  the factorised execution path itself: ``factorised.py``, ``axis_operators.py``, ``path_cost.py``);
* :class:`SafeSubsample` / :class:`FixedSubsample` — σ-driven and frozen resizing (``safe_subsample.py``);
* :class:`SafeUpsample` — an upsampling that resizes to the map it merges with (``safe_upsample.py``);
* :class:`SafePool2d` — a strided pool at stride 1 plus its subsampling (``safe_pool.py``);
* :class:`SubsampledConv2d` — a plain conv that used to be strided (``subsampled_conv.py``);
* :class:`GuardedLinear` — a flatten → Linear head that follows the map size (``flatten_guard.py``);
* :class:`Conv2dDynamicSame` — TF-"SAME" padding for baked layers (``padding.py``);
* user modules whose own forward had to change get a traced forward (``traced.py``).

:class:`SigmaModule`, :func:`sigma_layers` and :func:`sigma_parameters` (``protocol.py``) say
which modules carry a learned σ.
"""

from .flatten_guard import GuardedLinear
from .njet_axes import NJetAxesConv2d
from .njet_conv import NJetConv2d
from .njet_transpose import NJetConvTranspose2d
from .padding import Conv2dDynamicSame
from .protocol import SigmaModule, carries_sigma, sigma_layers, sigma_parameters
from .safe_pool import PoolSpec, SafePool2d, StridelessPool2d
from .safe_subsample import FixedSubsample, SafeSubsample
from .safe_upsample import SafeUpsample
from .subsampled_conv import SubsampledConv2d
from .tied import TiedNJetBranch, TiedNJetConv2d

__all__ = [
    "Conv2dDynamicSame", "FixedSubsample", "GuardedLinear", "NJetAxesConv2d", "NJetConv2d", "NJetConvTranspose2d", "PoolSpec", "SafePool2d", "SafeSubsample",
    "SafeUpsample", "SigmaModule", "StridelessPool2d", "SubsampledConv2d", "TiedNJetBranch", "TiedNJetConv2d", "carries_sigma",
    "sigma_layers", "sigma_parameters",
]
