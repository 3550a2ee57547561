"""Filter sizes of σ layers, decided on the host and outside any compiled graph (DESIGN §7).

A filter's size ``s = 2⌈extent·σ⌉ + 1`` is a discrete function of a learned value. Reading σ
on the host inside a forward would break a ``torch.compile`` graph (and cannot happen at all
under ``torch.export``), so every σ layer keeps its half-widths as plain Python ints in a
:class:`FilterSizes`:

* eager forwards refresh them when the σ parameter's version counter moved (one host read
  per σ update, not per forward);
* after every optimiser step a global hook (:func:`torch.optim.optimizer.register_optimizer_step_post_hook`)
  refreshes every live σ layer with one batched host read;
* compiled and exported forwards only read the ints: the graph sees static shapes, and
  dynamo's guard on the int recompiles the graph exactly when a size changes — logged on the
  ``njetify.sizes`` logger. The first change also gives dynamo room for such recompiles
  (``recompile_limit`` raised to :data:`RECOMPILE_LIMIT`), so a compiled model never falls
  back to eager silently because its filters grew.

After editing σ by hand and before compiling or exporting, call :func:`refresh_sizes`.

A learned σ below :data:`MIN_USEFUL_SIGMA` cannot learn: its gradient vanishes (a
:class:`SmallSigmaWarning`, once per layer, when such a σ is built, loaded or reached).
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
import weakref

import torch
from torch import nn

from .. import basis as B

log = logging.getLogger("njetify.sizes")

#: σ above this many pixels is refused (a filter of 2·⌈2σ⌉+1 px per side could not be built).
MAX_SIGMA = 1e4
#: The recompile limit njetify asks dynamo for once a filter size has changed.
RECOMPILE_LIMIT = 64

_LIVE: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()
_PLANNED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


class SmallSigmaWarning(UserWarning):
    """A learned σ so small that its gradient vanishes: it cannot grow back by training."""


#: The smallest σ (pixels) that can learn: √(1 / (2·ln 2²³)) = 0.177 px. Below it a neighbouring pixel's
#: Gaussian weight exp(−1/(2σ²)) is under float32's resolution (2⁻²³) of the centre's, the filter is
#: numerically a delta, and σ's gradient is under 10⁻⁵ of α's in any dtype, about 10× less per 0.01 px
#: (float32 and float64 alike; exactly 0 in float32 below 0.068 px): measured by
#: benchmarks/small_sigma_gradient.py and tests/test_library_faults.py.
MIN_USEFUL_SIGMA = math.sqrt(1.0 / (2.0 * 23 * math.log(2.0)))


def small_sigma_message(layers: list[tuple[str, float]]) -> str:
    """The warning for ``layers`` ``[(name, σ), ...]`` whose learned σ is below :data:`MIN_USEFUL_SIGMA`."""
    names = ", ".join(f"{name} (σ={sigma:.3g})" for name, sigma in layers[:5]) + (" ..." if len(layers) > 5 else "")
    return (f"{names}: σ below {MIN_USEFUL_SIGMA:.3g} px, where σ's gradient vanishes (under 1e-5 of α's; a "
            f"neighbouring pixel's weight exp(-1/(2σ²)) is below float32 resolution): training cannot move σ. Start "
            f"from σ ≥ {MIN_USEFUL_SIGMA:.3g} px (e.g. the kernel rule (k-1)/4) or freeze σ (learn_sigma=False)")


class FilterSizes:
    """The half-widths ``h`` (filter size ``2h+1``) of one σ layer, one per σ group.

    ``groups`` says how σ entries map to filters: ``"max"`` — one filter from the largest σ
    (an N-Jet layer, per-channel σ materialised at the largest support); ``"each"`` — one
    filter per σ entry (the branches of a tied head).
    """

    def __init__(self, what: str, groups: str = "max"):
        self.what, self.groups = what, groups
        self.halves: tuple[int, ...] = (1,)
        self.capped: tuple[bool, ...] = (False,)
        self._key: tuple | None = None
        self._fresh = True  # never read yet: the first read is not a change
        self._warned: set[int] = set()
        self._warned_small = False
        self._pending: list = []  # messages (str) and warnings found while the layer was built
        #: Who set the cap when it is not the user's ``max_size`` (e.g. the cost budget): hitting it is
        #: then expected and only logged on ``njetify.sizes``.
        self.cap_note: str | None = None

    def current(self, log_sigma: torch.Tensor, extent: float, max_size: int | None) -> tuple[int, ...]:
        """The half-widths now; refreshed from ``log_sigma`` when it changed (never while compiling)."""
        if torch.compiler.is_compiling():
            return self.halves
        if self._key != _key(log_sigma, extent, max_size):
            self.refresh(log_sigma, extent, max_size)
        while self._pending:  # caps found while the layer was built: warned at its first use
            warnings.warn(self._pending.pop(0), stacklevel=3)
        return self.halves

    def refresh(self, log_sigma: torch.Tensor, extent: float, max_size: int | None,
                values: list[float] | None = None, quiet: bool = False) -> bool:
        """Recompute the half-widths from σ (``values``: log σ already read on the host); True if one changed."""
        logs = log_sigma.detach().reshape(-1).tolist() if values is None else values
        sigmas = [max(logs)] if self.groups == "max" else logs
        self._check_small(log_sigma, logs, quiet)
        cap = None if max_size is None else max(0, (max_size - 1) // 2)
        halves, capped = [], []
        for k, ls in enumerate(sigmas):
            sigma = math.exp(min(ls, 700.0)) if ls == ls else float("nan")
            if not sigma < MAX_SIGMA:
                raise ValueError(f"{self.what}: σ is {sigma:.4g} px (log σ = {ls:.4g}); a filter that large cannot be "
                                 f"built (σ must be finite and below {MAX_SIGMA:g} px). Training diverged or σ was set "
                                 "by hand: lower the σ learning rate, or set max_size and a sane σ")
            half = B.half_width(sigma, extent)
            hit = cap is not None and half > cap
            if hit and k not in self._warned and self.cap_note:
                log.info("%s: filter of σ=%.3g needs %d px; capped at %d px by %s", self.what, sigma, B.size_of(half),
                         2 * cap + 1, self.cap_note)
                self._warned.add(k)
            elif hit and k not in self._warned:
                msg = (f"{self.what}: filter of σ={sigma:.3g} needs {B.size_of(half)} px; capped at "
                       f"max_size={max_size} (set a larger max_size to lift the cap)")
                if quiet:
                    self._pending.append(msg)
                else:
                    warnings.warn(msg, stacklevel=4)
                self._warned.add(k)
            halves.append(cap if hit else half)
            capped.append(hit)
        first = self._key is None and self._fresh
        old, self.halves, self.capped = self.halves, tuple(halves), tuple(capped)
        self._key, self._fresh = _key(log_sigma, extent, max_size), False
        changed = old != self.halves
        if changed and not first:
            _note_change(self.what, old, self.halves)
        return changed

    def _check_small(self, log_sigma: torch.Tensor, logs: list[float], quiet: bool = False) -> None:
        """Warn once when a learned σ is below :data:`MIN_USEFUL_SIGMA` (its gradient vanishes); ``quiet``
        (the layer is being built): at its first use, when it knows its path."""
        if self._warned_small or not log_sigma.requires_grad or not logs:
            return
        smallest = min(logs)
        if smallest < math.log(MIN_USEFUL_SIGMA):  # False for NaN
            self._warned_small = True
            sigma = math.exp(max(smallest, -700.0))
            warning = SmallSigmaWarning(small_sigma_message([(self.what, sigma)]))
            if quiet:
                self._pending.append(warning)
            else:
                warnings.warn(warning, stacklevel=4)

    def invalidate(self) -> None:
        """Forget the last read (after σ was replaced, moved or loaded)."""
        self._key = None


def _key(log_sigma: torch.Tensor, extent: float, max_size: int | None) -> tuple:
    return (id(log_sigma), log_sigma._version, log_sigma.device, extent, max_size)


_raised_limit = False


def _note_change(what: str, old: tuple[int, ...], new: tuple[int, ...]) -> None:
    """Log a size change and make sure dynamo may recompile for it."""
    global _raised_limit
    sizes = lambda hs: "/".join(str(B.size_of(h)) for h in hs)  # noqa: E731
    log.info("%s: filter size %s → %s px; a compiled model recompiles once for it", what, sizes(old), sizes(new))
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is None or _raised_limit:
        return
    config = dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    if getattr(config, name) < RECOMPILE_LIMIT:
        setattr(config, name, RECOMPILE_LIMIT)
        log.info("raised torch._dynamo.config.%s to %d: each filter-size change recompiles a compiled model",
                 name, RECOMPILE_LIMIT)
    _raised_limit = True


def label_sizes(model: nn.Module, prefix: str = "") -> None:
    """Name every σ layer of ``model`` (at ``prefix`` in a larger model) by its path in its size messages
    (caps, changes, errors), warnings still pending from its construction included:
    ``"layer1.0.conv1 (NJetConv2d(16→16))"``."""
    for path, m in model.named_modules():
        full = ".".join(p for p in (prefix, path) if p)
        sizes = getattr(m, "_filter_sizes", None)
        if not full or not isinstance(sizes, FilterSizes):
            continue
        base = sizes.what.split(" (", 1)[1][:-1] if sizes.what.endswith(")") and " (" in sizes.what else sizes.what
        new = f"{full} ({base})"
        sizes._pending = [type(w)(str(w).replace(sizes.what, new, 1)) if isinstance(w, Warning)
                          else w.replace(sizes.what, new, 1) for w in sizes._pending]
        sizes.what = new


def track(module: nn.Module) -> None:
    """Register a σ layer (with a ``refresh_sizes()`` method and ``log_sigma``) for the optimiser hook."""
    _LIVE.add(module)
    _install_hook()


def track_plans(module: nn.Module) -> None:
    """Register a learned subsampling (with ``source`` and ``refresh_plans()``): its map sizes and picks are
    remade on the host after each optimiser step that trains its source's σ (``subsample_plan``)."""
    _PLANNED.add(module)
    _install_hook()


