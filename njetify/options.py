"""Every allowed value of njetify's options, and the checks that enforce them — in one place.

The layers, the recipes, the surgery and the command line import these tuples and
checks, so an allowed value (an order, a subsampling mode, a size cap) is defined
once and every error names the option, the value and what is allowed.
"""

from __future__ import annotations

import math

from .basis import MAX_ORDER

__all__ = [
    "ASPP_TIE", "INTERPOLATIONS", "MAX_ORDER", "PADDING_MODES", "SIGMA_PER", "SUBSAMPLE_MODES", "SUBSAMPLE_WHERE",
    "check_choice", "check_max_size", "check_order", "check_positive", "check_r", "order_problem",
]

#: ``subsample.mode``: strided ops → stride 1 + safe-subsampling, or keep them.
SUBSAMPLE_MODES = ("safe", "keep")
#: ``subsample.where``: only where the network subsampled, or after every N-Jet layer.
SUBSAMPLE_WHERE = ("original", "every_layer")
#: ``subsample.interpolation``: how a safe-subsampling resizes its map.
INTERPOLATIONS = ("nearest", "bilinear", "area")
#: ``sigma_per``: one σ per layer (the paper) or one per output channel.
SIGMA_PER = ("layer", "channel")
#: Padding modes of a convolution (as ``nn.Conv2d``).
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
#: ``aspp.tie``: tie detected DeepLab ASPP heads ("auto": when found, silently otherwise).
ASPP_TIE = ("auto", True, False)


def order_problem(value) -> str | None:
    """None when ``value`` is an allowed derivative order, else what is allowed."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ORDER:
        return None
    return f"an int in 0..{MAX_ORDER} (the basis has (N+1)(N+2)/2 filters)"


def check_order(value, name: str = "order") -> None:
    """Raise ``ValueError`` unless ``value`` is an int in ``0..MAX_ORDER``."""
    problem = order_problem(value)
    if problem:
        raise ValueError(f"{name} must be {problem}, got {value!r}")


def check_positive(name: str, value) -> None:
    """Raise unless ``value`` is a positive finite number."""
    try:
        ok = not isinstance(value, bool) and 0 < float(value) < math.inf
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number, got {value!r}") from None
    if not ok:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def check_choice(name: str, value, allowed: tuple) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed``."""
    if not any(value is a or (type(value) is type(a) and value == a) for a in allowed):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def check_max_size(value, name: str = "max_size") -> None:
    """Raise ``ValueError`` unless ``value`` is None or a positive int (a filter-size cap in pixels)."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{name} must be a positive int (pixels) or None, got {value!r}")


def check_r(value, name: str = "r") -> None:
    """Raise ``ValueError`` unless ``value`` is ``"auto"`` or a positive number (the paper uses 4)."""
    if value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) < math.inf:
        raise ValueError(f"{name} must be 'auto' or a positive number (the paper uses 4), got {value!r}")
