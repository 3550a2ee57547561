"""``njetify.convert``, ``njetify.njetify`` and ``tie_aspp``: check the arguments, run the pipeline.

The converted model is the user's own model — the same class with its methods, properties,
attributes, hooks and module paths (a deep copy, or the very object with ``inplace=True``):
only modules are swapped (DESIGN §6). A conversion that fails part-way is rolled back.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..calibration import prepare_batches
from ..options import SUBSAMPLE_MODES, check_max_size, check_order, check_positive, check_r
from ..recipes import validate_rules_against
from ..recipes.schema import AsppConfig, Recipe, SubsampleConfig
from .context import SurgeryContext, check_pipeline, run_pipeline
from .pipeline import DEFAULT_PASSES
from .report import REPORT_ATTR, ConversionReport
from .view import build_report
from .entry import check_finite, check_quantized, unwrap
from .reparam import copy_model, note_dropped, refresh_effective, reparametrisations
from .rewrite import Rewriter
from ..inputs import to_model
from .util import count_params, model_device_dtype

#: Filter-size cap of :func:`tie_aspp`: 127 px covers rate 63 at extent 2 (σ₀ 31.5).
TIE_MAX_SIZE = 127


def resolve_recipe(recipe=None, **overrides) -> Recipe:
    """The recipe to use: ``recipe`` (None: built-in ``default``; a Recipe; a built-in name or YAML
    path) with the keyword ``overrides`` applied — any recipe key (``order=2``, ``max_fit_error=0.3``,
    ``sigma_init="kernel"``) and the shortcuts of :func:`njetify.recipes.resolve_recipe` (``r=4``,
    ``subsample="keep"``); None means "not given". Always a new, checked object. Raises
    TypeError/ValueError naming the argument."""
    if recipe is not None and not isinstance(recipe, (Recipe, str, os.PathLike)):
        raise TypeError(f"recipe must be None, a njetify.recipes.Recipe or a str (built-in name or YAML path), "
                        f"got {type(recipe).__name__}")
    order, subsample, r, budget = (overrides.get(k) for k in ("order", "subsample", "r", "budget"))
    if order is not None:
        check_order(order)
    if isinstance(subsample, str) and subsample not in SUBSAMPLE_MODES:
        raise ValueError(f"subsample must be one of {SUBSAMPLE_MODES}, got {subsample!r}")
    if r is not None:
        check_r(r)
    if budget is not None:
        check_positive("budget", budget)
    from ..recipes import resolve_recipe as _resolve

    rec = _resolve(recipe, **overrides)
    if rec.subsample.where == "every_layer" and rec.subsample.r == "auto":
        raise ValueError("r: subsample.where='every_layer' needs a numeric r (e.g. 4, as in the paper), got 'auto'")
    return rec


def _as_tuple(example_inputs) -> tuple | None:
    if example_inputs is None:
        return None
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise TypeError(f"example_inputs must be a tensor or a tuple of model inputs, got {type(example_inputs).__name__}")


def _copy(model: nn.Module, why: str) -> nn.Module:
    try:
        return copy_model(model)
    except TypeError as e:
        raise TypeError(f"convert: {e}; {why}") from None


#: Model dtypes whose calibration runs on a float32 copy (their precision fails the geometry check).
LOW_PRECISION = (torch.float16, torch.bfloat16)


def convert(
    model: nn.Module,
    *,
    recipe: Recipe | str | None = None,
    calibration_data=None,
    example_inputs=None,
    inplace: bool = False,
    passes=None,
    **overrides,
) -> tuple[nn.Module, ConversionReport]:
    """Convert ``model`` to an N-Jet network; returns ``(converted_model, report)``.

    Args:
        model: any ``nn.Module`` (timm, torchvision, segmentation-models-pytorch, your own). A
            ``torch.compile`` / ``nn.DataParallel`` / ``DistributedDataParallel`` wrapper is removed:
            the inner model is converted and returned unwrapped (a report note says so).
        recipe: None, a :class:`njetify.recipes.Recipe`, or a built-in recipe name / YAML path.
        **overrides: recipe keys that override the recipe's values, all through one resolver
            (:func:`resolve_recipe`; None: not given), e.g. ``order=2`` (derivative order N,
            default 3), ``subsample="keep"`` (``"safe"``, the default: strided convs/pools → stride 1
            + SafeSubsample; ``"keep"``: strides and pooling stay), ``r=4`` (``"auto"``, the default:
            factor at σ₀ = original stride; the paper uses 4), ``budget=1.5`` (the most the converted
            model may cost, × the original's MACs at the example input's size; needs ``example_inputs``
            or tensor calibration batches; filter sizes are capped per layer so that it holds while σ
            learns, :mod:`njetify.budget`), ``max_fit_error=0.3``,
            ``sigma_init="kernel"``, ``rules=[...]`` (appended). An unknown key is a RecipeError
            with the closest key.
        calibration_data: iterable of input batches (tensors, or ``(x, y, ...)`` tuples); when
            given, every converted layer is refitted to reproduce the original conv's outputs,
            layer by layer (output matching, DESIGN §3; docs/calibration.md). A batch's input may be a
            tensor, a tuple of positional inputs or a dict (keyword inputs, or one positional dict when
            ``forward`` does not take its keys). A float16 / bfloat16 model is calibrated on a float32
            copy and the result cast back.
        example_inputs: a tensor or tuple of inputs, used to record shapes and check the result.
        inplace: convert ``model`` itself instead of a deep copy (always use the returned model).
        passes: the pipeline (default :data:`~njetify.surgery.DEFAULT_PASSES`).

    The result is an object of ``model``'s own class with its methods and attributes; state_dict
    keys of what is not converted are unchanged, converted layers keep their paths. The
    conversion without calibration data is deterministic and needs no data.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {inplace!r}")
    model, notes = unwrap(model)  # torch.compile / DataParallel / DDP: the inner model is converted
    rec = resolve_recipe(recipe, **overrides)
    validate_rules_against(rec, model)  # a rule glob that matches no module is a recipe error
    pipeline = check_pipeline(DEFAULT_PASSES if passes is None else passes)
    notes += check_quantized(model)
    check_finite(model, rec)
    examples = _as_tuple(example_inputs)
    device, dtype = model_device_dtype(model)
    low = calibration_data is not None and dtype in LOW_PRECISION
    source = model
    if low:  # fits in float32: a float32 original, the model converted in float32 and cast back at the end
        source = _copy(model, "calibrate a float32 model (model.float())").float()
        notes.append(f"the model is {_name(dtype)}: calibrated in float32 (a float32 copy of the model and the "
                     f"batches), the result cast back to {_name(dtype)}")
    run_dtype = torch.float32 if low else dtype
    # checked, and run once through the original model, before any change
    batches = None if calibration_data is None else prepare_batches(source, calibration_data, device, run_dtype)
    if examples is not None:
        examples = tuple(to_model(t, device, run_dtype) for t in examples)
    elif batches is not None and isinstance(batches[0], torch.Tensor):
        examples = (batches[0],)
    params_before, model_class = count_params(model), type(model).__name__
    computed = reparametrisations(model)  # weight_norm, spectral_norm, prune: noted when dropped
    work = model if inplace else _copy(model, "convert it in place with inplace=True")
    restore = _float_dtypes(work)
    refresh_effective(work)  # an old spectral_norm holds the raw weight until its first forward
    original = None
    if batches is not None:
        original = source if low or not inplace else _copy(model, "calibrate without inplace=True, or give no "
                                                                  "calibration_data")
    rewriter = Rewriter(work)
    ctx = SurgeryContext(work, rec, rewriter, examples, batches, original, model_class=model_class)
    for text in notes:
        ctx.note(text)
    try:
        if low:
            work.float()
        run_pipeline(ctx, pipeline)
    except BaseException:
        rewriter.rollback()
        if low:
            _cast_back(work, dtype, restore)
        raise
    rewriter.commit()
    if low:
        _cast_back(work, dtype, restore)
    note_dropped(ctx, computed)
    from ..recipes import recipe_to_dict

    report = build_report(ctx, recipe=recipe_to_dict(rec), input_shapes=_shapes(examples), params_before=params_before)
    setattr(work, REPORT_ATTR, report)  # its record is what njetify.save needs to rebuild the model
    return work, report


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _float_dtypes(model: nn.Module) -> dict[str, torch.dtype]:
    """Floating parameters and buffers by name with their dtypes (to restore a mixed-precision model)."""
    return {n: t.dtype for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_floating_point()}


