"""Which modules the surgery converts, and why the others stay: :func:`conv_kind`, the one rule.

The conv pass, the ASPP analysis, the subsampling sites, the layers' ``from_conv`` and the command
line's layer count all ask :func:`conv_kind` (or :func:`is_convertible`), so that "which convs
convert" is answered in one place.
"""

from __future__ import annotations

from torch import nn

__all__ = ["conv_kind", "is_convertible"]


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


def is_convertible(module: nn.Module) -> bool:
    """Whether the conv pass turns ``module`` into a σ layer: an N-Jet convolution (``conv_kind`` "ok")
    or a transposed one ("transposed")."""
    return conv_kind(module) in ("ok", "transposed")
