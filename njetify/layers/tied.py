"""Tied N-Jet branches: K parallel convolutions sharing one α, each with its own σ (DESIGN §5).

:class:`TiedNJetConv2d` owns the shared coefficients ``alpha (O, C/groups, F)``, the K
scales ``log_sigma (K,)`` and the per-branch biases ``bias (K, O)``. Its
:attr:`~TiedNJetConv2d.branches` are thin :class:`TiedNJetBranch` views that replace
the original branch convolutions *in place*, so whatever follows each conv (BN,
ReLU, the sum or concat, the projection) stays untouched. The owner is registered
once, as ``tied`` inside branch 0 (state_dict keys ``<branch0>.tied.alpha``,
``.tied.log_sigma``, ``.tied.bias``); the other branches hold a plain reference.

Branch k's filter is ``W_k = Σ_f α_f · B_f(σ_k)`` of size ``s_k = 2⌈extent·σ_k⌉+1``.
Branches run like :class:`~njetify.layers.NJetConv2d` (``path``): dense, or factorised
(:mod:`njetify.layers.factorised`) — mix-first, where the 1×1 mixing ``C → O·F`` is computed
once per input and shared by all branches (a 49×49 filter on 2048 channels is never
formed), or basis-first; ``"auto"`` picks per branch and call with the cost model of
:mod:`njetify.layers.path_cost`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import basis as B
from ..fit import sigma_from_kernel
from ._checks import check_choice, check_layer, check_positive
from .tie_checks import check_tieable, conv_trim
from .factorised import _compute_dtype, mix
from .factorised_conv import FactorisedConv2d
from .functional import njet_conv2d, njet_filter, same_pads
from .path_choice import choose_branch_path, compiled_path
from .path_cost import PATHS, dense_fits
from .sizes import FilterSizes, HostSizes, track
from .tied_branch import TiedNJetBranch
from . import tied_fit


class TiedNJetConv2d(HostSizes, nn.Module):
    """K N-Jet convolutions with one shared α and K learned scales.

    Args:
        in_channels, out_channels, groups, bias: as in ``nn.Conv2d`` (shared by all branches).
        sigmas: the K initial scales in pixels (> 0); K ≥ 1.
        order: highest total derivative order N; F = (N+1)(N+2)/2.
        extent: filter half-width in units of σ.
        learn_sigma: σ's are trained.
        max_size: cap on every branch's filter size in pixels (None: no cap); hitting it
            sets ``size_capped[k]`` and warns once.
        trims: K per-branch trims (pixels per side the output is smaller than "same").
        padding_mode: ``"zeros" | "reflect" | "replicate" | "circular"``.
        path: ``"auto"`` (cost model, per branch and call), ``"dense"``, ``"factorised"``,
            ``"basis_first"`` or ``"mix_first"`` (as :class:`~njetify.layers.NJetConv2d`).
        name: where the head sits (a module path), named in its size messages (caps, size changes).

    Shapes: ``forward(x)`` maps ``(N, in_channels, H, W)`` to a list of K tensors
    ``(N, out_channels, H − 2·trim_k, W − 2·trim_k)``; branch k alone is ``forward_branch(x, k)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        sigmas,
        order: int = 3,
        extent: float = 2.0,
        groups: int = 1,
        bias: bool = True,
        learn_sigma: bool = True,
        max_size: int | None = None,
        trims=None,
        padding_mode: str = "zeros",
        *,
        path: str = "auto",
        name: str | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_layer(order, in_channels, out_channels, groups, extent, padding_mode)
        check_choice("path", path, PATHS)
        sig = [float(s) for s in torch.as_tensor(sigmas, dtype=torch.float64).flatten().tolist()]
        if not sig:
            raise ValueError("TiedNJetConv2d: sigmas must hold at least one scale, got none")
        for s in sig:
            check_positive("sigmas", s)
        trims = [0] * len(sig) if trims is None else [int(t) for t in trims]
        if len(trims) != len(sig):
            raise ValueError(f"TiedNJetConv2d: trims has {len(trims)} values for {len(sig)} branches")
        if max_size is not None and (not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 1):
            raise ValueError(f"TiedNJetConv2d: max_size must be a positive int or None, got {max_size!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.order, self.extent, self.max_size = order, float(extent), max_size
        self.trims, self.padding_mode, self.path = trims, padding_mode, path
        self.last_paths: list[str | None] = [None] * len(sig)
        self.learn_sigma = learn_sigma
        self.fit_error: float | None = None
        self.branch_errors: list[float] | None = None
        what = f"TiedNJetConv2d({in_channels}→{out_channels})"
        self._filter_sizes = FilterSizes(f"{name} ({what})" if name else what, "each")
        self._plans: dict[int, tuple] = {}
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        nf = B.num_basis(order)
        self.alpha = nn.Parameter(torch.empty(out_channels, in_channels // groups, nf, **factory))
        self.log_sigma = nn.Parameter(torch.tensor(sig, dtype=torch.float64).log().to(**factory), learn_sigma)
        self.bias = nn.Parameter(torch.zeros(len(sig), out_channels, **factory)) if bias else None
        fan_in = in_channels // groups * nf
        nn.init.uniform_(self.alpha, -math.sqrt(3.0 / fan_in), math.sqrt(3.0 / fan_in))
        object.__setattr__(self, "_branches", tuple(TiedNJetBranch(self, k) for k in range(len(sig))))
        self._mix_cache: list | None = None
        self._filter_sizes.refresh(self.log_sigma, self.extent, self.max_size, quiet=True)
        track(self)

    # ------------------------------------------------------------------ state

    @property
    def num_branches(self) -> int:
        return self.log_sigma.shape[0]

    @property
    def branches(self) -> tuple[TiedNJetBranch, ...]:
        """The K branch views (modules that evaluate one branch each)."""
        return self._branches

    def half_width(self, k: int) -> int:
        """Half-width h of branch k's filter (size 2h+1), after the ``max_size`` cap (a host-side int)."""
        return self.current_halves()[0][k]

    @property
    def size_capped(self) -> list[bool]:
        """Per branch: whether ``max_size`` cut the filter σ asks for."""
        return list(self.current_halves()[1])

    def kernel_size(self, k: int) -> tuple[int, int]:
        """Current filter size ``(s_k, s_k)`` of branch k in pixels."""
        s = B.size_of(self.half_width(k))
        return (s, s)

    def basis_1d(self, k: int) -> torch.Tensor:
        """1-D Gaussian derivatives of branch k: ``(N+1, s_k)``."""
        return B.gaussian_derivatives_1d(self.sigma[k], self.order, self.half_width(k))

    def basis(self, k: int) -> torch.Tensor:
        """2-D basis of branch k: ``(F, s_k, s_k)``."""
        return B.gaussian_basis_2d(self.sigma[k], self.order, self.half_width(k))

    def filters(self, k: int) -> torch.Tensor:
        """Materialised weight of branch k: ``(out_channels, in_channels/groups, s_k, s_k)``."""
        return njet_filter(self.alpha, self.sigma[k], self.half_width(k))

    def num_params(self) -> int:
        """Parameters of the tied head: α, the K σ's and the biases."""
        return sum(p.numel() for p in self.parameters())

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(N, C_in, H, W)`` → list of K outputs ``(N, C_out, H', W')``."""
        return [self.forward_branch(x, k) for k in range(self.num_branches)]

    def forward_branch(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Output of branch k on ``x (N, C_in, H, W)``."""
        path = self.choose_path(x, k)
        out = self._run_branch(x, k, path)
        if not torch.compiler.is_compiling():
            self.last_paths[k] = path
        return out

    def _run_branch(self, x: torch.Tensor, k: int, path: str, mixed: torch.Tensor | None = None) -> torch.Tensor:
        if path == "mix_first" and mixed is None and not torch.compiler.is_compiling():
            mixed = self._mixed(x)
        return njet_conv2d(x, self.alpha, self.sigma[k], None if self.bias is None else self.bias[k],
                           half=self.half_width(k), groups=self.groups, pads=same_pads(self.half_width(k), self.trims[k]),
                           padding_mode=self.padding_mode, path=path, mixed=mixed)

    def choose_path(self, x: torch.Tensor, k: int) -> str:
        """How branch k runs on ``x`` now: ``"dense"``, ``"basis_first"`` or ``"mix_first"`` (``auto``: timed once
        per call signature, the mix shared by the K branches counted once).

        Raises ``MemoryError`` naming the head when ``path="dense"`` and the filter cannot fit.
        """
        size = B.size_of(self.half_width(k))
        o, cg = self.alpha.shape[:2]
        if torch.compiler.is_compiling():
            return self.path if self.path in ("dense", "basis_first", "mix_first") else \
                compiled_path(self.path, o, cg, size, False)
        training = torch.is_grad_enabled() and (self.alpha.requires_grad or self.log_sigma.requires_grad)
        dense_ok = dense_fits(f"TiedNJetConv2d({self.in_channels}→{self.out_channels}) branch {k}", o, cg, size,
                              self.alpha.element_size(), self.alpha.device, training, strict=self.path == "dense")
        if self.path in ("dense", "basis_first", "mix_first"):
            return self.path
        training = training or x.requires_grad
        key = (tuple(x.shape), x.dtype, x.device, self.in_channels, self.out_channels, self.groups, size, self.order,
               self.trims[k], self.padding_mode, self.num_branches, training, self.path, torch.get_num_threads())
        plan = self._plans.get(k)
        if plan is not None and plan[0] == key:
            return plan[1]
        path = choose_branch_path(self, x, k, key, training, dense_ok)
        self._plans[k] = (key, path)
        return path

    def _mixed(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` mixed by α (:func:`~njetify.layers.factorised.mix`). Branches read the same input and
        share α, so the result is computed once per input and reused by the other branches of the same
        forward (kept until all K have used it, or the input, α, the grad mode or dtype changes)."""
        key = (x._version, self.alpha._version, self.alpha.data_ptr(), torch.is_grad_enabled(), _compute_dtype(x))
        cache = self._mix_cache
        if cache is not None and cache[0] is x and cache[1] == key:
            cache[3] -= 1
            if cache[3] <= 0:
                self._mix_cache = None
            return cache[2]
        m = mix(x, self.alpha, self.groups)
        self._mix_cache = [x, key, m, self.num_branches - 1] if self.num_branches > 1 else None
        return m

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {**state, "_mix_cache": None}  # never copy or pickle a cached activation

    def _apply(self, fn, *args, **kwargs):
        self._mix_cache = None
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        sig = ", ".join(f"{s:.3g}" for s in self.sigma.detach().tolist())
        sizes = ", ".join(str(self.kernel_size(k)[0]) for k in range(self.num_branches))
        s = f"{self.in_channels}, {self.out_channels}, branches={self.num_branches}, order={self.order}, "
        s += f"sigma=({sig}), size=({sizes})"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.max_size is not None:
            s += f", max_size={self.max_size}"
        if self.path != "auto":
            s += f", path={self.path!r}"
        return s

    # ------------------------------------------------------------- conversion
    @classmethod
    def from_convs(
        cls,
        convs: list[nn.Conv2d],
        order: int = 3,
        sigmas=None,
        extent: float = 2.0,
        *,
        inputs=None,
        **kwargs,
    ) -> TiedNJetConv2d:
        """Tie K convolutions that read the same input (DESIGN §5).

        σ_k = d_k·(k−1)/(2·extent) unless ``sigmas`` are given. α is the joint least-squares
        fit of all kernels, each on its own dense dilated grid; biases are copied. With ``inputs``
        (tensors ``(N, C_in, H, W)`` reaching the branches) α and the biases are then refitted so
        every branch's outputs match its conv's there (the calibration engine's output matching).
        Extra keyword arguments (``learn_sigma``, ``max_size``, ``path``) go to the constructor.

        Raises:
            ValueError: when a conv cannot be tied or the convs differ in channels, groups,
                bias or padding mode, or a conv is strided (the message names the difference).
        """
        convs = list(convs)
        check_tieable(convs)
        c0 = convs[0]
        if sigmas is None:
            sigmas = [sigma_from_kernel(c.kernel_size[0], c.dilation[0], extent) for c in convs]
        layer = cls(
            c0.in_channels, c0.out_channels, sigmas, order=order, extent=extent, groups=c0.groups,
            bias=c0.bias is not None, trims=[conv_trim(c) for c in convs], padding_mode=c0.padding_mode,
            device=c0.weight.device, dtype=c0.weight.dtype, **kwargs,
        )
        layer.fit_([c.weight for c in convs], [c.dilation[0] for c in convs])
        if c0.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(torch.stack([c.bias for c in convs]))
        if inputs is not None:
            tied_fit.fit_on_data(layer, convs, inputs)
        return layer

    @torch.no_grad()
    def fit_(self, weights, dilations) -> float:
        """Set α to the joint weight-space fit of K kernels ``(O, C/groups, k, k)`` with the given dilations.

        Stores ``fit_error`` (joint relative weight-space error) and
        ``branch_errors``; returns ``fit_error``.
        """
        if len(weights) != self.num_branches or len(dilations) != self.num_branches:
            raise ValueError(
                f"TiedNJetConv2d.fit_: got {len(weights)} kernels and {len(dilations)} dilations "
                f"for {self.num_branches} branches"
            )
        alpha, err, errs = tied_fit.fit_alpha(self, weights, dilations)
        self.alpha.copy_(alpha)
        self.fit_error, self.branch_errors = err, errs
        return err

    def to_convs(self) -> list[nn.Conv2d]:
        """K plain ``nn.Conv2d`` with the materialised filters (identical outputs), for deployment."""
        return [self.to_conv(k) for k in range(self.num_branches)]

    @torch.no_grad()
    def to_conv(self, k: int) -> nn.Conv2d:
        """Branch k as a plain ``nn.Conv2d`` with its materialised filter (identical outputs)."""
        w = self.filters(k).detach().clone()
        pad = (w.shape[-1] - 1) // 2 - self.trims[k]
        if pad < 0:
            raise ValueError(f"TiedNJetConv2d.to_conv: branch {k} filter is smaller than its trim")
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, w.shape[-1], padding=pad, groups=self.groups,
            bias=self.bias is not None, padding_mode=self.padding_mode, device=w.device, dtype=w.dtype,
        )
        conv.weight.copy_(w)
        if self.bias is not None:
            conv.bias.copy_(self.bias[k])
        return conv

    @torch.no_grad()
    def to_factorised(self, k: int, order: str = "basis_first", reason: str = "") -> FactorisedConv2d:
        """Branch k as a :class:`FactorisedConv2d` (same outputs, no σ, no dense filter)."""
        return FactorisedConv2d(self.basis_1d(k), self.alpha, None if self.bias is None else self.bias[k],
                                groups=self.groups, trim=self.trims[k], padding_mode=self.padding_mode, order=order,
                                reason=reason)

