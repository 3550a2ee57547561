"""A cost budget: how many multiply-accumulates a converted network may spend.

A σ layer's filter is ``s × s`` with ``s = 2⌈extent·σ⌉ + 1``, so its cost follows σ: a 3×3 conv
converted at σ₀ = 0.5 costs what it did, at σ = 0.6 (5×5) 25/9 of it. A *budget* ``B`` says the
converted network may cost at most ``B ×`` the original's MACs at the input size it was converted
for (one sample; a filter tap counts as in a dense conv, whatever path runs it).

njetify keeps it by **size caps chosen per layer**: every σ layer gets a largest filter size
(its ``max_size``), planned once at conversion so that the network costs at most ``B ×`` the
original even with *every* filter at its cap (a tied head: every branch at the cap). σ keeps
learning freely; a filter whose σ asks for more than its cap is cut at the cap (a truncated
Gaussian derivative, as with ``max_size``). In safe mode a budget also keeps every
safe-subsampling from subsampling *less* than at conversion, so no feature map grows past
the original network's. The budget therefore holds at every step of fine-tuning, not on average.

Caps are planned in two steps: every layer gets the same largest size (the largest odd side that
fits the budget with every layer there, never below a layer's size at conversion nor above its
``max_size``); what is left lets the cheapest layers (on small maps, deep in the network) grow one
size more, cheapest first. A larger budget never gives a layer a smaller cap. The smallest budget a conversion can reach
is every filter at its size at conversion (about 1.0 × for 3×3 networks); a lower one is a
:class:`BudgetError` naming that minimum.

:func:`measure_costs` builds the :class:`CostTable` (the pass ``budget`` attaches it to the
model as ``model.njetify_costs``); :func:`macs_now` reads the current cost from it without a
forward pass (the training history records it every step).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .basis import size_of
from .inputs import call_model
from .layers import SafeSubsample, sigma_layers
from .layers.safe_subsample import full_resolution
from .modes import evaluating
from .summary.trace import MacCounter

__all__ = ["BUDGET_ATTR", "BudgetError", "CostTable", "LayerCost", "apply_budget", "cost_meta", "macs_now", "measure_costs",
           "plan_caps", "set_budget"]

#: Attribute of a converted model that holds its :class:`CostTable`.
BUDGET_ATTR = "njetify_costs"
#: A conversion that grows the MACs by more than this fraction without a budget gets a warning.
GROWTH_WARNING = 0.2


class BudgetError(ValueError):
    """A budget the conversion cannot meet (below the cost of every filter at its conversion size)."""


@dataclass
class LayerCost:
    """One σ layer's cost at the conversion's input size (one sample).

    ``taps``: MACs per filter tap (``output pixels · C_out · C_in/groups``, so a branch with an
    ``s_y × s_x`` filter costs ``taps · s_y · s_x``); ``sides``: ``(s_y, s_x)`` per branch at
    conversion (px; a tied head has several branches, a 1×k per-axis layer a side of 1 that never
    grows); ``cap``: the largest side the budget allows (None: no budget cap); ``limit``: the
    layer's own ``max_size`` before any budget (px, None: none)."""

    path: str
    taps: float
    sides: tuple[tuple[int, int], ...]
    cap: int | None = None
    limit: int | None = None

    def macs(self, sides: tuple[tuple[int, int], ...] | None = None) -> float:
        """MACs at ``sides`` (default: at conversion), each cut at ``cap``."""
        sides = self.sides if sides is None else sides
        return self.taps * sum(math.prod(min(s, self.cap or s) for s in branch) for branch in sides)

    def worst(self, cap: int) -> float:
        """MACs with every branch at ``cap`` along every axis that has an extent (what a budget must allow)."""
        return self.taps * sum(math.prod(cap if s > 1 else 1 for s in branch) for branch in self.sides)

    @property
    def widest(self) -> int:
        """The largest side at conversion (px): no cap goes below it."""
        return max(max(branch) for branch in self.sides)


@dataclass
class CostTable:
    """MACs of a converted model at its conversion input size, per sample.

    ``original``: the unconverted model's; ``fixed``: everything outside σ layers (1×1 convs,
    linear layers, …) in the converted model; ``layers``: the σ layers; ``budget``: the multiple
    of ``original`` the model may cost (None: no budget)."""

    input_shape: tuple[int, ...]
    original: float
    fixed: float
    layers: list[LayerCost] = field(default_factory=list)
    budget: float | None = None

    @property
    def at_conversion(self) -> float:
        """MACs with every filter at its conversion size."""
        return self.fixed + sum(layer.macs() for layer in self.layers)

    @property
    def minimum(self) -> float:
        """The smallest budget this conversion can meet (× the original): every filter at its size at
        conversion (a tied head: every branch at its widest branch's size)."""
        return self._ratio(self.fixed + sum(layer.worst(layer.widest) for layer in self.layers))

    @property
    def ceiling(self) -> float | None:
        """The budget's worst case (every filter at its cap) ÷ the original (None without caps)."""
        if self.budget is None:
            return None
        return self._ratio(self.fixed + sum(layer.worst(layer.cap or layer.widest) for layer in self.layers))

    def macs(self, model: nn.Module) -> float:
        """MACs of ``model`` now (its current filter sizes, the conversion's feature-map sizes)."""
        total = self.fixed
        for layer, m in zip(self.layers, self._modules(model)):
            if m is not None and hasattr(m, "_filter_sizes"):
                total += layer.macs(_sides(m))
            elif isinstance(m, nn.modules.conv._ConvNd):  # reverted to its original conv by the fidelity gate
                total += layer.taps * math.prod(m.kernel_size)
            else:
                total += layer.macs()
        return total

    def _modules(self, model: nn.Module) -> list[nn.Module | None]:
        """The module at each layer's path (looked up once per model and module tree; ``macs`` runs every step)."""
        key = (id(model), len(model._modules), tuple(id(m) for m in model._modules.values()))
        if getattr(self, "_mods", (None,))[0] != key:
            mods = dict(model.named_modules())
            self._mods = (key, [mods.get(layer.path) for layer in self.layers])
        return self._mods[1]

    def _ratio(self, macs: float) -> float:
        return macs / self.original if self.original else math.inf


