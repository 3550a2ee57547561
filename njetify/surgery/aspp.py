"""Tie DeepLab ASPP heads: one shared α, one learned σ per branch (DESIGN §5).

:func:`tie_aspp` finds the heads (:mod:`njetify.surgery.aspp_detect`) by tracing the
model — or, when it does not trace whole (smp), its largest traceable sub-modules —
and replaces every branch conv in place by a :class:`~njetify.layers.tied.TiedNJetBranch`
of one :class:`~njetify.layers.tied.TiedNJetConv2d` per head. Per-branch BN / ReLU /
bias, the 1×1 and pooling branches, the merge and the projection stay as they are.
Depthwise-separable branches (smp DeepLabV3Plus) tie their depthwise convs.

:func:`aspp_pass` is the same step inside the conversion pipeline (recipe ``aspp.tie``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..layers.tied import TiedNJetBranch, TiedNJetConv2d
from .aspp_detect import AsppHead, find_heads, trace_regions

#: Default filter-size cap of :func:`tie_aspp`: 127 px covers rate 63 at extent 2 (σ₀ 31.5).
#: Tied branches are evaluated separably, so the cost grows linearly with the size.
DEFAULT_MAX_SIZE = 127


@dataclass
class AsppRow:
    """What happened to one ASPP head (``action``: "tied" or "skipped")."""

    path: str
    action: str
    branches: list[str] = field(default_factory=list)
    rates: list[int] = field(default_factory=list)
    merge: str = ""
    sigma0: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    order: int | None = None
    params_before: int = 0
    params_after: int = 0
    fit: str = ""  # "weight-space" | "data-aware"
    fit_error: float | None = None  # joint relative weight-space error
    branch_errors: list[float] = field(default_factory=list)
    output_error: float | None = None  # relative output error on the calibration inputs
    max_size: int | None = None
    capped: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tie_aspp(
    model: nn.Module,
    *,
    order: int = 3,
    extent: float = 2.0,
    max_size: int | None = DEFAULT_MAX_SIZE,
    learn_sigma: bool = True,
    calibration_data: Iterable | None = None,
    warn_if_none: bool = True,
) -> tuple[nn.Module, list[AsppRow]]:
    """Find the ASPP heads of ``model`` and tie each one in place.

    Args:
        model: any ``nn.Module`` (kazuto1011 DeepLab v2, torchvision / smp DeepLab v3 / v3+, ...).
        order: basis order N of the shared α (F = (N+1)(N+2)/2 coefficients per (out, in) pair).
        extent: filter half-width in units of σ; σ₀ of a branch is ``d·(k−1)/(2·extent)``.
        max_size: filter-size cap in pixels (None: none); branches that hit it are reported.
        calibration_data: batches of model inputs (tensors or ``(x, ...)`` tuples) for the
            data-aware joint fit; None fits in weight space.
        warn_if_none: warn when the model has no ASPP head.

    Returns:
        ``(model, rows)`` — the same model object, changed in place, and one :class:`AsppRow`
        per head found (tied or skipped with the reason).
    """
    _check_args(order, extent, max_size)
    regions, _ = trace_regions(model)
    heads, skips = [], []
    for prefix, graph in regions:
        root = model.get_submodule(prefix) if prefix else model
        h, s = find_heads(graph, root, prefix)
        for found, seen in ((h, heads), (s, skips)):  # a module called several times (MSC) gives one head
            for x in found:
                if all(x.branches != y.branches for y in seen):
                    seen.append(x)
    rows = tie_heads(model, heads, order=order, extent=extent, max_size=max_size, learn_sigma=learn_sigma,
                     calibration_data=calibration_data)
    rows += [AsppRow(path=s.path, action="skipped", branches=s.branches, reason=s.reason) for s in skips]
    if not heads and warn_if_none:
        warnings.warn(f"tie_aspp: no ASPP head found in {type(model).__name__}; nothing was tied", stacklevel=2)
    return model, rows


def _check_args(order, extent, max_size) -> None:
    if not isinstance(order, int) or isinstance(order, bool) or not 0 <= order <= 8:
        raise ValueError(f"order must be an int in 0..8, got {order!r}")
    if not isinstance(extent, (int, float)) or isinstance(extent, bool) or not extent > 0:
        raise ValueError(f"extent must be a positive number, got {extent!r}")
    if max_size is not None and (not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 1):
        raise ValueError(f"max_size must be a positive int or None, got {max_size!r}")


def tie_heads(
    model: nn.Module,
    heads: list[AsppHead],
    *,
    order: int = 3,
    extent: float = 2.0,
    max_size: int | None = DEFAULT_MAX_SIZE,
    learn_sigma: bool = True,
    calibration_data: Iterable | None = None,
    sigmas: float | None = None,
) -> list[AsppRow]:
    """Tie already-detected ``heads`` of ``model`` in place; one row per head.

    ``sigmas``: one σ₀ in pixels for every branch (None: from each branch's rate).
    """
    feats = _capture_inputs(model, heads, calibration_data) if calibration_data is not None else {}
    rows = []
    for head in heads:
        convs = [model.get_submodule(p) for p in head.branches]
        inputs = feats.get(head.branches[0]) or None
        tied = TiedNJetConv2d.from_convs(
            convs, order=order, extent=extent, inputs=inputs, learn_sigma=learn_sigma, max_size=max_size,
            sigmas=None if sigmas is None else [sigmas] * len(convs),
        )
        tied.train(convs[0].training)
        row = AsppRow(
            path=head.path, action="tied", branches=list(head.branches), rates=list(head.dilations),
            merge=head.merge, sigma0=[round(float(s), 6) for s in tied.sigma.detach()],
            sizes=[tied.kernel_size(k)[0] for k in range(tied.num_branches)], order=order,
            params_before=sum(p.numel() for c in convs for p in c.parameters()),
            params_after=tied.num_params(), fit="data-aware" if inputs else "weight-space",
            fit_error=tied.fit_error, branch_errors=list(tied.branch_errors or []), max_size=max_size,
            capped=[head.branches[k] for k in range(tied.num_branches) if tied.size_capped[k]],
            skipped=list(head.skipped),
        )
        if inputs:
            row.output_error = tied.output_error = _output_error(convs, tied, inputs)
        for path, branch in zip(head.branches, tied.branches):
            _set_module(model, path, branch)
        rows.append(row)
    return rows


@torch.no_grad()
def _output_error(convs, tied: TiedNJetConv2d, inputs) -> float:
    """``sqrt(Σ ‖tied_k(x) − conv_k(x)‖² / Σ ‖conv_k(x)‖²)`` over branches and calibration inputs."""
    num = den = 0.0
    for x in inputs:
        for k, conv in enumerate(convs):
            ref = conv(x)
            num += float((tied.forward_branch(x, k) - ref).double().pow(2).sum())
            den += float(ref.double().pow(2).sum())
    return (num / den) ** 0.5 if den > 0 else num**0.5


@torch.no_grad()
def _capture_inputs(model: nn.Module, heads: list[AsppHead], batches: Iterable) -> dict[str, list[torch.Tensor]]:
    """Run ``batches`` through ``model`` (eval mode) and record the input of each head's first branch."""
    feats: dict[str, list[torch.Tensor]] = {h.branches[0]: [] for h in heads}
    hooks = []
    for path in feats:
        mod = model.get_submodule(path)
        hooks.append(mod.register_forward_pre_hook(lambda m, args, p=path: feats[p].append(args[0].detach())))
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    param = next(model.parameters(), None)
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"calibration_data: batches must be tensors or (x, ...) tuples, got {type(x).__name__}")
            if param is not None:
                x = x.to(param.device, param.dtype)
            model(x)
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return feats


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def format_rows(rows: list[AsppRow]) -> str:
    """Plain-text lines, one per head, for logs and the CLI."""
    out = []
    for r in rows:
        if r.action != "tied":
            out.append(f"{r.path or '<model>'}: not tied — {r.reason}")
            continue
        rates = "/".join(map(str, r.rates))
        sig = "/".join(f"{s:g}" for s in r.sigma0)
        line = (f"{r.path}: {len(r.branches)} branches ({r.merge}), rates {rates} -> σ0 {sig} px, "
                f"sizes {'/'.join(map(str, r.sizes))}, params {r.params_before:,} -> {r.params_after:,} "
                f"({r.params_before / max(1, r.params_after):.2f}x fewer), {r.fit} fit error {r.fit_error:.3f}")
        if r.output_error is not None:
            line += f", output error {r.output_error:.3f}"
        if r.capped:
            line += f"; capped at max_size={r.max_size}: {', '.join(r.capped)}"
        for path, why in r.skipped:
            line += f"; {path}: {why}"
        out.append(line)
    return "\n".join(out)


