"""Pass ``aspp``: tie DeepLab ASPP heads — one shared α, one learned σ per branch (DESIGN §5).

Heads are found on the shared analysis (:func:`~njetify.surgery.analysis.aspp_heads.find_heads`).
Every branch conv is swapped in place for a :class:`~njetify.layers.TiedNJetBranch` of one
:class:`~njetify.layers.TiedNJetConv2d` per head; per-branch BN / ReLU / bias, the 1×1 and
pooling branches, the merge and the projection stay. Depthwise-separable branches (smp
DeepLabV3Plus) tie their depthwise convs. Recipe ``aspp.tie``: ``"auto"`` (default) ties the
heads it finds, ``true`` also warns when there is none, ``false`` leaves them.
Decisions: one :class:`~njetify.surgery.decisions.TiedHead` (or ``SkippedHead``) per head and one
:class:`~njetify.surgery.decisions.Conversion` per tied branch.
"""

from __future__ import annotations

import warnings

from torch import nn

from ...layers import TiedNJetBranch, TiedNJetConv2d
from ..analysis.aspp_heads import AsppHead, find_heads, may_hold_head
from ..context import ConvertedLayer, SurgeryContext
from ..decisions import Conversion, SkippedHead, TiedHead
from ..robust import attempt
from .convs import describe_conv


def aspp_ready(ctx: SurgeryContext) -> str | None:
    """The ``aspp`` pass's check of the state: None, unless an earlier pass already converted dilated
    convs (the branches ASPP heads are made of), which this pass could then no longer find and tie."""
    if ctx.recipe.aspp.tie is False:
        return None
    dilated = [p for p, c in ctx.converted.items() if max(getattr(c.conv, "dilation", (1,))) > 1]
    if not dilated:
        return None
    return (f"it needs the dilated convs unconverted to find ASPP heads, but an earlier pass converted "
            f"{len(dilated)} ({', '.join(dilated[:3])}{' ...' if len(dilated) > 3 else ''}); run 'aspp' "
            f"(it provides 'tied') before the pass that converts convs ('convs' in the default pipeline)")


def aspp_pass(ctx: SurgeryContext) -> None:
    """Tie every ASPP head of the model (recipe ``aspp.tie``) into ``ctx.tied``; a decision per head and branch."""
    tie = ctx.recipe.aspp.tie
    ctx.tied = []
    if tie is False:
        return
    heads, skips = [], []
    for region in ctx.analysis.regions:
        if not may_hold_head(region.root):
            continue
        found, skipped = attempt(f"the ASPP analysis of {region.prefix or 'the model'}",
                                 lambda: find_heads(region), lambda why: ([], []), ctx.failures)
        for new, seen in ((found, heads), (skipped, skips)):  # a module called several times (MSC): one head
            for x in new:
                if all(x.branches != y.branches for y in seen):
                    seen.append(x)
    heads = [h for h in heads if all(isinstance(ctx.module(b), nn.Conv2d) for b in h.branches)]
    for head in heads:
        if _rule_skips(ctx.recipe, head.branches):
            ctx.decide(SkippedHead(head.path, op=f"ASPP {len(head.branches)} branches", reason="recipe rule: skip",
                                   rates=tuple(head.dilations)))
            continue
        ctx.tied.append(tie_head(ctx, head))
    for s in skips:
        ctx.decide(SkippedHead(s.path, op=f"ASPP {len(s.branches)} branches", reason=s.reason,
                               branches=tuple(s.branches)))
    if not heads and tie is True:
        if any(isinstance(m, TiedNJetBranch) for m in ctx.model.modules()):
            ctx.note("aspp: the model's ASPP branches are already tied")
            return
        msg = "recipe aspp.tie: true, but no ASPP head (parallel dilated convs meeting in a sum/concat) was found"
        warnings.warn(f"njetify: {msg}", stacklevel=4)
        ctx.note(msg)


def tie_head(ctx: SurgeryContext, head: AsppHead) -> TiedHead:
    """Replace the branch convs of ``head`` by one tied layer, fitted in weight space (the
    ``calibrate`` pass refits it on data); returns the head's decision (after its branches')."""
    st = ctx.recipe.settings_for(head.branches[0])
    convs = [ctx.module(p) for p in head.branches]
    sigmas = None if st.sigma_init in ("kernel", "fit") else [float(st.sigma_init)] * len(convs)
    tied = TiedNJetConv2d.from_convs(convs, order=st.order, extent=st.extent, learn_sigma=st.learn_sigma,
                                     max_size=st.max_size, sigmas=sigmas, name=f"{head.branches[0]}.tied")
    tied.train(convs[0].training)
    sigma0 = [round(float(s), 6) for s in tied.sigma.detach()]
    sizes = [tied.kernel_size(k)[0] for k in range(tied.num_branches)]
    capped = [head.branches[k] for k in range(tied.num_branches) if tied.size_capped[k]]
    for k, (path, conv, branch) in enumerate(zip(head.branches, convs, tied.branches)):
        ctx.rewriter.replace(path, branch)
        ctx.converted[path] = ConvertedLayer(path, branch, conv)
        ctx.decide(Conversion(
            path, op=describe_conv(conv), decision="converted", kernel=conv.kernel_size[0],
            dilation=conv.dilation[0], groups=conv.groups, order=st.order, sigma0=sigma0[k], size=sizes[k],
            fit_error=tied.branch_errors[k] if tied.branch_errors else None,
            params_before=sum(p.numel() for p in conv.parameters()), params_after=0,
            reason=f"tied ASPP branch of {head.path}" + (f"; filter capped at max_size={st.max_size}"
                                                           if path in capped else ""),
            head=head.path, branch=k,
        ))
    notes = [f"{p}: {why}" for p, why in head.skipped]
    return ctx.decide(TiedHead(
        head.path, op=f"ASPP {len(convs)}x tied ({head.merge})", branches=tuple(head.branches),
        rates=tuple(head.dilations), merge=head.merge, order=st.order, sigma0=tuple(sigma0), sizes=tuple(sizes),
        fit_error=tied.fit_error, branch_errors=tuple(tied.branch_errors or ()),
        params_before=sum(p.numel() for c in convs for p in c.parameters()), params_after=tied.num_params(),
        max_size=st.max_size, capped=tuple(capped), skipped=tuple(tuple(x) for x in head.skipped),
        reason="; ".join(notes) or None,
    ))


def aspp_done(ctx: SurgeryContext) -> str | None:
    """The ``aspp`` pass's ``ensures``: every branch of every tied head is a converted σ layer, in the model
    at its path; None when so, else the first branch that is not."""
    for head in ctx.tied or ():
        for b in head.branches:
            c = ctx.converted.get(b)
            if c is None or ctx.module(b) is not c.layer:
                return f"head {head.path}: branch {b} is not its tied branch in the model and in 'converted'"
    return None


def _rule_skips(recipe, paths: list[str]) -> bool:
    """Whether the last rule with a ``skip`` that matches any of ``paths`` (the branches) says skip."""
    skips = [rule.skip for path in paths for rule in recipe.rules_for(path) if rule.skip is not None]
    return bool(skips and skips[-1])
