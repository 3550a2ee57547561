"""Checks for tying convolutions (:class:`njetify.layers.tied.TiedNJetConv2d`): each error names the difference."""

from __future__ import annotations

from torch import nn

from .convertible import conv_kind

__all__ = ["check_tieable", "conv_trim", "tie_mismatch"]


def check_tieable(convs) -> None:
    """Raise ``ValueError`` naming the first difference that keeps ``convs`` from being tied."""
    if len(convs) < 1:
        raise ValueError("convs must hold at least one nn.Conv2d, got none")
    for i, c in enumerate(convs):
        kind = conv_kind(c)
        if kind is None:
            raise TypeError(f"convs[{i}] must be an nn.Conv2d, got {type(c).__name__}")
        if kind != "ok":
            raise ValueError(f"convs[{i}] cannot be tied: {kind}")
        if c.stride[0] != 1:
            raise ValueError(f"convs[{i}] cannot be tied: stride {c.stride[0]} (tied branches run at stride 1)")
    reason = tie_mismatch(convs)
    if reason:
        raise ValueError(f"convs cannot be tied: {reason}")


def tie_mismatch(convs) -> str | None:
    """The first attribute in which ``convs`` differ (as a sentence), or None when they can share α."""
    c0 = convs[0]
    for attr in ("in_channels", "out_channels", "groups", "padding_mode"):
        vals = [getattr(c, attr) for c in convs]
        if any(v != vals[0] for v in vals):
            return f"branches differ in {attr} ({', '.join(map(str, vals))})"
    has_bias = [c.bias is not None for c in convs]
    if any(b != has_bias[0] for b in has_bias):
        return f"branches differ in bias ({', '.join(map(str, has_bias))})"
    del c0
    return None


def conv_trim(conv: nn.Conv2d) -> int:
    """Pixels per side by which ``conv``'s output is smaller than "same" (negative: larger)."""
    dense = conv.dilation[0] * (conv.kernel_size[0] - 1) + 1
    if conv.padding == "same":
        return 0
    if conv.padding == "valid":
        return (dense - 1) // 2
    return (dense - 1) // 2 - conv.padding[0]
