"""``njetify.njetify`` and ``njetify.convert``: argument checks, the pipeline, the final checks."""

from __future__ import annotations

import copy
import os
import warnings
from numbers import Real

import torch
from torch import nn

from ..basis import MAX_ORDER
from ..calibration import prepare_batches
from ..layers._checks import conv_kind
from ..recipes import validate_rules_against
from ..recipes.schema import Recipe
from .calibrate import calibrate_pass
from .context import PASSES, Pass, SurgeryContext, run_passes
from .convs import conv_pass
from .guards import guard_pass
from .plan import plan_pass
from .report import REPORT_ATTR, ConversionReport
from .subsample import subsample_pass
from .trace import example_shapes, trace_pass
from .util import count_params, evaluating, model_device_dtype, to_model

SUBSAMPLE_MODES = ("safe", "keep")


def _shapes_pass(ctx: SurgeryContext) -> None:
    """With example inputs: record the original output shape and (fx mode) every node's shape."""
    if ctx.example_inputs is None:
        return
    try:
        with evaluating(ctx.model):
            if ctx.report.tracing.get("mode") == "fx":
                from torch.fx.passes.shape_prop import ShapeProp

                out = ShapeProp(ctx.model).propagate(*ctx.example_inputs)
            else:
                out = ctx.model(*ctx.example_inputs)
        ctx.state["out_shapes"] = _out_shapes(out)
    except Exception as e:  # noqa: BLE001 - the original model itself fails on the inputs
        raise ValueError(f"example_inputs: the original model fails on them ({type(e).__name__}: {e})") from None


def _aspp_pass(ctx: SurgeryContext) -> None:
    """ASPP tying (issue 5), imported lazily: see :func:`njetify.surgery.aspp.aspp_pass`."""
    from .aspp import aspp_pass

    aspp_pass(ctx)


def _finish_pass(ctx: SurgeryContext) -> None:
    """Totals, modes of the new modules, and a check run on the example inputs."""
    for m in ctx.model.modules():
        if type(m).__module__.startswith("njetify.") and not hasattr(m, "log_sigma"):
            m.training = ctx.model.training
    ctx.report.params_after = count_params(ctx.model)
    want = ctx.state.get("out_shapes")
    if want is None:
        return
    try:
        with evaluating(ctx.model):
            got = _out_shapes(ctx.model(*ctx.example_inputs))
    except Exception as e:  # noqa: BLE001
        got = f"{type(e).__name__}: {e}"
    if got != want:
        msg = f"the converted model's output on example_inputs is {got}, the original's {want}"
        ctx.report.note(msg)
        warnings.warn(f"njetify: {msg}", stacklevel=3)


def _out_shapes(out):
    if isinstance(out, torch.Tensor):
        return list(out.shape)
    if isinstance(out, (tuple, list)):
        return [_out_shapes(o) for o in out]
    if isinstance(out, dict):
        return {k: _out_shapes(v) for k, v in out.items()}
    return None


PASSES[:] = [
    Pass("trace", trace_pass),
    Pass("shapes", _shapes_pass),
    Pass("plan", plan_pass),
    Pass("aspp", _aspp_pass, lambda ctx: bool(ctx.recipe.aspp.tie)),
    Pass("convs", conv_pass),
    Pass("subsample", subsample_pass, lambda ctx: ctx.recipe.subsample.mode == "safe"),
    Pass("guards", guard_pass, lambda ctx: ctx.recipe.subsample.mode == "safe"),
    Pass("calibrate", calibrate_pass),
    Pass("finish", _finish_pass),
]


# ------------------------------------------------------------------ arguments
def resolve_recipe(recipe=None, *, order=None, subsample=None, r=None) -> Recipe:
    """The recipe to use: ``recipe`` (None: built-in ``default``; a Recipe; a built-in name or YAML
    path) with the keyword overrides applied; always a new, checked object (see
    :func:`njetify.recipes.resolve_recipe`). Raises TypeError/ValueError naming the argument."""
    if recipe is not None and not isinstance(recipe, (Recipe, str, os.PathLike)):
        raise TypeError(f"recipe must be None, a njetify.recipes.Recipe or a str (built-in name or YAML path), "
                        f"got {type(recipe).__name__}")
    if order is not None:
        _check_order("order", order)
    if subsample is not None and subsample not in SUBSAMPLE_MODES:
        raise ValueError(f"subsample must be one of {SUBSAMPLE_MODES}, got {subsample!r}")
    if r is not None and not _valid_r(r):
        raise ValueError(f"r must be 'auto' or a positive number (the paper uses 4), got {r!r}")
    from ..recipes import resolve_recipe as _resolve

    rec = _resolve(recipe, order=order, subsample=subsample, r=r)
    sub = rec.subsample
    if sub.where == "every_layer" and sub.r == "auto":
        raise ValueError("r: subsample.where='every_layer' needs a numeric r (e.g. 4, as in the paper), got 'auto'")
    return rec


