"""Argument checks shared by the layers: each error names the argument, the value and what is allowed."""

from __future__ import annotations

from ..options import PADDING_MODES, check_choice, check_order, check_positive  # noqa: F401 - re-exported for the layers


def check_channels(in_channels, out_channels, groups) -> None:
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"in_channels ({in_channels}) and out_channels ({out_channels}) must both be divisible "
            f"by groups ({groups})"
        )


def check_layer(order, in_channels, out_channels, groups, extent, padding_mode: str | None = None) -> None:
    """The checks every σ layer's constructor makes: order, channels and groups, extent, padding mode."""
    check_order(order)
    check_channels(in_channels, out_channels, groups)
    check_positive("extent", extent)
    if padding_mode is not None:
        check_choice("padding_mode", padding_mode, PADDING_MODES)