def refresh_sizes(model: nn.Module | None = None) -> int:
    """Re-read σ of every σ layer in ``model`` (all live ones when None), and remake the map-size plans of
    its learned subsamplings; returns how many filter sizes changed.

    One batched host read for the filters. Call it after setting σ by hand, before ``torch.compile`` or
    ``torch.export`` sees the model; optimiser steps call it by themselves.
    """
    mods = list(_LIVE if model is None else model.modules())
    changed = _refresh([m for m in mods if hasattr(m, "_filter_sizes")])
    _refresh_plans([m for m in (_PLANNED if model is None else mods) if hasattr(m, "refresh_plans")])
    return changed


def _refresh_plans(subsamplings) -> None:
    if torch.compiler.is_compiling():
        return
    for m in list(subsamplings):
        m.refresh_plans()


def _refresh(mods: list[nn.Module]) -> int:
    if not mods or torch.compiler.is_compiling():
        return 0
    params = [m.log_sigma.detach().reshape(-1) for m in mods]
    values = _host_values(params)
    changed, start = 0, 0
    for m, p in zip(mods, params):
        n = p.numel()
        try:
            changed += bool(m._filter_sizes.refresh(m.log_sigma, m.extent, m.max_size, values[start : start + n]))
        except ValueError:  # an absurd σ: the layer's next forward raises, naming it
            m._filter_sizes.invalidate()
        start += n
    return changed


