"""What the engine fits: one N-Jet layer, or one tied head (K branches, one α), with its original conv(s).

Everything here goes through the layers' public attributes and methods
(``basis()``, ``alpha``, ``bias``, ``log_sigma``, ``fit_()``, ``stride``, ``groups``,
``padding``, ``trim``, ``trims``), so the engine does not depend on how the layers
evaluate their forward. Which unit fits which σ layer type is one table (:func:`register_unit`,
looked up along the layer's MRO, as the converter table of :mod:`njetify.layers.convertible`): a layer
type of your own that output matching should refit is one unit class and one registration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..fit import dense_kernel, tap_offsets
from ..layers import NJetConv2d, NJetConvTranspose2d, TiedNJetBranch
from ..layers.njet_axes import NJetAxesConv2d
from .responses import Geometry, TransposedGeometry


@dataclass
class Unit:
    """One fit of one σ layer (an :class:`~njetify.layers.NJetConv2d`; the subclasses below serve the other
    layer types: :class:`TiedUnit`, :class:`TransposedUnit`, :class:`AxesUnit`). ``paths``: the converted
    module paths (a tied head: its K branch paths, in branch order); ``module``: the layer (a tied head:
    the TiedNJetConv2d owner); ``originals``: the original conv of each branch (one for a layer).

    Each subclass answers the same questions (its bases, parameters, σ, weight-space refit), so the
    engine never asks which layer type it fits."""

    paths: list[str]
    module: nn.Module
    originals: list[nn.Conv2d]
    index: int = 0
    extra_paths: list[str] = field(default_factory=list)  # other paths of a shared layer

    #: True for a tied head (one α, K branches); its σ₀ is not searched.
    tied = False

    @classmethod
    def owner_of(cls, layer: nn.Module) -> nn.Module:
        """The module one unit fits for ``layer`` (a layer at several paths is one unit)."""
        return layer

    @classmethod
    def start(cls, owner: nn.Module) -> "Unit":
        """An empty unit for ``owner``; :meth:`add` gives it its paths."""
        return cls([], owner, [])

    def add(self, path: str, layer: nn.Module, original: nn.Module) -> None:
        """``layer`` at ``path`` replaced ``original``: the first path fits, later ones share the layer."""
        if self.paths:
            self.extra_paths.append(path)
        else:
            self.paths, self.originals = [path], [original]

    def finish(self) -> None:
        """Check the unit once every path is added (ValueError naming what is missing)."""

    @property
    def kind(self) -> str:
        """``"conv"`` or ``"tied"`` (the result's ``kind``)."""
        return "tied" if self.tied else "conv"

    @property
    def path(self) -> str:
        """The path the report names the unit by (a tied head: its first branch)."""
        return self.paths[0]

    @property
    def watch_paths(self) -> list[str]:
        """The paths whose module the sweep parks at (a tied head: every branch)."""
        return [self.path]

    @property
    def num_branches(self) -> int:
        return len(self.originals)

    @property
    def groups(self) -> int:
        return self.module.groups

    @property
    def num_basis(self) -> int:
        return self.module.alpha.shape[-1]

    @property
    def num_bias(self) -> int:
        """Bias rows K of the regression (0 without bias)."""
        return 0 if self.module.bias is None else self.num_branches

    @property
    def dim(self) -> int:
        """Coefficients per output channel: ``C_g·F``."""
        return self.module.alpha.shape[1] * self.module.alpha.shape[2]

    @property
    def outputs_per_group(self) -> int:
        return self.module.out_channels // self.groups

    def branch_output(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The layer's own output of branch ``k`` on ``x`` (before any carried subsampling)."""
        return self.module.convolve(x)

    def sigmas(self) -> list[float]:
        """The current σ of every branch (a layer: its mean σ)."""
        return [float(self.module.sigma.detach().double().mean())]

    def uniform_sigma(self) -> bool:
        """True unless a per-channel layer's σ's differ (then one basis cannot serve every output)."""
        s = self.module.log_sigma.detach()
        return bool(torch.allclose(s, s[:1].expand_as(s)))

    def set_sigma(self, sigma: float) -> None:
        """Set a layer's σ (every channel's, for a per-channel layer)."""
        with torch.no_grad():
            self.module.log_sigma.fill_(float(torch.tensor(sigma, dtype=torch.float64).log()))

    def bases(self) -> list[tuple[torch.Tensor, Geometry, int]]:
        """Per branch: the basis ``(F, s, s)``, the padding geometry and the layer's stride."""
        m = self.module
        b = m.basis().detach()
        if b.dim() == 4:  # per-channel σ, all equal (checked by uniform_sigma)
            b = b[0]
        return [(b, Geometry(m.padding, m.trim, m.stride, m.padding_mode), m.stride)]

    def taps(self, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Branch ``k``'s original kernel at its taps, ``(O, C_g, T)``, and the taps' offsets ``(T, 2)``
        (dy, dx) from the centre of the layer's patch; None when the original is no plain
        correlation with an odd kernel (the per-channel solver of :mod:`.channel_fit` cannot serve it)."""
        conv = self.originals[k]
        if not isinstance(conv, nn.Conv2d) or any(s % 2 == 0 for s in conv.kernel_size):
            return None
        return conv.weight.detach().flatten(2), tap_offsets(conv.kernel_size, conv.dilation)

    def params(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``alpha (O, C_g, F)`` and bias as ``(K, O)`` (None without bias)."""
        b = self.module.bias
        return self.module.alpha.detach(), None if b is None else b.detach()[None]

    def set_params(self, alpha: torch.Tensor, bias: torch.Tensor | None) -> None:
        m = self.module
        with torch.no_grad():
            m.alpha.copy_(alpha.to(m.alpha.dtype))
            if bias is not None:
                m.bias.copy_(bias[0].to(m.bias.dtype))

    def weight_space_fit(self) -> float:
        """Refit α in weight space at the current σ (biases from the originals); the relative error."""
        m, conv = self.module, self.originals[0]
        err = m.fit_(dense_kernel(conv.weight.detach(), conv.dilation[0]))  # per-channel σ: all equal
        self._copy_bias()
        return float(err)

    def _copy_bias(self) -> None:
        m = self.module
        if m.bias is not None:
            with torch.no_grad():
                m.bias.copy_(torch.stack([c.bias for c in self.originals]).reshape(m.bias.shape).detach())

    def weight_error(self) -> float | None:
        """Relative weight-space error of the layer's last weight-space fit (``fit_error``)."""
        err = getattr(self.module, "fit_error", None)
        return None if err is None else float(err)


class TiedUnit(Unit):
    """A tied ASPP head (:class:`~njetify.layers.TiedNJetConv2d`): one α for K branches, one σ and one bias
    per branch, each branch at its own trim."""

    tied = True

    @classmethod
    def owner_of(cls, layer: nn.Module) -> nn.Module:
        return layer.owner

    @classmethod
    def start(cls, owner: nn.Module) -> "TiedUnit":
        unit = cls([], owner, [None] * owner.num_branches)
        unit.by_index = {}
        return unit

    def add(self, path: str, layer: nn.Module, original: nn.Module) -> None:
        self.by_index[layer.index] = path
        self.originals[layer.index] = original

    def finish(self) -> None:
        missing = [k for k in range(self.module.num_branches) if k not in self.by_index]
        if missing:
            raise ValueError(f"calibration: tied head of {next(iter(self.by_index.values()))!r}: the paths of "
                             f"branch(es) {missing} are missing (give every branch path of a tied head)")
        self.paths = [self.by_index[k] for k in range(self.module.num_branches)]

    @property
    def watch_paths(self) -> list[str]:
        return list(self.paths)

    def branch_output(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return self.module.forward_branch(x, k)

    def sigmas(self) -> list[float]:
        return [float(v) for v in self.module.sigma.detach().double()]

    def uniform_sigma(self) -> bool:
        return True  # one basis per branch

    def bases(self) -> list[tuple[torch.Tensor, Geometry, int]]:
        m = self.module
        return [(m.basis(k).detach(), Geometry("same", m.trims[k], 1, m.padding_mode), 1)
                for k in range(m.num_branches)]

    def params(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        b = self.module.bias
        return self.module.alpha.detach(), None if b is None else b.detach()

    def set_params(self, alpha: torch.Tensor, bias: torch.Tensor | None) -> None:
        m = self.module
        with torch.no_grad():
            m.alpha.copy_(alpha.to(m.alpha.dtype))
            if bias is not None:
                m.bias.copy_(bias.to(m.bias.dtype))

    def weight_space_fit(self) -> float:
        err = self.module.fit_([c.weight.detach() for c in self.originals], [c.dilation[0] for c in self.originals])
        self._copy_bias()
        return float(err)


class TransposedUnit(Unit):
    """An :class:`NJetConvTranspose2d` fitted as the correlation it is: its flipped basis on the
    zero-inserted input (:class:`TransposedGeometry`), α as ``(C_out, C_in/groups, F)``."""

    @property
    def dim(self) -> int:
        return (self.module.in_channels // self.groups) * self.num_basis

    def bases(self) -> list[tuple[torch.Tensor, Geometry, int]]:
        m = self.module
        geometry = TransposedGeometry("same", 0, m.stride, "zeros", m.kernel, m.pad, m.output_padding)
        return [(m.basis().detach().flip(-2, -1), geometry, 1)]

    def taps(self, k: int) -> None:
        return None  # a transposed conv is no correlation of the layer's input

    def params(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        m, g = self.module, self.groups
        a = m.alpha.detach()  # (C_in, C_out/g, F)
        a = a.view(g, m.in_channels // g, m.out_channels // g, -1).transpose(1, 2).reshape(m.out_channels, -1, a.shape[-1])
        return a, None if m.bias is None else m.bias.detach()[None]

    def set_params(self, alpha: torch.Tensor, bias: torch.Tensor | None) -> None:
        m, g = self.module, self.groups
        a = alpha.view(g, m.out_channels // g, m.in_channels // g, -1).transpose(1, 2).reshape(m.alpha.shape)
        with torch.no_grad():
            m.alpha.copy_(a.to(m.alpha.dtype))
            if bias is not None:
                m.bias.copy_(bias[0].to(m.bias.dtype))

    def weight_space_fit(self) -> float:
        err = self.module.fit_(self.originals[0].weight.detach())
        self._copy_bias()
        return float(err)


@dataclass(frozen=True)
class AxesGeometry(Geometry):
    """"Same" padding with a trim per axis (``trim_y``, ``trim_x``) for a filter embedded, centred, in a
    square ``size × size`` grid (zeros outside its ``s_y × s_x`` support)."""

    trim_y: int = 0
    trim_x: int = 0

    def pads(self, height: int, width: int, size: int) -> list[int]:
        px, py = (size - 1) // 2 - self.trim_x, (size - 1) // 2 - self.trim_y
        return [px, px, py, py]


class AxesUnit(Unit):
    """An :class:`~njetify.layers.njet_axes.NJetAxesConv2d` (one σ per axis): its ``s_y × s_x`` basis
    embedded in a square grid so that the engine's square patches serve it; ``set_sigma`` sets every
    axis that has extent."""

    def uniform_sigma(self) -> bool:
        return True  # one basis serves every output whatever the two σ are

    def sigmas(self) -> list[float]:
        """The mean σ of the axes with extent (what ``set_sigma`` and ``from_conv(sigma=…)`` set)."""
        return [float(self.module.sigma.detach().double().mean())]

    def set_sigma(self, sigma: float) -> None:
        """Scale every axis's σ so that their mean is ``sigma`` (their ratio kept)."""
        with torch.no_grad():
            self.module.log_sigma.add_(float(torch.tensor(sigma / self.sigmas()[0], dtype=torch.float64).log()))

    def bases(self) -> list[tuple[torch.Tensor, Geometry, int]]:
        m = self.module
        b = m.basis().detach()
        size = max(b.shape[-2:])
        py, px = (size - b.shape[-2]) // 2, (size - b.shape[-1]) // 2
        square = torch.nn.functional.pad(b, (px, px, py, py))
        return [(square, AxesGeometry("same", 0, m.stride, m.padding_mode, m.trim[0], m.trim[1]), m.stride)]

    def weight_space_fit(self) -> float:
        err = self.module.fit_(self.originals[0].weight.detach())
        self._copy_bias()
        return float(err)


def register_unit(layer_type: type, unit_type: type[Unit], original: type = nn.Conv2d) -> None:
    """Refit layers of ``layer_type`` (and its subclasses without an entry of their own) with
    ``unit_type``, against an original module of type ``original``; replaces an earlier entry."""
    if not (isinstance(unit_type, type) and issubclass(unit_type, Unit)):
        raise TypeError(f"register_unit: unit_type must be a Unit subclass, got {unit_type!r}")
    _UNIT_TYPES[layer_type] = (unit_type, original)


def unit_type_for(module: nn.Module) -> tuple[type[Unit], type] | None:
    """``(unit type, original module type)`` of the closest registered class in ``type(module)``'s MRO."""
    for cls in type(module).__mro__:
        if cls in _UNIT_TYPES:
            return _UNIT_TYPES[cls]
    return None


def build_units(original: nn.Module, converted: nn.Module, paths: list[str]) -> list[Unit]:
    """One unit per distinct converted layer / tied head named in ``paths`` (its unit type from
    :func:`register_unit`).

    Raises ValueError naming the path when a path is missing from either model, the converted
    module is no σ layer a unit is registered for, or the original module is not of the type its unit fits.
    """
    units: dict[int, Unit] = {}
    for path in paths:
        new = _get(converted, path, "converted model")
        old = _get(original, path, "original model")
        entry = unit_type_for(new)
        if entry is None or not isinstance(old, entry[1]):
            if not isinstance(old, nn.Conv2d):
                raise ValueError(f"calibration: {path!r} in the original model is a {type(old).__name__}, "
                                 "not an nn.Conv2d (give the paths of converted convolutions)")
            raise ValueError(f"calibration: {path!r} in the converted model is a {type(new).__name__}, "
                             "not an NJetConv2d or a TiedNJetBranch (or a σ layer registered with "
                             "njetify.calibration.units.register_unit)")
        cls = entry[0]
        owner = cls.owner_of(new)
        unit = units.get(id(owner))
        if unit is None:
            unit = units[id(owner)] = cls.start(owner)
        unit.add(path, new, old)
    out = list(units.values())
    for i, u in enumerate(out):
        u.finish()
        u.index = i
    return out


def _get(model: nn.Module, path: str, which: str) -> nn.Module:
    try:
        return model.get_submodule(path) if path else model
    except AttributeError:
        raise ValueError(f"calibration: no module at path {path!r} in the {which}") from None


_UNIT_TYPES: dict[type, tuple[type[Unit], type]] = {}
register_unit(NJetConv2d, Unit)
register_unit(NJetAxesConv2d, AxesUnit)
register_unit(TiedNJetBranch, TiedUnit)
register_unit(NJetConvTranspose2d, TransposedUnit, nn.ConvTranspose2d)
