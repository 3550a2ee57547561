"""The default conversion pipeline, as a value: model in → trace → passes → report → model out.

``convert(model, passes=...)`` takes any tuple of :class:`~njetify.surgery.context.Pass`;
build one from :data:`DEFAULT_PASSES` with :func:`~njetify.surgery.context.insert_pass`.
"""

from __future__ import annotations

from .context import Pass
from .passes.analyse import shapes_pass, trace_pass
from .passes.aspp import aspp_pass, aspp_ready
from .passes.calibrate import calibrate_pass
from .passes.convs import conv_pass
from .passes.costs import budget_pass, macs_pass
from .passes.finish import finish_pass
from .passes.guards import guard_pass
from .passes.plan import plan_pass
from .passes.subsample import subsample_pass
from .passes.upsample import upsample_pass

#: The passes ``convert`` runs, in order.
DEFAULT_PASSES: tuple[Pass, ...] = (
    Pass("trace", trace_pass, provides=("analysis",),
         doc="trace the model (or its largest traceable parts) with torch.fx, for analysis"),
    Pass("shapes", shapes_pass, requires=("analysis",), provides=("out_shapes",),
         doc="with example inputs: the original output shapes and every traced node's shape"),
    Pass("macs", macs_pass, requires=("analysis",), provides=("macs_before",),
         doc="with example inputs: the original's MACs per sample (convolutions and matmuls)"),
    Pass("plan", plan_pass, requires=("analysis",), provides=("plan",),
         doc="subsampling sites, the σ-source groups where branches meet, flatten → Linear heads"),
    Pass("aspp", aspp_pass, requires=("analysis",), provides=("tied", "converted"), check=aspp_ready,
         doc="tie DeepLab ASPP heads: one α, one σ per branch (the branches join 'converted')"),
    Pass("convs", conv_pass, requires=("tied",), provides=("converted",),
         doc="swap the other k×k convolutions for N-Jet layers at the same paths (after the ASPP heads are tied)"),
    Pass("subsample", subsample_pass, requires=("plan", "converted"), provides=("subsampled",),
         doc="strided convs and pools run at stride 1 and subsample by a σ-driven factor"),
    Pass("upsample", upsample_pass, requires=("plan", "subsampled"), provides=("upsampled",),
         doc="fixed upsamplings that meet an encoder map resize to its size (SafeUpsample)"),
    Pass("guards", guard_pass, requires=("plan", "subsampled"), provides=("guarded",),
         doc="Linear layers behind a flatten of a subsampled map get a guard"),
    Pass("budget", budget_pass, requires=("macs_before", "converted", "subsampled"), provides=("costs",),
         doc="the converted model's MACs per layer; with a recipe budget, filter-size caps per layer"),
    Pass("calibrate", calibrate_pass, requires=("converted", "tied"), provides=("calibrated",),
         doc="with calibration data: refit the N-Jet layers on the inputs they really see"),
    Pass("finish", finish_pass, requires=("out_shapes", "costs"),
         doc="totals, and a check of the converted model on the example inputs"),
)
