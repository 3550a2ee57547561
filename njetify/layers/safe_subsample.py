"""SafeSubsample: resize a feature map by a factor that follows a learned σ (DESIGN §4)."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..options import INTERPOLATIONS, check_choice, check_positive
from ._fx import as_traced_leaf
from .sizes import track_plans
from .subsample_plan import SubsamplePlan, apply_plan, make_plan, picks, subsampled_size


class _Resize(nn.Module):
    """Resize by ``self.factor`` (float) after ``self.align`` (int) border pixels, with
    ``self.interpolation`` (str): shared by the learned and the frozen form. The forward
    scripts (``torch.jit.script``) where ``factor`` is a plain attribute (:class:`FixedSubsample`)."""

    def output_size(self, length: int) -> int:
        """Side of the output for an input side of ``length`` pixels (at the current factor)."""
        return subsampled_size(length + self.align, self.factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            done = self._no_resize(x)
            if done is not None:
                return done
        return resize_by(_aligned(x, self.align), self.factor, self.interpolation)

    @torch.jit.unused
    def _no_resize(self, x: torch.Tensor) -> torch.Tensor | None:
        """The output without resizing, or None: a proxy while torch.fx traces, or ``x`` itself when the
        conv before ran at the stride this resize picks (:meth:`already_picked`; hooks still see it)."""
        leaf = as_traced_leaf(self, x)
        if leaf is not None:
            return leaf
        if getattr(self, "_picked", False):
            self._picked = False
            return x
        return None

    @torch.jit.unused
    def plan(self, height: int, width: int, device: torch.device | None = None) -> SubsamplePlan | None:
        """What this subsampling does to a ``height × width`` map (after ``align``) at the current factor:
        made on the host and kept per size (:mod:`~njetify.layers.subsample_plan`). Inside a compiled graph
        a learned subsampling only reads the kept plan (None when this size has none yet). ``device``: where
        the pick indices must live (None: anywhere; a new plan then keeps them on the CPU)."""
        plans = self.__dict__.setdefault("_plans", {})
        if torch.compiler.is_compiling():
            return plans.get((height, width)) if isinstance(self, SafeSubsample) else \
                make_plan(float(self.factor), height, width, self.interpolation == "nearest", device or torch.device("cpu"))
        factor = float(self.factor)
        plan = plans.get((height, width))
        if plan is None or plan.factor != factor or (device is not None and plan.rows is not None
                                                      and plan.rows.device != device):
            if len(plans) >= 16:  # a few map sizes per site; a sweep over sizes must not grow it for ever
                plans.clear()
            plan = plans[(height, width)] = make_plan(factor, height, width, self.interpolation == "nearest",
                                                      device or torch.device("cpu"))
        return plan

    @torch.jit.unused
    def refresh_plans(self) -> None:
        """Remake every kept plan at the current factor (host-side: after an optimiser step or a σ set by hand,
        before a compiled graph reads them)."""
        plans = self.__dict__.get("_plans", {})
        for (height, width), plan in list(plans.items()):
            self.plan(height, width, plan.rows.device if plan.rows is not None else None)

    def _apply(self, fn, *args, **kwargs):
        self.__dict__["_plans"] = {}  # the pick tensors live on the old device
        return super()._apply(fn, *args, **kwargs)

    @torch.jit.unused
    def already_picked(self, x: torch.Tensor) -> torch.Tensor:
        """Run this module on ``x``, the output of a conv that ran at the stride :func:`strided_pick`
        found (so forward hooks see the subsampled map), without subsampling it again."""
        self._picked = True
        try:
            return self(x)
        finally:
            self._picked = False


class SafeSubsample(_Resize):
    """Subsample a map of side L to ``⌈L · (1/2)^(σ/r)⌉`` pixels.

    Placed after an operation that used to be strided and now runs at stride 1 (an N-Jet
    layer, a pool or a 1×1 conv carries it as its ``subsample`` child). With ``r="auto"``,
    ``r = σ₀ / log2(stride)`` so that at σ₀ the factor is exactly ``1/stride``: the output
    then has the strided op's size and — with ``interpolation="nearest"`` — the very same
    pixels (indices 0, stride, 2·stride, …). The size is a discrete function of σ: no
    gradient flows through it (as in the paper).

    ``scale`` and ``sigma_scale`` (default 1) are set by :func:`njetify.rescale`: the input is
    ``scale`` times larger and the source's σ ``sigma_scale`` times larger (``scale``, unless σ
    hit a floor) than the network was built for; the factor ``(1/2)^(σ/(sigma_scale·r)) / scale``
    gives back the map size (and the law that follows σ) the network had at its own resolution.

    Args:
        source: the σ layer (:class:`~njetify.layers.protocol.SigmaModule`) whose σ sets the
            factor (its mean σ when per channel). ``None`` keeps the factor fixed at ``1/stride``.
        stride: the original stride (the factor at σ₀ with ``r="auto"``).
        r: ``"auto"`` or a positive number (the paper uses 4).
        sigma0: σ₀ of the source for ``r="auto"`` (default: the source's σ now).
        interpolation: ``"nearest"`` (exact pixel pick), ``"bilinear"`` or ``"area"``.
        source_name: module path of the source, for reports.
        align: pixels added on the right and bottom (replicating the border) before resizing,
            so that branches that meet at a merge have equal sides (DESIGN §4).

    Shapes: ``(N, C, H, W)`` → ``(N, C, ⌈(H+align)·f⌉, ⌈(W+align)·f⌉)``.
    """

    def __init__(
        self,
        source: nn.Module | None,
        stride: int = 2,
        r: float | str = "auto",
        sigma0: float | None = None,
        interpolation: str = "nearest",
        source_name: str | None = None,
        align: int = 0,
    ):
        super().__init__()
        check_choice("interpolation", interpolation, INTERPOLATIONS)
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"SafeSubsample: stride must be a positive int, got {stride!r}")
        if r == "auto":
            if source is not None and stride == 1:
                raise ValueError("SafeSubsample: r='auto' needs stride > 1 (it matches the original stride); give r a number")
        else:
            check_positive("r", r)
        if not isinstance(align, int) or isinstance(align, bool) or align < 0:
            raise ValueError(f"SafeSubsample: align must be an int ≥ 0 (pixels), got {align!r}")
        self.stride = stride
        self.interpolation = interpolation
        self.align = align
        self.auto = r == "auto"
        self.r: float | None = None if self.auto else float(r)
        self.scale = self.sigma_scale = 1.0
        #: Never subsample less than ``1/(stride·scale)`` (set by a cost budget: no map grows past the original's).
        self.at_least_stride = False
        self.set_source(source, source_name, sigma0)

    def set_source(self, source: nn.Module | None, name: str | None = None, sigma0: float | None = None) -> None:
        """Let ``source``'s σ drive the factor (None: fixed at ``1/stride``). With ``r="auto"``
        the factor at ``sigma0`` (default: the source's σ now) is ``1/stride``."""
        object.__setattr__(self, "_source", source)  # a reference, not a submodule: σ is saved once
        self.source_name = name if source is not None else None
        self.invalidate()
        self._factor = 1.0 / self.stride
        track_plans(self)
        if source is not None and self.auto:
            self.rebase(float(source.sigma.detach().mean()) if sigma0 is None else float(sigma0))
        elif source is None and self.auto:
            self.r = None

    def rebase(self, sigma0: float) -> None:
        """For ``r="auto"``: make ``sigma0`` the σ at which the factor is exactly ``1/stride``
        (call it after choosing a new σ₀ for the source)."""
        if self.auto and self._source is not None:
            self.r = float(sigma0) / math.log2(self.stride)
            self.invalidate()

    @property
    def source(self) -> nn.Module | None:
        """The N-Jet layer whose σ drives this subsampling (None: fixed factor)."""
        return self._source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        done = self._no_resize(x)
        if done is not None:
            return done
        if torch.compiler.is_compiling():  # the plan made on the host for this size: ints and index tensors
            plan = self.plan(x.shape[-2] + self.align, x.shape[-1] + self.align, x.device)
            if plan is not None:
                return apply_plan(_aligned(x, self.align), plan, self.interpolation)
        return _resize_eagerly(self, x)

    def __setstate__(self, state):
        super().__setstate__(state)
        track_plans(self)

    def invalidate(self) -> None:
        """Forget the factor and the plans read on the host (after changing ``r``, ``scale`` or the floor)."""
        self._key = None
        self.__dict__["_plans"] = {}

    @property
    def factor(self) -> float:
        """Current factor ``(1/2)^(σ/(sigma_scale·r)) / scale`` (``1/(stride·scale)`` without a source); read on
        the host, outside any graph (exported graphs keep the factor of the last eager read)."""
        src = self._source
        if src is None:
            return 1.0 / (self.stride * self.scale)
        if torch.compiler.is_compiling():
            return self._factor
        p = src.scale_parameter()
        key = (p._version, p.data_ptr(), self.r, self.scale, self.sigma_scale)
        if key != self._key:  # one host read per σ update
            sigma = float(src.sigma.detach().mean())
            factor = 0.5 ** (sigma / (self.sigma_scale * self.r)) / self.scale
            if self.at_least_stride:
                factor = min(factor, 1.0 / (self.stride * self.scale))
            self._factor, self._key = factor, key
        return self._factor

    def extra_repr(self) -> str:
        src = "fixed" if self._source is None else f"source={self.source_name or '?'}, r={self.r:.4g}"
        align = f", align={self.align}" if self.align else ""
        scale = f", scale={self.scale:.6g}" if self.scale != 1.0 else ""
        scale += f", sigma_scale={self.sigma_scale:.6g}" if self.sigma_scale != self.scale else ""
        floor = ", at_least_stride=True" if self.at_least_stride else ""
        return (f"stride={self.stride}, factor={self.factor:.4g}, {src}, interpolation={self.interpolation!r}"
                f"{align}{scale}{floor}")

    def frozen(self, at: str = "learned") -> FixedSubsample:
        """A :class:`FixedSubsample` at the current factor (``at="learned"``) or at ``1/stride``
        (``at="original"``, the network before conversion)."""
        check_choice("at", at, ("learned", "original"))
        factor = self.factor if at == "learned" else 1.0 / self.stride
        return FixedSubsample(factor, self.interpolation, self.stride, self.align).train(self.training)


@torch.compiler.disable
def _resize_eagerly(module: SafeSubsample, x: torch.Tensor) -> torch.Tensor:
    """A learned subsampling on the host: make (or reuse) the plan of this map size and apply it. Inside a
    compiled graph only when no plan was made for the size yet (one graph break, then a recompile that
    reads the plan)."""
    x = _aligned(x, module.align)
    plan = module.plan(x.shape[-2], x.shape[-1], x.device)
    if plan is None:  # torch.export traces through compiler.disable, where σ cannot be read
        raise RuntimeError(
            f"SafeSubsample ({module.source_name or 'learned'}): no map-size plan for a {x.shape[-2]}×{x.shape[-1]} "
            "map yet, and σ cannot be read inside torch.export. Run the model once eagerly on an input of the "
            "size you export with, then export")
    return apply_plan(x, plan, module.interpolation)


class FixedSubsample(_Resize):
    """A :class:`SafeSubsample` frozen at ``factor``: side L → ``⌈(L+align)·factor⌉`` pixels.

    Same size rule, same pixel picks (nearest) or the same resize (bilinear, area) as
    the SafeSubsample it replaces, so outputs are identical for any input size; no σ.
    Shapes: ``(N, C, H, W)`` → ``(N, C, ⌈(H+align)·f⌉, ⌈(W+align)·f⌉)``.
    """

    def __init__(self, factor: float, interpolation: str = "nearest", stride: int | None = None, align: int = 0):
        super().__init__()
        check_positive("FixedSubsample factor", factor)
        check_choice("interpolation", interpolation, INTERPOLATIONS)
        self.factor = float(factor)
        self.interpolation = interpolation
        self.stride = stride
        self.align = int(align)

    def extra_repr(self) -> str:
        align = f", align={self.align}" if self.align else ""
        return f"factor={self.factor:.6g}, interpolation={self.interpolation!r}{align}"


def _aligned(x: torch.Tensor, align: int) -> torch.Tensor:
    """``x`` with ``align`` pixels added on the right and bottom, replicating the border."""
    return F.pad(x, [0, align, 0, align], mode="replicate") if align else x


def resize_by(x: torch.Tensor, factor: float, interpolation: str = "nearest") -> torch.Tensor:
    """Resize ``(N, C, H, W)`` to ``(N, C, ⌈H·f⌉, ⌈W·f⌉)``; ``"nearest"`` picks pixels
    ``⌊i/f⌋`` (top-left aligned, exactly a strided op's at f = 1/stride)."""
    h, w = x.shape[-2], x.shape[-1]
    oh, ow = subsampled_size(h, factor), subsampled_size(w, factor)
    if oh == h and ow == w:
        return x
    if interpolation == "nearest":
        return x.index_select(-2, picks(oh, h, factor, x.device)).index_select(-1, picks(ow, w, factor, x.device))
    if interpolation == "area":
        return F.adaptive_avg_pool2d(x, (oh, ow))
    return F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False, antialias=True)


_PICKS = {"on": True}


@contextlib.contextmanager
def full_resolution():
    """Within: convolutions before a subsampling run at stride 1 even where :func:`strided_pick`
    would shortcut them (what the cost budget counts: the cost once σ has moved the factor)."""
    saved, _PICKS["on"] = _PICKS["on"], False
    try:
        yield
    finally:
        _PICKS["on"] = saved


def exact_stride(module: nn.Module) -> int | None:
    """``k`` when ``module`` is a :class:`FixedSubsample` that keeps exactly the pixels ``0, k, 2k, …`` of
    every input size (nearest, no align, factor 1/k to 1e-9), else None: "conv at stride 1, then
    ``module``" is then "conv at stride k" for any input."""
    if type(module) is not FixedSubsample or module.interpolation != "nearest" or module.align:
        return None
    k = int(round(1.0 / module.factor))
    return k if k >= 2 and abs(module.factor * k - 1.0) < 1e-9 else None


def strided_pick(module: nn.Module, height: int, width: int, device: torch.device | None = None) -> int | None:
    """``k`` when ``module`` (a nearest safe-subsampling, no align) picks exactly the pixels
    ``0, k, 2k, …`` of an ``height × width`` map on both axes — then "conv at stride 1, subsample" is
    "conv at stride k" with the same output, at 1/k² of the work; else None.

    True at σ₀ (factor 1/stride) and while σ stays close to it (:func:`~njetify.layers.subsample_plan.
    exact_pick_stride`). Decided on the host (the module's plan for this size); inside a compiled graph
    the kept plan's int, so the graph runs the strided op and recompiles only when the answer changes."""
    if not _PICKS["on"] or not isinstance(module, _Resize) or module.interpolation != "nearest" or module.align:
        return None
    plan = module.plan(height, width, device)
    return None if plan is None else plan.stride
