"""Save and load converted models: safetensors weights plus the metadata needed to rebuild them.

``save(model, path)`` writes every tensor of ``model.state_dict()`` and, as safetensors
metadata, one JSON document: how the unconverted model was built (``create_model``
name and arguments), the resolved recipe, the example input shapes, the njetify /
torch versions, a SHA-256 of the tensors, a fingerprint of the module tree, and the path
choices its σ layers measured (:mod:`njetify.layers.path_plan`; ``load`` adopts those made on
this kind of machine, so they are not timed again).
``load(path)`` rebuilds the model with :func:`njetify.create_model` and
:func:`njetify.surgery.convert` (same recipe, same example input shapes), loads the
tensors strictly and checks the fingerprint — so learned σ, and with it every filter
size and feature-map size, come back exactly, or loading fails with a clear error.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import warnings
from dataclasses import asdict, is_dataclass
from typing import Any, Mapping

import torch
from torch import nn

from .digest import tensor_digest
from .layers import sigma_layers
from .resolution import apply_resolution, record_of
from .surgery.record import ConversionRecord
from .surgery.report import REPORT_ATTR

__all__ = ["save", "load", "read_metadata", "FORMAT_VERSION", "META_KEY"]

#: Version of the file layout; :func:`load` refuses files with a higher number.
FORMAT_VERSION = 1
#: safetensors metadata key that holds the JSON document.
META_KEY = "njetify"
#: Attributes on a model that :func:`save` reads when no explicit argument is given.
SOURCE_ATTR, META_ATTR = "njetify_source", "njetify_meta"


# --------------------------------------------------------------------------- helpers
def _module_fingerprint(model: nn.Module) -> dict[str, Any]:
    """Module paths with their classes (all modules) and the ``extra_repr`` of njetify's modules."""
    tree = [f"{path}:{type(m).__name__}" for path, m in model.named_modules()]
    njet = {
        path or "<root>": f"{type(m).__name__}({m.extra_repr()})"
        for path, m in model.named_modules()
        if type(m).__module__.startswith("njetify.") and type(m).__module__ != "njetify.models"
        and not type(m).__module__.startswith("njetify.models.")
    }
    return {"tree_sha256": hashlib.sha256("\n".join(tree).encode()).hexdigest(), "modules": njet}


def _has_njet_layers(model: nn.Module) -> bool:
    return bool(sigma_layers(model))


def _recipe_dict(recipe) -> dict | None:
    if recipe is None:
        return None
    from .recipes import load_recipe, recipe_to_dict

    if isinstance(recipe, Mapping):
        return recipe_to_dict(load_recipe(dict(recipe)))
    return recipe_to_dict(load_recipe(recipe))  # a Recipe, a built-in name or a YAML path


def _from_report(report) -> dict:
    """Recipe, input shapes and original class to rebuild from: the report's record (built from the
    conversion's decisions, :class:`~njetify.surgery.record.ConversionRecord`), else a report as plain data."""
    if report is None:
        return {}
    record = getattr(report, "record", None)
    if isinstance(record, ConversionRecord):
        return {"recipe": record.recipe, "input_shapes": record.input_shapes, "original_class": record.original_class}
    data = asdict(report) if is_dataclass(report) else dict(report)
    return {"recipe": data.get("recipe") or None, "input_shapes": data.get("example_input_shape"),
            "original_class": data.get("model_class") or None}


def _jsonable(value, what: str):
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"save: {what} must be JSON-serialisable to be stored in the file ({exc})") from None


