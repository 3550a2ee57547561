"""The default conversion pipeline, as a value: model in → trace → passes → report → model out.

``convert(model, passes=...)`` takes any tuple of :class:`~njetify.surgery.context.Pass`;
build one from :data:`DEFAULT_PASSES` with :func:`~njetify.surgery.context.insert_pass`.
"""

from __future__ import annotations

from .context import Pass, SurgeryContext
from .passes.analyse import shapes_pass, trace_pass
from .passes.aspp import aspp_done, aspp_pass, aspp_ready
from .passes.calibrate import calibrate_done, calibrate_pass
from .passes.convs import conv_pass, convs_done
from .passes.costs import budget_pass, macs_pass
from .passes.finish import finish_pass, finish_ready
from .passes.guards import guard_pass
from .passes.plan import plan_pass
from .passes.subsample import subsample_done, subsample_pass
from .passes.upsample import upsample_pass



def _filled(name: str):
    """An ``ensures`` that the pass set the context field ``name``."""
    def ensures(ctx: SurgeryContext) -> str | None:
        return None if getattr(ctx, name) is not None else f"it left {name!r} unset"

    ensures.__name__ = f"{name}_filled"
    return ensures


#: The passes ``convert`` runs, in order. ``requires``: the context fields a pass reads (filled by an
#: earlier pass); ``provides``: those it fills; ``check`` / ``ensures``: its checks of the state before / after.
DEFAULT_PASSES: tuple[Pass, ...] = (
    Pass("trace", trace_pass, provides=("analysis",), ensures=_filled("analysis"),
         doc="trace the model (or its largest traceable parts) with torch.fx, for analysis"),
    Pass("shapes", shapes_pass, requires=("analysis",), provides=("out_shapes",),
         doc="with example inputs: the original output shapes and every traced node's shape"),
    Pass("macs", macs_pass, provides=("macs_before",),
         doc="with example inputs: the original's MACs per sample (convolutions and matmuls)"),
    Pass("plan", plan_pass, requires=("analysis",), provides=("plan",), ensures=_filled("plan"),
         doc="subsampling sites, the σ-source groups where branches meet, flatten → Linear heads"),
    Pass("aspp", aspp_pass, requires=("analysis",), provides=("tied", "converted"), check=aspp_ready,
         ensures=aspp_done, doc="tie DeepLab ASPP heads: one α, one σ per branch (the branches join 'converted')"),
    Pass("convs", conv_pass, requires=("tied", "converted"), provides=("converted",), ensures=convs_done,
         doc="swap the other k×k convolutions for N-Jet layers at the same paths (after the ASPP heads are tied: "
             "it skips what is converted)"),
    Pass("subsample", subsample_pass, requires=("plan", "converted"), provides=("subsampled",),
         ensures=subsample_done, doc="strided convs and pools run at stride 1 and subsample by a σ-driven factor"),
    Pass("upsample", upsample_pass, requires=("analysis", "plan", "subsampled"), provides=("upsampled",),
         ensures=_filled("upsampled"),
         doc="fixed upsamplings that meet an encoder map resize to its size (SafeUpsample)"),
    Pass("guards", guard_pass, requires=("plan", "subsampled"), provides=("guarded",), ensures=_filled("guarded"),
         doc="Linear layers behind a flatten of a subsampled map get a guard"),
    Pass("budget", budget_pass, requires=("macs_before", "converted", "subsampled"), provides=("costs",),
         doc="the converted model's MACs per layer; with a recipe budget, filter-size caps per layer"),
    Pass("calibrate", calibrate_pass, requires=("converted", "tied", "subsampled"), provides=("calibrated",),
         ensures=calibrate_done,
         doc="with calibration data: refit the N-Jet layers on the inputs they really see; the fidelity gate"),
    Pass("finish", finish_pass, requires=("out_shapes", "costs", "converted", "calibrated"), check=finish_ready,
         doc="totals, and a check of the converted model on the example inputs"),
)
