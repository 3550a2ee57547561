"""The one answer to "does this module carry a learned σ?".

:class:`SigmaModule` is the base class of every module whose filter follows a learned
scale σ (:class:`~njetify.layers.NJetConv2d`, the branches of a tied ASPP head, or a
layer of your own). Saving, the optimiser's parameter groups, the training history,
baking and the summaries all find σ through :func:`sigma_layers` and
:func:`sigma_parameters`, never through class names or attribute guessing.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SigmaModule", "carries_sigma", "sigma_layers", "sigma_parameters"]


class SigmaModule(nn.Module):
    """Base class of a module whose filter size and content follow a learned scale σ.

    Subclasses provide:

    * ``sigma`` — the current σ in pixels, a tensor ``(k,)`` (one value, or one per output channel);
    * ``kernel_size`` — the current filter size ``(s, s)`` in pixels;
    * :meth:`scale_parameter` — the ``nn.Parameter`` holding log σ that this module reads
      (it may be shared, as by the branches of a tied head);
    * :meth:`filters` — the materialised filter ``(C_out, C_in/groups, s, s)``;
    * :meth:`baked` — an equivalent module of plain PyTorch layers with σ frozen.

    and may override (defaults given here, enough for a layer of your own):

    * :meth:`describe` — what summaries show (``kind``, ``op``, σ, filter size, stride);
    * :meth:`basis_images` — the basis the filters are made of, with a label per filter, for
      :func:`njetify.plots.plot_filters` (default: none; the plot shows the filters only).
    """

    @property
    def sigma(self) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def kernel_size(self) -> tuple[int, int]:  # pragma: no cover - interface
        raise NotImplementedError

    def scale_parameter(self) -> nn.Parameter:  # pragma: no cover - interface
        """The log-σ parameter this module reads."""
        raise NotImplementedError

    def filters(self) -> torch.Tensor:  # pragma: no cover - interface
        """The materialised filter ``(C_out, C_in/groups, s, s)``."""
        raise NotImplementedError

    def baked(self) -> nn.Module:  # pragma: no cover - interface
        """Plain PyTorch module(s) computing the same outputs at the current σ."""
        raise NotImplementedError


    def describe(self) -> dict:
        """What :func:`njetify.summary.summarize` shows for this layer: ``kind`` (``"njet"``, or ``"tied"``
        for a branch that shares its coefficients), ``op`` (a short label), ``sigma`` (mean, pixels),
        ``sigma_range`` (min, max, for one σ per channel), ``size`` (pixels) and ``stride``."""
        sig = self.sigma.detach().float()
        info = {"kind": "njet", "op": f"{type(self).__name__} σ", "sigma": float(sig.mean()),
                "size": self.kernel_size[0], "stride": 1}
        if sig.numel() > 1:
            info["sigma_range"] = (float(sig.min()), float(sig.max()))
        return info

    def basis_images(self) -> tuple[torch.Tensor | None, list[str]]:
        """The basis ``(F, s, s)`` the filters are combinations of at the current σ, and a label per basis
        filter; ``(None, [])`` when the layer has no such basis."""
        return None, []


def carries_sigma(module: nn.Module) -> bool:
    """True when ``module`` is a :class:`SigmaModule`."""
    return isinstance(module, SigmaModule)


def sigma_layers(model: nn.Module) -> dict[str, SigmaModule]:
    """Every :class:`SigmaModule` of ``model`` by module path, in ``named_modules`` order."""
    return {path: m for path, m in model.named_modules() if isinstance(m, SigmaModule)}


def sigma_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The distinct log-σ parameters of ``model``'s σ layers (shared ones once), in module order."""
    out: dict[int, nn.Parameter] = {}
    for m in sigma_layers(model).values():
        p = m.scale_parameter()
        out.setdefault(id(p), p)
    return list(out.values())
