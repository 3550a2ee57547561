"""Layers: the N-Jet convolution, safe-subsampling and tied ASPP branches."""

from .njet_conv import NJetConv2d
from .safe_subsample import SafeSubsample
from .tied import TiedNJetBranch, TiedNJetConv2d

__all__ = ["NJetConv2d", "SafeSubsample", "TiedNJetBranch", "TiedNJetConv2d"]