def _valid_r(r) -> bool:
    if r == "auto":
        return True
    return isinstance(r, Real) and not isinstance(r, bool) and 0 < float(r) < float("inf")


def _check_order(name: str, order) -> None:
    if not isinstance(order, int) or isinstance(order, bool) or not 0 <= order <= MAX_ORDER:
        raise ValueError(f"{name} must be an int in 0..{MAX_ORDER}, got {order!r}")


def _as_tuple(example_inputs) -> tuple | None:
    if example_inputs is None:
        return None
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise TypeError(f"example_inputs must be a tensor or a tuple of model inputs, got {type(example_inputs).__name__}")


def _recipe_dict(rec: Recipe) -> dict:
    from ..recipes import recipe_to_dict

    return recipe_to_dict(rec)


# ------------------------------------------------------------------- public
def convert(
    model: nn.Module,
    *,
    order: int | None = None,
    recipe: Recipe | str | None = None,
    subsample: str | None = None,
    r: float | str | None = None,
    calibration_data=None,
    example_inputs=None,
    inplace: bool = False,
) -> tuple[nn.Module, ConversionReport]:
    """Convert ``model`` to an N-Jet network; returns ``(converted_model, report)``.

    Args:
        model: any ``nn.Module`` (timm, torchvision, your own).
        order: derivative order N of the N-Jet layers (default 3, or the recipe's).
        recipe: None, a :class:`njetify.recipes.Recipe`, or a built-in recipe name / YAML path.
            Keyword arguments override the recipe's values.
        subsample: ``"safe"`` (strided convs/pools → stride 1 + SafeSubsample, default) or
            ``"keep"`` (strides and pooling stay).
        r: ``"auto"`` (factor at σ₀ = original stride, default) or a positive number (paper: 4).
        calibration_data: iterable of input batches (tensors, or ``(x, y, ...)`` tuples); when
            given, every converted layer is refitted to reproduce the original conv's outputs,
            layer by layer (output matching, DESIGN §3; docs/calibration.md).
        example_inputs: a tensor or tuple of inputs, used to record shapes and check the result.
        inplace: modify ``model``'s modules instead of a deep copy (always use the returned model).

    The conversion without calibration data is deterministic and needs no data.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {inplace!r}")
    rec = resolve_recipe(recipe, order=order, subsample=subsample, r=r)
    validate_rules_against(rec, model)  # a rule glob that matches no module is a recipe error
    examples = _as_tuple(example_inputs)
    report = ConversionReport(
        recipe=_recipe_dict(rec),
        subsample={"mode": rec.subsample.mode, "r": rec.subsample.r, "where": rec.subsample.where,
                   "interpolation": rec.subsample.interpolation},
        example_input_shape=example_shapes(examples),
        params_before=count_params(model),
        model_class=type(model).__name__,
    )
    device, dtype = model_device_dtype(model)
    if examples is not None:
        examples = tuple(to_model(t, device, dtype) for t in examples)
    batches = None
    if calibration_data is not None:  # checked (and run through the original model) before any change
        batches = prepare_batches(model, calibration_data, device, dtype)
        if examples is None and isinstance(batches[0], torch.Tensor):
            examples = (batches[0],)
            report.example_input_shape = example_shapes(examples)
    work = model if inplace else copy.deepcopy(model)
    ctx = SurgeryContext(work, rec, report, calibration=batches, example_inputs=examples)
    ctx.state["original"] = copy.deepcopy(model) if inplace else model  # targets and reverts of calibration
    if not _has_convertible(work, rec) and not rec.aspp.tie:
        msg = f"{type(model).__name__} has no convertible convolution: returned unchanged"
        warnings.warn(f"njetify: {msg}", stacklevel=2)
        report.tracing["mode"] = "none"
        conv_pass(ctx)  # rows that say why each conv was kept
        ctx.model = work  # conv_pass converted nothing
        report.params_after = report.params_before
        setattr(work, REPORT_ATTR, report)
        return work, report
    run_passes(ctx)
    setattr(ctx.model, REPORT_ATTR, report)  # what njetify.save needs to rebuild the model
    return ctx.model, report


def njetify(
    model: nn.Module,
    *,
    order: int | None = None,
    recipe: Recipe | str | None = None,
    subsample: str | None = None,
    r: float | str | None = None,
    calibration_data=None,
    example_inputs=None,
    inplace: bool = False,
) -> nn.Module:
    """Convert ``model`` (same arguments as :func:`convert`) and return only the converted model."""
    return convert(
        model, order=order, recipe=recipe, subsample=subsample, r=r,
        calibration_data=calibration_data, example_inputs=example_inputs, inplace=inplace,
    )[0]


def _has_convertible(model: nn.Module, rec: Recipe) -> bool:
    for path, m in model.named_modules():
        if conv_kind(m) == "ok" and not rec.settings_for(path).skip:
            return True
    return False