def _host_values(params: list[torch.Tensor]) -> list[float]:
    """All values of ``params`` on the host: one transfer per device."""
    by_device: dict[torch.device, list[int]] = {}
    for i, p in enumerate(params):
        by_device.setdefault(p.device, []).append(i)
    out: list[list[float]] = [[] for _ in params]
    for idx in by_device.values():
        flat = torch.cat([params[i].float() for i in idx]).tolist()
        start = 0
        for i in idx:
            out[i] = flat[start : start + params[i].numel()]
            start += params[i].numel()
    return [v for vals in out for v in vals]


_hook_handle = None


def _install_hook() -> None:
    global _hook_handle
    if _hook_handle is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        _hook_handle = register_optimizer_step_post_hook(_after_step)


def _after_step(optimizer, args, kwargs) -> None:
    """Optimiser step post hook: refresh the sizes of the live σ layers this optimiser trains."""
    if torch.compiler.is_compiling() or not _LIVE:
        return
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    mods = [m for m in list(_LIVE) if id(m.log_sigma) in trained]
    _refresh(mods)
    _refresh_plans([s for s in list(_PLANNED) if s.source is not None and id(s.source.scale_parameter()) in trained])


class HostSizes:
    """Mixin of a σ layer whose :class:`FilterSizes` lives in ``_filter_sizes`` (with ``log_sigma``,
    ``extent`` and ``max_size``): refresh after loading, forget after moving, track after unpickling."""

    @property
    def sigma(self) -> torch.Tensor:
        """Current σ in pixels, ``exp(log_sigma)`` (one per layer, per channel, per branch or per axis)."""
        return self.log_sigma.exp()

    def scale_parameter(self) -> nn.Parameter:
        """The log-σ parameter this layer reads (``log_sigma``)."""
        return self.log_sigma

    def _start_sizes(self, what: str, groups: str) -> None:
        """Create the :class:`FilterSizes` (read once, cap warnings deferred to first use) and track the layer."""
        self._filter_sizes = FilterSizes(what, groups)
        self._filter_sizes.refresh(self.log_sigma, self.extent, self.max_size, quiet=True)
        track(self)

    def current_halves(self) -> tuple[tuple[int, ...], tuple[bool, ...]]:
        """Half-width of every filter at the current σ (after the ``max_size`` cap; host-side ints), and
        whether the cap cut each (the cached tuples: nothing is copied)."""
        halves = self._filter_sizes.current(self.log_sigma, self.extent, self.max_size)
        return halves, self._filter_sizes.capped

    def refresh_sizes(self) -> bool:
        """Re-read σ on the host now (after editing it by hand); True when a filter size changed."""
        return self._filter_sizes.refresh(self.log_sigma, self.extent, self.max_size)

    def _apply(self, fn, *args, **kwargs):
        self._filter_sizes.invalidate()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.refresh_sizes()  # sizes right away: a compile or export may come before any eager forward

    def __setstate__(self, state):
        super().__setstate__(state)
        track(self)