def _sides(module: nn.Module) -> tuple[tuple[int, int], ...]:
    """``(s_y, s_x)`` per branch of a σ layer now (host ints; refreshed when σ moved)."""
    sizes = module._filter_sizes
    sizes.current(module.log_sigma, module.extent, module.max_size)
    if hasattr(module, "axes"):  # one σ per axis: one filter of s_y × s_x
        return (tuple(int(s) for s in module.kernel_size),)
    return tuple((size_of(h), size_of(h)) for h in sizes.halves)


@contextlib.contextmanager
def _dense_paths(model: nn.Module):
    """Every σ layer on its dense path meanwhile (counted as a dense conv; no path timing)."""
    saved = {}
    for m in model.modules():
        if hasattr(m, "_filter_sizes") and hasattr(m, "path"):
            saved[m] = m.path
            m.path = "dense"
    try:
        yield
    finally:
        for m, p in saved.items():
            m.path = p


class _ConvCounter(MacCounter):
    """A :class:`MacCounter` that also counts convolutions alone (``convs``)."""

    def __init__(self):
        super().__init__()
        self.convs = 0

    def _count(self, name: str, args, kwargs, out: torch.Tensor) -> int:
        n = super()._count(name, args, kwargs, out)
        if name in self._CONVS | self._TCONVS:
            self.convs += n
        return n


def count_per_sample(model: nn.Module, example) -> tuple[float, dict[str, float]]:
    """MACs of one forward on ``example`` ÷ its batch size (σ layers on their dense path, their filter
    construction — once per batch, not per sample — left out), and the MACs of each σ layer's convolution."""
    inside: dict[str, tuple[float, float]] = {}
    counter = _ConvCounter()
    handles = []
    for path, m in sigma_layers(model).items():
        start = {}

        def before(mod, args, _s=start):
            _s["n"] = (counter.macs, counter.convs)

        def after(mod, args, out, _s=start, _p=path):
            a, c = inside.get(_p, (0, 0))
            inside[_p] = (a + counter.macs - _s["n"][0], c + counter.convs - _s["n"][1])

        handles += [m.register_forward_pre_hook(before), m.register_forward_hook(after)]
    batch = _batch_size(example)
    try:
        with torch.no_grad(), evaluating(model), _dense_paths(model), full_resolution(), counter:
            call_model(model, example)
    finally:
        for h in handles:
            h.remove()
    building = sum(a - c for a, c in inside.values())
    return (counter.macs - building) / batch, {p: c / batch for p, (a, c) in inside.items()}


def _batch_size(example) -> int:
    t = example
    while not isinstance(t, torch.Tensor):
        t = next(iter(t.values())) if isinstance(t, dict) else t[0]
    return max(1, int(t.shape[0])) if t.dim() else 1


def measure_costs(model: nn.Module, example, original_macs: float) -> CostTable:
    """The :class:`CostTable` of a converted ``model`` on ``example`` (a batch; counted per sample).

    ``original_macs``: the unconverted model's MACs per sample on the same input."""
    total, inside = count_per_sample(model, example)
    names = {id(m): p for p, m in model.named_modules()}
    convs: dict[str, float] = {}  # per module that owns the filter sizes: its convolutions' MACs
    for path, macs in inside.items():
        m = model.get_submodule(path)
        owner = m if hasattr(m, "_filter_sizes") else getattr(m, "owner", None)  # a tied head's branch
        if owner is None or not hasattr(owner, "_filter_sizes") or id(owner) not in names:
            continue
        convs[names[id(owner)]] = convs.get(names[id(owner)], 0.0) + macs
    layers = []
    for path, macs in convs.items():
        m = model.get_submodule(path)
        sides = _sides(m)
        layers.append(LayerCost(path, macs / sum(math.prod(b) for b in sides), sides, limit=_limit(m)))
    fixed = total - sum(convs.values())
    shape = tuple(example.shape[1:]) if isinstance(example, torch.Tensor) else ()
    return CostTable(shape, float(original_macs), float(fixed), layers)


