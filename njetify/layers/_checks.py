"""Argument checks shared by the layers: each error names the argument, the value and what is allowed."""

from __future__ import annotations

from torch import nn

from ..options import check_choice, check_order, check_positive  # noqa: F401 - re-exported for the layers


def check_channels(in_channels, out_channels, groups) -> None:
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"in_channels ({in_channels}) and out_channels ({out_channels}) must both be divisible "
            f"by groups ({groups})"
        )


def conv_kind(conv) -> str | None:
    """``"ok"`` when ``conv`` can become an N-Jet layer, ``"transposed"`` when it is an
    ``nn.ConvTranspose2d`` that can become an :class:`~njetify.layers.NJetConvTranspose2d`, else
    the reason it cannot (None: not a conv).

    Subclasses of ``nn.Conv2d`` with their own forward are accepted only when their
    semantics are known (timm's ``Conv2dSame``: TensorFlow "SAME" padding).
    """
    if isinstance(conv, nn.ConvTranspose2d):
        from .njet_transpose import transpose_kind

        kind = transpose_kind(conv)
        return "transposed" if kind == "ok" else f"transposed convolution: {kind}"
    if isinstance(conv, (nn.ConvTranspose1d, nn.ConvTranspose3d)):
        return f"{'1' if isinstance(conv, nn.ConvTranspose1d) else '3'}-D transposed convolution"
    if isinstance(conv, (nn.Conv1d, nn.Conv3d)):
        return f"{'1' if isinstance(conv, nn.Conv1d) else '3'}-D convolution"
    if not isinstance(conv, nn.Conv2d):
        return None
    kh, kw = conv.kernel_size
    if kh != kw:
        return f"non-square kernel {kh}x{kw}"
    if kh == 1:
        return "1x1 kernel (pointwise: nothing to learn about scale)"
    if kh % 2 == 0:
        return f"even kernel {kh}x{kw} (N-Jet filters are odd-sized and centred)"
    if conv.dilation[0] != conv.dilation[1]:
        return f"non-square dilation {conv.dilation}"
    if conv.stride[0] != conv.stride[1]:
        return f"non-square stride {conv.stride}"
    if not isinstance(conv.padding, str) and conv.padding[0] != conv.padding[1]:
        return f"asymmetric padding {conv.padding}"
    custom = type(conv).forward is not nn.Conv2d.forward or type(conv)._conv_forward is not nn.Conv2d._conv_forward
    if custom and type(conv).__name__ != "Conv2dSame":
        return f"{type(conv).__name__} has its own forward (semantics unknown to njetify)"
    return "ok"
