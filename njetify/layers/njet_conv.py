"""NJetConv2d: a convolution whose filter is a learned combination of
Gaussian-derivative basis filters at a learned scale σ that also sets its size."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from .. import basis as B
from ..options import SIGMA_PER
from ._fx import as_traced_leaf
from . import njet_convert as convert
from .factorised_conv import FactorisedConv2d
from .functional import njet_conv2d, njet_filter, same_pads
from .padding import tf_same_pads
from .path_choice import choose_path, compiled_path
from .path_cost import PATHS, dense_fits
from .protocol import SigmaModule
from .safe_subsample import strided_pick
from .sizes import FilterSizes, HostSizes, track
from ._checks import check_choice, check_layer, check_positive

PADDINGS = ("same", "dynamic_same")


class NJetConv2d(HostSizes, SigmaModule):
    """2-D N-Jet convolution (Pintea et al., TIP 2021).

    ``W[o, c] = Σ_f α[o, c, f] · B_f(σ)`` with B the basis of
    :func:`njetify.basis.gaussian_basis_2d`; the filter is ``s × s`` with
    ``s = 2·⌈extent·σ⌉ + 1`` pixels, recomputed every forward from the current σ.

    Args:
        in_channels, out_channels, groups, stride, bias: as in ``nn.Conv2d``.
        order: highest total derivative order N (``0 ≤ N ≤ MAX_ORDER``); F = (N+1)(N+2)/2.
        sigma: initial scale in pixels (> 0).
        extent: filter half-width in units of σ.
        learn_sigma: σ is trained (else stays fixed; still saved in the state_dict).
        sigma_per: ``"layer"`` (one σ, the paper) or ``"channel"`` (one σ per output channel;
            filters materialised at the largest support).
        max_size: cap on the filter size in pixels (the largest odd number ≤ max_size is used);
            hitting it sets ``size_capped`` and warns once.
        padding_mode: ``"zeros" | "reflect" | "replicate" | "circular"``.
        padding: ``"same"`` (symmetric, output = ⌈input/stride⌉) or ``"dynamic_same"`` (TensorFlow
            "SAME": asymmetric, computed from the input size, as timm's ``Conv2dSame``).
        trim: pixels per side by which the output is smaller than "same" (a converted
            ``padding=0`` 3×3 conv has trim 1); negative for extra padding.
        path: how forward runs: ``"auto"`` (the fastest of dense and factorised, timed on the
            first call of each call signature: :mod:`njetify.layers.path_plan`), ``"dense"``
            (materialise the s×s filter), ``"factorised"`` (the faster of the separable orders,
            never forms the filter), or an order by name (``"basis_first"``, ``"mix_first"``).
            All give the same outputs and gradients. ``last_path`` holds the way the last
            eager forward ran.

    The filter size is decided on the host, outside any compiled graph
    (:mod:`njetify.layers.sizes`): the layer compiles with ``torch.compile`` without graph
    breaks and exports with ``torch.export``. :attr:`weight` is the current filter, read-only.

    A converted strided layer runs at stride 1 and carries its safe-subsampling as the
    ``subsample`` child (a :class:`~njetify.layers.SafeSubsample`, None otherwise), applied
    to the output.

    Shapes: input ``(N, in_channels, H, W)`` → output ``(N, out_channels, H', W')``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        order: int = 3,
        sigma: float | Iterable[float] = 1.0,
        extent: float = 2.0,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
        learn_sigma: bool = True,
        sigma_per: str = "layer",
        max_size: int | None = None,
        padding_mode: str = "zeros",
        *,
        padding: str = "same",
        trim: int = 0,
        path: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_layer(order, in_channels, out_channels, groups, extent, padding_mode)
        check_choice("sigma_per", sigma_per, SIGMA_PER)
        check_choice("padding", padding, PADDINGS)
        check_choice("path", path, PATHS)
        if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
            raise ValueError(f"NJetConv2d: stride must be a positive int, got {stride!r}")
        if max_size is not None and (not isinstance(max_size, int) or max_size < 1):
            raise ValueError(f"NJetConv2d: max_size must be a positive int or None, got {max_size!r}")
        n_sigma = out_channels if sigma_per == "channel" else 1
        try:
            sig = torch.as_tensor(sigma, dtype=torch.float64).flatten()
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"NJetConv2d: sigma must be a positive number or a list of them, got {sigma!r}") from None
        if sig.numel() == 1:
            sig = sig.expand(n_sigma)
        if sig.numel() != n_sigma:
            raise ValueError(
                f"NJetConv2d: sigma has {sig.numel()} values; sigma_per={sigma_per!r} needs {n_sigma}"
            )
        for v in sig.tolist():
            check_positive("sigma", v)

        self.in_channels, self.out_channels = in_channels, out_channels
        self.order, self.extent, self.stride, self.groups = order, float(extent), stride, groups
        self.sigma_per, self.max_size, self.padding_mode = sigma_per, max_size, padding_mode
        self.padding, self.trim = padding, int(trim)
        self.path, self.last_path = path, None
        self._plan: tuple | None = None  # (call signature, path) of the last auto decision
        self.learn_sigma = learn_sigma
        self.fit_error: float | None = None
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        nf = B.num_basis(order)
        self.alpha = nn.Parameter(torch.empty(out_channels, in_channels // groups, nf, **factory))
        self.log_sigma = nn.Parameter(sig.log().to(**factory), requires_grad=learn_sigma)
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self._cache: tuple[tuple, torch.Tensor] | None = None
        self._filter_sizes = FilterSizes(f"NJetConv2d({in_channels}→{out_channels})", "max")
        self.subsample: nn.Module | None = None
        self.reset_parameters()
        self._filter_sizes.refresh(self.log_sigma, self.extent, self.max_size, quiet=True)
        track(self)

    # ------------------------------------------------------------------ state
    def reset_parameters(self) -> None:
        """He-style init of α (fan-in over in/groups·F), bias like ``nn.Conv2d``."""
        fan_in = self.alpha.shape[1] * self.alpha.shape[2]
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.alpha, -math.sqrt(3.0) * bound, math.sqrt(3.0) * bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def half_width(self) -> int:
        """Current half-width h of the filter (size 2h+1), after the ``max_size`` cap (a host-side int)."""
        return self.current_halves()[0][0]

    @property
    def size_capped(self) -> bool:
        """Whether ``max_size`` cut the filter σ asks for."""
        return self.current_halves()[1][0]

    @property
    def weight(self) -> torch.Tensor:
        """The current filter ``(out_channels, in_channels/groups, s, s)``, read-only: computed from α and σ
        (:meth:`filters`) for tools that read ``module.weight``; writing to it changes nothing."""
        return self.filters()

    @property
    def kernel_size(self) -> tuple[int, int]:
        """Current filter size ``(s, s)`` in pixels."""
        s = B.size_of(self.half_width)
        return (s, s)

    def basis(self) -> torch.Tensor:
        """The basis at the current σ: ``(F, s, s)`` per layer, ``(O, F, s, s)`` per channel."""
        return B.gaussian_basis_2d(self._sigma_arg(), self.order, self.half_width)

    def basis_1d(self) -> torch.Tensor:
        """1-D Gaussian derivatives at the current σ: ``(N+1, s)`` per layer, ``(O, N+1, s)`` per channel."""
        return B.gaussian_derivatives_1d(self._sigma_arg(), self.order, self.half_width)

    def _sigma_arg(self) -> torch.Tensor:
        return self.sigma[0] if self.sigma_per == "layer" else self.sigma

    def describe(self) -> dict:
        """Summary row (:meth:`SigmaModule.describe`): ``N-Jet N=order`` and the stride."""
        info = super().describe()
        info.update(op=f"N-Jet N={self.order}" + (f" s{self.stride}" if self.stride > 1 else ""), stride=self.stride)
        return info

    def basis_images(self) -> tuple[torch.Tensor, list[str]]:
        """The Gaussian-derivative basis at σ (the first channel's for one σ per channel), labels ``Gij``."""
        from ..basis import basis_orders

        b = self.basis()
        return (b[0] if b.dim() == 4 else b), [f"G{i}{j}" for i, j in basis_orders(self.order)]

    def filters(self) -> torch.Tensor:
        """Materialised weight ``(out_channels, in_channels/groups, s, s)``; cached in eval mode."""
        if torch.compiler.is_compiling():
            return self._build_filters()
        if self.training or (torch.is_grad_enabled() and self._needs_grad()):
            self._cache = None
            return self._build_filters()
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self._build_filters())
        return self._cache[1]

    def _needs_grad(self) -> bool:
        return self.alpha.requires_grad or self.log_sigma.requires_grad

    def _cache_key(self) -> tuple:
        a, s = self.alpha, self.log_sigma
        return (a._version, a.data_ptr(), a.dtype, s._version, s.data_ptr(), self.half_width)

    def _build_filters(self) -> torch.Tensor:
        return njet_filter(self.alpha, self._sigma_arg(), self.half_width)

    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._cache = None
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache = None
        super()._load_from_state_dict(*args, **kwargs)

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W)`` → ``(N, C_out, H', W')``, dense or factorised (see ``path``); unbatched works too.

        A carried ``subsample`` is applied to the output.
        """
        leaf = as_traced_leaf(self, x)
        if leaf is not None:
            return leaf
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        k = self._picked_stride(x)
        if k is not None:  # the subsampling picks every k-th pixel: the same output at stride k
            out = self.subsample.already_picked(self.convolve(x, stride=k))
        else:
            out = self.convolve(x)
            if self.subsample is not None:
                out = self.subsample(out)
        return out.squeeze(0) if unbatched else out

    def _picked_stride(self, x: torch.Tensor) -> int | None:
        """``k`` when the carried subsampling keeps exactly every k-th pixel of this layer's output
        (:func:`~njetify.layers.safe_subsample.strided_pick`; inside a graph the host's answer), else None."""
        if self.subsample is None or self.stride != 1 or x.dim() != 4:
            return None
        size = B.size_of(self.half_width)
        left, right, top, bottom = self._pads(x.shape[-2:], size)
        return strided_pick(self.subsample, x.shape[-2] + top + bottom - size + 1, x.shape[-1] + left + right - size + 1,
                            x.device)

    def convolve(self, x: torch.Tensor, stride: int | None = None) -> torch.Tensor:
        """The N-Jet convolution alone, without the carried subsampling: ``(N, C_in, H, W)`` →
        ``(N, C_out, H', W')`` at ``stride`` (default: the layer's), dense or factorised (see ``path``)."""
        stride = self.stride if stride is None else stride
        half = self.half_width
        pads = self._pads(x.shape[-2:], B.size_of(half))
        path = self.choose_path(x, stride)
        if path == "dense" and not torch.compiler.is_compiling():
            self._dense_fits(B.size_of(half), torch.is_grad_enabled() and self._needs_grad(), strict=True)
        out = self._run(x, path, half, pads, stride)
        if not torch.compiler.is_compiling():
            self.last_path = path
        return out

    def _run(self, x: torch.Tensor, path: str, half: int, pads: list[int], stride: int | None = None) -> torch.Tensor:
        weight = self.filters() if path == "dense" else None
        return njet_conv2d(x, self.alpha, self._sigma_arg(), self.bias, half=half,
                           stride=self.stride if stride is None else stride, groups=self.groups, pads=pads,
                           padding_mode=self.padding_mode, path=path, weight=weight)

    def choose_path(self, x: torch.Tensor, stride: int | None = None) -> str:
        """``"dense"``, ``"basis_first"`` or ``"mix_first"``: how a forward on ``x`` runs now.

        ``auto`` and ``factorised`` time their candidates on the first eager call of each call
        signature (:mod:`njetify.layers.path_choice`); inside a compiled graph the choice is static.
        """
        if self.path == "basis_first" and self.sigma_per == "channel":
            raise ValueError(f"{self._name()}: path='basis_first' needs one σ for all outputs (sigma_per='layer'); "
                             "use path='mix_first' or 'factorised'")
        if self.path in ("dense", "basis_first", "mix_first"):
            return self.path
        size = B.size_of(self.half_width)
        if torch.compiler.is_compiling():
            return compiled_path(self.path, self.out_channels, self.in_channels // self.groups, size,
                                 self.sigma_per == "channel")
        training = torch.is_grad_enabled() and (self._needs_grad() or x.requires_grad)
        pads = self._pads(x.shape[-2:], size)
        stride = self.stride if stride is None else stride
        key = (tuple(x.shape), x.dtype, x.device, self.in_channels, self.out_channels, self.groups, size,
               self.order, stride, tuple(pads), self.padding_mode, self.sigma_per, training, self.path,
               torch.get_num_threads())
        if self._plan is not None and self._plan[0] == key:  # same call as last time: same answer
            return self._plan[1]
        path = choose_path(self, x, key, training, pads, self._dense_fits(size, training), stride)
        self._plan = (key, path)
        return path

    def _name(self) -> str:
        return f"NJetConv2d({self.in_channels}→{self.out_channels}, size {self.kernel_size[0]})"

    def _dense_fits(self, size: int, training: bool, *, strict: bool = False) -> bool:
        """Whether the dense ``size×size`` filter fits in memory (``strict``: raise ``MemoryError`` if not)."""
        return dense_fits(lambda: repr(self).replace("\n", " "), self.out_channels, self.in_channels // self.groups,
                          size, self.alpha.element_size(), self.alpha.device, training, strict=strict)

    def _pads(self, hw, size: int) -> list[int]:
        """Padding (left, right, top, bottom) for the current filter size."""
        if self.padding == "same":
            return same_pads((size - 1) // 2, self.trim)
        return tf_same_pads(hw[0], hw[1], size, self.stride)

    def extra_repr(self) -> str:
        sig = self.sigma.detach()
        sig_txt = f"{sig.item():.3g}" if sig.numel() == 1 else f"{sig.min():.3g}..{sig.max():.3g}"
        s = [
            f"{self.in_channels}, {self.out_channels}, order={self.order}, sigma={sig_txt}",
            f"size={self.kernel_size[0]}",
        ]
        if self.stride != 1:
            s.append(f"stride={self.stride}")
        if self.groups != 1:
            s.append(f"groups={self.groups}")
        if self.bias is None:
            s.append("bias=False")
        if self.sigma_per != "layer":
            s.append(f"sigma_per={self.sigma_per!r}")
        if not self.learn_sigma:
            s.append("learn_sigma=False")
        if self.max_size is not None:
            s.append(f"max_size={self.max_size}")
        if self.padding != "same" or self.trim:
            s.append(f"padding={self.padding!r}, trim={self.trim}")
        if self.padding_mode != "zeros":
            s.append(f"padding_mode={self.padding_mode!r}")
        if self.path != "auto":
            s.append(f"path={self.path!r}")
        return ", ".join(s)

    # ------------------------------------------------------------- conversion
    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, order: int = 3, sigma: float | None = None, extent: float = 2.0, *,
        inputs: torch.Tensor | Iterable[torch.Tensor] | None = None, stride: int | None = None, **kwargs,
    ) -> "NJetConv2d":
        """Build an N-Jet layer that approximates ``conv`` (DESIGN §3).

        σ₀ = d·(k−1)/(2·extent) when ``sigma`` is None. α is the least-squares fit to the conv's
        weights (its relative error in ``.fit_error``); with ``inputs`` (tensors ``(N, C_in, H, W)``
        reaching the conv) α and the bias are then refitted to the conv's outputs there
        (:mod:`njetify.calibration.on_inputs`). ``stride`` overrides the conv's stride (the surgery
        sets 1 and resizes afterwards). Other keyword arguments go to the constructor.
        """
        args = convert.layer_args(conv, order, sigma, extent, stride)
        layer = cls(**args, device=conv.weight.device, dtype=conv.weight.dtype, **kwargs)
        convert.fitted_from(layer, conv, dilation=conv.dilation[0])
        return layer if inputs is None else convert.fit_on_data(layer, conv, inputs)

    @torch.no_grad()
    def fit_(self, kernel: torch.Tensor, *, dilation: int = 1) -> float:
        """Set α to the least-squares fit of kernels ``(O, C/groups, k, k)`` (dilation d) at the current σ.

        The kernel is used at its k² taps (never spread on its dense dilated grid). Returns and
        stores the relative weight-space error.
        """
        alpha, err = convert.fit_alpha(self, kernel, dilation)
        self.alpha.copy_(alpha)
        self.fit_error = err
        return err

    def to_conv(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` with the materialised filter: identical outputs, for deployment.

        ``padding="dynamic_same"`` layers become a :class:`Conv2dDynamicSame` (TF "SAME"
        padding from the input size, as timm's ``Conv2dSame``).
        """
        self._dense_fits(self.kernel_size[0], False, strict=True)
        return convert.dense_conv(self)

    def to_factorised(self, order: str | None = None, reason: str = "") -> FactorisedConv2d:
        """A :class:`FactorisedConv2d` with the current filters: same outputs, no σ and no s×s filter.

        ``order``: ``"basis_first"`` or ``"mix_first"``; None picks the one with fewer multiply-adds
        (mix-first with one σ per output channel).
        """
        return convert.factorised_conv(self, order, reason)

    def baked(self) -> nn.Module:
        """The layer without σ: :meth:`to_conv`, or :meth:`to_factorised` where that is faster
        (:mod:`~njetify.layers.bake_form`); a carried safe-subsampling follows, frozen at its current
        factor (a strided conv where it keeps every k-th pixel)."""
        return convert.baked(self)