def plan_caps(table: CostTable, budget: float, limits: dict[str, int | None] | None = None) -> dict[str, int]:
    """Filter-size caps (px, odd) per σ layer so that ``table`` costs at most ``budget ×`` its
    original with every filter at its cap. ``limits``: a layer's own ``max_size`` (never exceeded).

    Raises :class:`BudgetError` when ``budget`` is below :attr:`CostTable.minimum`."""
    if not (isinstance(budget, (int, float)) and not isinstance(budget, bool) and 0 < budget < math.inf):
        raise BudgetError(f"budget must be a positive number (× the original's MACs), got {budget!r}")
    if budget < table.minimum - 1e-9:
        raise BudgetError(
            f"budget {budget:g}× is below what this conversion needs: {table.minimum:.3f}× the original's MACs "
            f"(every filter at its size at conversion); use a budget of at least {math.ceil(table.minimum * 100) / 100:g}")
    limits = limits or {}

    def capped(layer: LayerCost, side: int) -> int:
        limit = limits.get(layer.path)
        return max(layer.widest, side if limit is None else min(side, limit))

    def cost(caps: dict[str, int]) -> float:
        return table.fixed + sum(layer.worst(caps[layer.path]) for layer in table.layers)

    allowed = budget * table.original * (1 + 1e-12)
    caps = {layer.path: layer.widest for layer in table.layers}
    top = max([layer.widest for layer in table.layers] + [v for v in limits.values() if v] + [1])
    for side in range(3, top + 1, 2):  # one size level for every layer, as large as fits
        level = {layer.path: capped(layer, side) for layer in table.layers}
        if cost(level) > allowed:
            break
        caps = level
    spare = allowed - cost(caps)
    step = lambda layer: layer.worst(caps[layer.path] + 2) - layer.worst(caps[layer.path])  # noqa: E731
    for layer in sorted(table.layers, key=step):  # what is left: the cheapest layers one size more
        if capped(layer, caps[layer.path] + 2) == caps[layer.path]:
            continue
        if step(layer) > spare:
            break
        spare -= step(layer)
        caps[layer.path] += 2
    return caps


def apply_budget(model: nn.Module, budget: float, table: CostTable | None = None) -> CostTable:
    """Cap every σ layer of ``model`` so it costs at most ``budget ×`` its original (see the module doc).

    ``table``: the model's :class:`CostTable` (default: ``model.njetify_costs``, attached by
    ``njetify.convert`` when it had example inputs). In safe mode every safe-subsampling is also
    kept from subsampling less than it does now. Returns the table, with ``budget`` and the caps set."""
    table = table if table is not None else getattr(model, BUDGET_ATTR, None)
    if table is None:
        raise BudgetError("a budget needs the model's MAC counts at its input size: convert with example_inputs "
                          "(the CLI always gives them) or load a model saved by njetify")
    mods = dict(model.named_modules())
    caps = plan_caps(table, budget, {layer.path: layer.limit for layer in table.layers})
    for layer in table.layers:
        m = mods.get(layer.path)
        if m is None:
            continue
        layer.cap = caps[layer.path]
        m.max_size = layer.cap if layer.limit is None else min(layer.limit, layer.cap)
        m._filter_sizes.cap_note = f"the cost budget ({budget:g}× the original's MACs)"
        m._filter_sizes.invalidate()
    for m in model.modules():
        if isinstance(m, SafeSubsample) and m.source is not None:
            m.at_least_stride = True
            m.invalidate()  # the factor and map-size plans read on the host
    table.budget = float(budget)
    setattr(model, BUDGET_ATTR, table)
    return table


def set_budget(model: nn.Module, budget: float) -> CostTable:
    """:func:`apply_budget` on a converted model, recorded in its recipe so that ``njetify.save`` /
    ``load`` rebuild the same caps (``njetify finetune --budget``)."""
    table = apply_budget(model, budget)
    report = getattr(model, "njetify_report", None)
    if report is not None and isinstance(getattr(report, "recipe", None), dict):
        report.recipe["budget"] = float(budget)
    if getattr(report, "record", None) is not None:  # what njetify.save stores
        report.record = report.record.with_budget(budget)
    meta = getattr(model, "njetify_meta", None)
    if isinstance(meta, dict) and isinstance(meta.get("recipe"), dict):
        meta["recipe"]["budget"] = float(budget)
    return table


def _limit(module: nn.Module) -> int | None:
    cap = getattr(module, "max_size", None)
    return None if cap is None else cap - (1 - cap % 2)  # the largest odd side ≤ max_size


def cost_meta(model: nn.Module) -> dict:
    """``macs_original`` (per sample, at the conversion's input size) and ``budget`` of ``model``'s
    cost table, for a training history's meta ({} without a table)."""
    table = getattr(model, BUDGET_ATTR, None)
    return {} if table is None else {"macs_original": table.original, "budget": table.budget}


def macs_now(model: nn.Module) -> float | None:
    """MACs of ``model`` per sample now, from its :class:`CostTable` (None when it has none)."""
    table = getattr(model, BUDGET_ATTR, None)
    return None if table is None else table.macs(model)