# ------------------------------------------------------------------------------ save
def save(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    source: str | Mapping | None = None,
    recipe=None,
    report=None,
    input_shape=None,
    extra: Mapping | None = None,
) -> str:
    """Write ``model`` to ``path`` (a ``.safetensors`` file) with what :func:`load` needs to rebuild it.

    Args:
        model: the converted (or any) ``nn.Module``.
        source: how the unconverted model is built: a :func:`njetify.create_model` name or a mapping
            ``{"name", "num_classes", "in_chans", "kwargs"}``. Default: ``model.njetify_source``
            (set by ``create_model``). None for a model of your own: :func:`load` then needs ``model=``.
        recipe: the recipe used for the conversion (a Recipe, a mapping, a built-in name or a path).
            Default: from ``report``, else from ``model.njetify_report`` / ``model.njetify_meta``.
        report: the :class:`~njetify.surgery.ConversionReport` that ``njetify.convert`` returned
            (gives the recipe and the example input shapes).
        input_shape: example input shape(s), e.g. ``(1, 3, 32, 32)``; default from the report.
            Conversion records some sizes from example inputs, so give them when you gave them.
        extra: your own JSON-serialisable data, returned by :func:`read_metadata` under ``"extra"``.

    Returns the path written. Raises ``ValueError`` when ``model`` holds N-Jet layers but no
    recipe can be found (it could not be rebuilt).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"save: model must be an nn.Module, got {type(model).__name__}")
    model = _unwrapped(model)  # torch.compile / DataParallel / DDP: the file holds the inner model
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"save: {path!r} is a folder; give a file path, e.g. "
                                f"{os.path.join(path, 'model.safetensors')!r}")
    meta_attr = getattr(model, META_ATTR, None) or {}
    found = _from_report(report) or _from_report(getattr(model, REPORT_ATTR, None)) or {
        "recipe": meta_attr.get("recipe"), "input_shapes": meta_attr.get("input_shapes")}
    if recipe is None:
        recipe = found.get("recipe")
    recipe_dict = _recipe_dict(recipe)
    if recipe_dict is None and _has_njet_layers(model):
        raise ValueError(
            "save: the model holds N-Jet layers but no recipe was found to rebuild it; pass report= (the "
            "ConversionReport from njetify.convert) or recipe= (the recipe used for the conversion)"
        )
    if source is None:
        source = getattr(model, SOURCE_ATTR, None) or meta_attr.get("source")
    if isinstance(source, str):
        source = {"name": source, "num_classes": None, "in_chans": None, "kwargs": {}}
    if source is not None:
        if not isinstance(source, Mapping) or not isinstance(source.get("name"), str):
            raise TypeError(f"save: source must be a model name or a mapping with a 'name', got {source!r}")
        source = _jsonable({"num_classes": None, "in_chans": None, "kwargs": {}, **source}, "source (model kwargs)")
    shapes = input_shape if input_shape is not None else found.get("input_shapes")
    if shapes is not None:
        shapes = [list(shapes)] if shapes and isinstance(list(shapes)[0], int) else [list(s) for s in shapes]
        if not all(all(isinstance(d, int) and d > 0 for d in s) for s in shapes):
            raise ValueError(f"save: input_shape must be positive ints, e.g. (1, 3, 32, 32), got {input_shape!r}")

    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    dtypes = sorted({str(t.dtype) for t in tensors.values() if t.is_floating_point()})
    from . import __version__

    meta = {
        "format": FORMAT_VERSION,
        "njetify_version": __version__,
        "torch_version": torch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "model_class": type(model).__name__,
        "original_class": found.get("original_class") or meta_attr.get("original_class"),
        "recipe": recipe_dict,
        "input_shapes": shapes,
        "float_dtypes": dtypes,
        "num_tensors": len(tensors),
        "tensors_sha256": tensor_digest(tensors),
        "fingerprint": _module_fingerprint(model),
        "resolution": record_of(model),
        "path_plans": _model_plans(model),
        "extra": _jsonable(dict(extra or {}), "extra"),
    }
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata={META_KEY: json.dumps(meta)})
        os.replace(tmp, path)  # never leave a half-written file under the real name
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)  # nor a temporary one
        raise
    return path


def _model_plans(model: nn.Module) -> list[dict]:
    """The measured path choices (:mod:`njetify.layers.path_plan`) of call signatures of ``model``'s σ
    layers: a decision's key holds the layer's in/out channels, groups (indices 3–5) and order (7)."""
    from .layers import path_plan

    layers = {(m.in_channels, m.out_channels, m.groups, m.order) for m in sigma_layers(model).values()
              if all(hasattr(m, a) for a in ("in_channels", "out_channels", "groups", "order"))}
    return [e for e in path_plan.export_plans()
            if len(e["key"]) > 7 and (e["key"][3], e["key"][4], e["key"][5], e["key"][7]) in layers]


# ------------------------------------------------------------------------------ load
def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of an njetify file, checked for the format version (no tensors are read)."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load: no such file {path!r}")
    try:
        with safe_open(path, framework="pt") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(
            f"load: {path!r} is not a readable safetensors file (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from None
    if raw is None:
        raise ValueError(
            f"load: {path!r} has no njetify metadata: it was not written by njetify.save "
            "(for a plain state_dict use njetify.create_model(name, weights=path))"
        )
    try:
        meta = json.loads(raw)
        fmt = meta["format"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"load: {path!r}: the njetify metadata is corrupt (not the JSON njetify.save writes)") from None
    from . import __version__

    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise ValueError(f"load: {path!r}: the njetify metadata is corrupt (file format {fmt!r})")
    if fmt > FORMAT_VERSION:
        raise ValueError(
            f"load: {path!r} was written by njetify {meta.get('njetify_version', '?')} in file format {fmt!r}; "
            f"this njetify ({__version__}) reads format ≤ {FORMAT_VERSION}: upgrade njetify to load it"
        )
    return meta


def _read_tensors(path: str, meta: dict) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        tensors = load_file(path, device="cpu")
    except Exception as exc:
        raise ValueError(f"load: cannot read the tensors of {path!r} (truncated or corrupt?): {exc}") from None
    if len(tensors) != meta.get("num_tensors") or tensor_digest(tensors) != meta.get("tensors_sha256"):
        raise ValueError(
            f"load: {path!r} is corrupt: its tensors do not match the checksum written with them "
            "(the file was modified or damaged after saving); nothing was loaded"
        )
    return tensors


def _rebuild(meta: dict, path: str, model: nn.Module | None) -> nn.Module:
    if model is None:
        source = meta.get("source")
        if source is None:
            raise ValueError(
                f"load: {path!r} holds a {meta.get('model_class')} that was not built by njetify.create_model, so "
                f"it cannot be rebuilt from its name; pass the unconverted architecture: "
                f"njetify.load(path, model=YourNet(...))"
            )
        from .models import create_model

        model = create_model(
            source["name"], num_classes=source.get("num_classes"), in_chans=source.get("in_chans"),
            **(source.get("kwargs") or {}),
        )
    elif not isinstance(model, nn.Module):
        raise TypeError(f"load: model must be an nn.Module (the unconverted architecture) or None, got {type(model).__name__}")
    else:
        model = _copy_of(_unwrapped(model))  # the caller's model is never modified
    if meta.get("recipe") is None or _has_njet_layers(model):
        return model  # saved unconverted, or the caller passed an already converted model
    from .recipes import RecipeError, load_recipe
    from .surgery import convert

    try:
        recipe = load_recipe(meta["recipe"])
    except RecipeError as exc:
        raise ValueError(
            f"load: {path!r} was written by njetify {meta.get('njetify_version')} with a recipe this njetify "
            f"cannot read: {exc}"
        ) from None
    shapes = meta.get("input_shapes")
    examples = tuple(torch.zeros([1, *s[1:]]) for s in shapes) if shapes else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the conversion's notes were shown when it first ran
            converted, report = convert(model, recipe=recipe, example_inputs=examples, inplace=True)
    except (TypeError, ValueError, RuntimeError) as exc:
        was = meta.get("original_class") or "the architecture that was converted"
        raise ValueError(
            f"load: cannot redo the conversion saved in {path!r} on this {type(model).__name__} (saved from "
            f"{was}; model= must be that unconverted architecture): {exc}"
        ) from None
    setattr(converted, REPORT_ATTR, report)
    return converted


def _unwrapped(model: nn.Module) -> nn.Module:
    from .surgery.entry import unwrap

    return unwrap(model)[0]


def _copy_of(model: nn.Module) -> nn.Module:
    from .surgery.reparam import copy_model

    try:
        return copy_model(model)
    except TypeError as exc:
        raise TypeError(f"load: {exc}; load needs a copy of model= (it is never modified)") from None


def load(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    *,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Rebuild and return the model saved by :func:`save` at ``path``.

    ``model``: None to rebuild with :func:`njetify.create_model` from the saved name; for a model
    of your own pass the *unconverted* architecture (``model=MyNet()``), or an already converted
    one; it is deep-copied, never modified (the result is a new object). The tensors are loaded strictly and the module tree is compared with the saved one;
    any difference raises ``ValueError`` and nothing is returned half-loaded. The model is
    returned in training mode (call ``.eval()`` for inference), on ``device`` (default CPU).
    """
    path = os.fspath(path)
    meta = read_metadata(path)
    tensors = _read_tensors(path, meta)
    built = _rebuild(meta, path, model)
    try:
        apply_resolution(built, meta.get("resolution"))  # the scales njetify.rescale gave the subsampling
    except ValueError as exc:
        raise ValueError(f"load: {path!r}: {exc}") from None
    dtypes = meta.get("float_dtypes") or []
    if len(dtypes) == 1:
        built = built.to(getattr(torch, dtypes[0].removeprefix("torch.")))
    fp = _module_fingerprint(built)
    if fp["tree_sha256"] != meta["fingerprint"]["tree_sha256"]:
        raise ValueError(
            f"load: the model rebuilt for {path!r} has a different module tree than the saved one (saved with "
            f"njetify {meta.get('njetify_version')}, torch {meta.get('torch_version')}; a different library "
            f"version or a different model= argument?); nothing was loaded"
        )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            built.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"load: the tensors of {path!r} do not fit the rebuilt model: {exc}") from None
    _rewarn(caught, built)
    after = _module_fingerprint(built)["modules"]
    diff = [k for k in set(after) | set(meta["fingerprint"]["modules"]) if after.get(k) != meta["fingerprint"]["modules"].get(k)]
    if diff:
        k = sorted(diff)[0]
        raise ValueError(
            f"load: after loading {path!r}, {len(diff)} N-Jet module(s) differ from the saved ones, e.g. {k}: "
            f"saved {meta['fingerprint']['modules'].get(k)!r}, now {after.get(k)!r}"
        )
    setattr(built, META_ATTR, {k: meta.get(k) for k in ("source", "recipe", "input_shapes", "original_class",
                                                          "resolution")})
    if meta.get("source") is not None:
        setattr(built, SOURCE_ATTR, meta["source"])
    from .layers.path_plan import import_plans

    import_plans(meta.get("path_plans"))  # decisions made on this kind of machine are not timed again
    return built.to(device) if device is not None else built


def _rewarn(caught, model: nn.Module) -> None:
    """Warnings of ``load_state_dict`` again; the σ-too-small ones as one warning naming the layers' paths."""
    from .layers.sizes import MIN_USEFUL_SIGMA, SmallSigmaWarning, small_sigma_message

    for w in caught:
        if not issubclass(w.category, SmallSigmaWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    small = [(p, float(m.sigma.detach().min())) for p, m in sigma_layers(model).items()
             if m.scale_parameter().requires_grad and float(m.sigma.detach().min()) < MIN_USEFUL_SIGMA]
    if small:
        warnings.warn(SmallSigmaWarning(small_sigma_message(small)), stacklevel=3)