def _cast_back(model: nn.Module, dtype: torch.dtype, before: dict[str, torch.dtype]) -> None:
    """``model.to(dtype)``, then every tensor that had another floating dtype before gets it back."""
    model.to(dtype)
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        want = before.get(name, dtype)
        if t.is_floating_point() and want != dtype:
            t.data = t.data.to(want)


def _shapes(example_inputs) -> list[list[int]] | None:
    if example_inputs is None:
        return None
    return [list(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)]


def njetify(model: nn.Module, **kwargs) -> nn.Module:
    """Convert ``model`` (same arguments as :func:`convert`) and return only the converted model."""
    return convert(model, **kwargs)[0]


def tie_aspp(
    model: nn.Module,
    *,
    order: int = 3,
    extent: float = 2.0,
    max_size: int | None = TIE_MAX_SIZE,
    learn_sigma: bool = True,
    calibration_data=None,
    inplace: bool = False,
) -> tuple[nn.Module, ConversionReport]:
    """Tie the DeepLab ASPP heads of ``model`` and nothing else: :func:`convert` with a tie-only recipe.

    Each head's dilated branch convs share one α and keep one σ each (initialised from their
    rates, ``σ₀ = d·(k−1)/(2·extent)``); ``max_size`` caps the filters (pixels, None: no cap).
    Returns ``(model, report)``; the report has one ``aspp`` row per head (tied, or skipped
    with the reason) and one ``conv`` row per tied branch.
    """
    check_order(order)
    check_positive("extent", extent)
    check_max_size(max_size)
    rec = Recipe(name="tie-aspp", description="tie ASPP heads only", order=order, extent=extent,
                 max_size=max_size, learn_sigma=learn_sigma, convs=False,
                 subsample=SubsampleConfig(mode="keep"), aspp=AsppConfig(tie=True))
    return convert(model, recipe=rec, calibration_data=calibration_data, inplace=inplace)