# ------------------------------------------------------------------ pipeline
def aspp_pass(ctx) -> None:
    """Pipeline step (recipe ``aspp.tie: true``): tie every ASPP head of ``ctx.model`` in place.

    Runs after tracing and before the conv pass. Detection uses the traced regions
    (or traces the model itself in module-swap mode). Per-head settings come from the
    recipe for the head's first branch path (``order``, ``extent``, ``max_size``,
    ``learn_sigma``; a numeric ``sigma_init`` sets every branch's σ₀); a rule with
    ``skip: true`` matching a branch keeps the head. A model without ASPP gets a warning
    and a report line.
    """
    from .report import ReportRow

    report, recipe = ctx.report, ctx.recipe
    regions = [(r.prefix, r.gm.graph, r.gm) for r in ctx.regions]
    if not regions:
        regions = [(p, g, ctx.get_module(p)) for p, g in trace_regions(ctx.model)[0]]
    heads, skips = [], []
    for prefix, graph, root in regions:
        h, s = find_heads(graph, root, prefix)
        for found, seen in ((h, heads), (s, skips)):
            for x in found:
                if all(x.branches != y.branches for y in seen):
                    seen.append(x)
    rows = []
    for head in heads:
        if _rule_skips(recipe, head.branches):
            rows.append(AsppRow(path=head.path, action="skipped", branches=head.branches, rates=head.dilations,
                                reason="recipe rule: skip"))
            continue
        st = recipe.settings_for(head.branches[0])
        rows += tie_heads(ctx.model, [head], order=st.order, extent=st.extent, max_size=st.max_size,
                          learn_sigma=st.learn_sigma, calibration_data=None,  # the calibrate pass fits the heads
                          sigmas=None if st.sigma_init in ("kernel", "fit") else float(st.sigma_init))
    rows += [AsppRow(path=s.path, action="skipped", branches=s.branches, reason=s.reason) for s in skips]
    for r in rows:
        report.add(_report_row(ReportRow, r))
        if r.action == "tied":
            for k, path in enumerate(r.branches):
                report.add(ReportRow(
                    kind="aspp", path=path, op=f"tied branch {k} (rate {r.rates[k]})", action="converted",
                    dilation=r.rates[k], order=r.order, sigma0=r.sigma0[k], size=r.sizes[k],
                    fit_error=r.branch_errors[k] if r.branch_errors else None,
                    reason=f"filter capped at max_size={r.max_size}" if path in r.capped else None,
                ))
    if not heads and any(isinstance(m, TiedNJetBranch) for m in ctx.model.modules()):
        report.note("aspp: the model's ASPP branches are already tied")
    elif not heads:
        msg = "recipe aspp.tie: true, but no ASPP head (parallel dilated convs meeting in a sum/concat) was found"
        warnings.warn(f"njetify: {msg}", stacklevel=3)
        report.note(msg)
        if not skips:
            report.add(ReportRow(kind="aspp", path="", op="ASPP", action="skipped", reason=msg))
    ctx.state["aspp"] = rows


def _rule_skips(recipe, paths: list[str]) -> bool:
    import fnmatch

    skip = None
    for path in paths:
        for rule in recipe.rules:
            if rule.skip is not None and fnmatch.fnmatchcase(path, rule.match):
                skip = rule.skip
    return bool(skip)


def _report_row(row_cls, r: AsppRow):
    if r.action != "tied":
        return row_cls(kind="aspp", path=r.path, op=f"ASPP {len(r.branches)} branches", action="skipped",
                       dilation=tuple(r.rates) or None, reason=r.reason, extra=r.to_dict())
    note = "; ".join([f"{p}: {why}" for p, why in r.skipped]
                     + ([f"capped at max_size={r.max_size}: {', '.join(r.capped)}"] if r.capped else []))
    return row_cls(
        kind="aspp", path=r.path, op=f"ASPP {len(r.branches)}x tied ({r.merge})", action="converted",
        dilation=tuple(r.rates), order=r.order, sigma0=None, size=max(r.sizes), fit_error=r.fit_error,
        params_before=r.params_before, params_after=r.params_after, reason=note or None, extra=r.to_dict(),
    )
