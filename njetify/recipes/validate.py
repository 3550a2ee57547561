"""Build recipe dataclasses from plain data (YAML, dicts, keyword overrides) and check every value.

Each problem raises one :class:`RecipeError` naming where the recipe came from
(a file path, a built-in name, "keyword override"), the key path
(``subsample.r``, ``rules[2].order``), the bad value and what is allowed.
Types come from the dataclass annotations in :mod:`njetify.recipes.schema`;
allowed values come from :data:`CHECKS`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from typing import Any, Callable, Mapping

from ..options import (
    AMP_MODES,
    ASPP_TIE,
    CLASS_WEIGHTS,
    INTERPOLATIONS,
    OPTIMIZERS,
    SCHEDULES,
    SIGMA_PER,
    SIGMA_PER_AXIS,
    SUBSAMPLE_MODES,
    SUBSAMPLE_WHERE,
    WIDE_SOLVERS,
    order_problem,
    r_problem,
)
from .schema import Recipe

__all__ = ["RecipeError", "build", "recipe_from_dict", "CHECKS"]


class RecipeError(ValueError):
    """A recipe key or value that is not allowed. ``where``/``key``/``value`` say which."""

    def __init__(self, where: str, key: str, message: str, value: Any = dataclasses.MISSING):
        self.where, self.key, self.value = where, key, value
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


def _choice(*allowed):
    return lambda v: None if v in allowed else "one of " + ", ".join(map(repr, allowed))


def _positive(v):
    return None if math.isfinite(v) and v > 0 else "a positive finite number"


def _non_negative(v):
    return None if math.isfinite(v) and v >= 0 else "a number ≥ 0"


def _at_least(lo):
    return lambda v: None if v >= lo else f"an int ≥ {lo}"


def _sigma_init(v):
    if isinstance(v, str):
        return None if v in ("kernel", "fit") else (
            "'kernel' (σ₀ from the kernel size), 'fit' (the σ₀ that reproduces the layer's outputs best "
            "on the calibration data; the kernel's without data) or a positive number of pixels")
    return _positive(v)


def _per_axis(v):
    ok = any(v is a or (isinstance(v, str) and v == a) for a in SIGMA_PER_AXIS)
    return None if ok else ("'auto' (one σ per axis for non-square kernels), true (for every stride-1 kernel) "
                            "or false (one σ; non-square kernels stay convs)")


def _max_fit_error(v):
    return None if v >= 0 else "a relative error ≥ 0 (e.g. 0.5; .inf never reverts, 0 always does), or null for no gate"


def _tie(v):
    ok = any(v is a or (isinstance(v, str) and v == a) for a in ASPP_TIE)
    return None if ok else "'auto' (tie the heads found), true or false"


def _match(v):
    return None if v.strip() else "a non-empty glob on module paths, e.g. 'layer1.*' or '*.conv2'"


def _unit_interval_open_right(v):
    return None if 0 <= v < 1 else "a number in [0, 1)"


def _unit_interval_open_left(v):
    return None if 0 < v <= 1 else "a number in (0, 1]"


def _fraction(v):
    return None if 0 <= v <= 1 else "a list of numbers in [0, 1] (0: the kernel rule's σ₀; 1: one filter size more)"


def _gamma(v):
    return None if 0 < v <= 1 else "a number in (0, 1]"


#: Allowed values per key path (``rules.<field>`` falls back to the top-level field's check).
CHECKS: dict[str, Callable[[Any], str | None]] = {
    "order": order_problem,
    "depthwise_order": order_problem,
    "extent": _positive,
    "sigma_init": _sigma_init,
    "sigma_per": _choice(*SIGMA_PER),
    "sigma_per_axis": _per_axis,
    "max_size": _at_least(1),
    "max_fit_error": _max_fit_error,
    "search_max_dim": _at_least(1),
    "budget": _positive,
    "subsample.mode": _choice(*SUBSAMPLE_MODES),
    "subsample.r": r_problem,
    "subsample.where": _choice(*SUBSAMPLE_WHERE),
    "subsample.interpolation": _choice(*INTERPOLATIONS),
    "aspp.tie": _tie,
    "calibration.max_samples": _at_least(1),
    "calibration.ridge": _non_negative,
    "calibration.sigma_fractions": _fraction,
    "calibration.sigma_tolerance": _non_negative,
    "calibration.search_fraction": _unit_interval_open_left,
    "calibration.direct_max_dim": _at_least(0),  # 0: every layer takes the wide solver
    "calibration.design_bytes": _at_least(1),
    "calibration.max_iter": _at_least(1),
    "calibration.wide_solver": _choice(*WIDE_SOLVERS),
    "calibration.seed": _at_least(0),
    "rules.match": _match,
    "finetune.optimizer": _choice(*OPTIMIZERS),
    "finetune.lr": _positive,
    "finetune.sigma_lr": _non_negative,
    "finetune.momentum": _unit_interval_open_right,
    "finetune.weight_decay": _non_negative,
    "finetune.epochs": _at_least(1),
    "finetune.batch_size": _at_least(1),
    "finetune.schedule": _choice(*SCHEDULES),
    "finetune.warmup_epochs": _non_negative,
    "finetune.step_size": _at_least(1),
    "finetune.gamma": _gamma,
    "finetune.grad_clip": _positive,
    "finetune.amp": _choice(*AMP_MODES),
    "finetune.seed": _at_least(0),
    "finetune.checkpoint_every": _at_least(0),
    "finetune.num_workers": _at_least(0),
    "finetune.class_weights": _choice(*CLASS_WEIGHTS),
}

def _type_name(tp) -> str:
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    origin = typing.get_origin(tp)
    if origin is list:
        return "a list"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return {bool: "true/false", int: "an int", float: "a number", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value, tp, where: str, key: str):
    """``value`` as type ``tp`` (dataclasses built from mappings), or RecipeError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        for arg in args:  # containers go to the matching container type, errors and all
            if dataclasses.is_dataclass(arg) and isinstance(value, (Mapping, arg)):
                return _convert(value, arg, where, key)
            if typing.get_origin(arg) is list and isinstance(value, (list, tuple)):
                return _convert(value, arg, where, key)
        for arg in args:
            try:
                return _convert(value, arg, where, key)
            except RecipeError:
                pass
        raise _type_error(value, tp, where, key)
    if tp is type(None):
        if value is None:
            return None
        raise _type_error(value, tp, where, key)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            value = dataclasses.asdict(value)
        return build(tp, value, where=where, key=key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _type_error(value, tp, where, key)
        (item,) = typing.get_args(tp) or (Any,)
        return [_convert(v, item, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"recipe schema: unsupported annotation {tp!r} at {key}")
    raise _type_error(value, tp, where, key)


def _type_error(value, tp, where, key) -> RecipeError:
    return RecipeError(where, key, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}", value)


def _check_value(value, key: str, where: str, raw=None) -> None:
    if isinstance(value, list):  # each item by the key's check (``calibration.sigma_fractions[1]``)
        for i, item in enumerate(value):
            _check_value(item, f"{key}[{i}]", where)
        return
    if value is None or isinstance(value, dict) or dataclasses.is_dataclass(value):
        return
    generic = _generic_key(key)
    check = CHECKS.get(generic) or (CHECKS.get(generic.split(".", 1)[1]) if generic.startswith("rules.") else None)
    if check is None:
        return
    allowed = check(value)
    if allowed is not None:
        shown = value if raw is None else raw
        raise RecipeError(where, key, f"{shown!r} is not allowed; expected {allowed}", shown)


def _generic_key(key: str) -> str:
    """``rules[2].order`` → ``rules.order``."""
    return re.sub(r"\[\d+\]", "", key)


def build(cls, data, *, where: str, key: str = ""):
    """Instantiate dataclass ``cls`` from mapping ``data``, converting and checking every value."""
    if not isinstance(data, Mapping):
        raise RecipeError(where, key, f"expected a mapping of keys to values, got {type(data).__name__} {data!r}", data)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    prefix = f"{key}." if key else ""
    for k in data:
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RecipeError(
                where, f"{prefix}{k}", f"unknown key{hint} (allowed keys here: {', '.join(names)})", k
            )
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecipeError(where, f"{prefix}{f.name}", f"required key is missing (expected {_type_name(hints[f.name])})")
            continue
        path = f"{prefix}{f.name}"
        value = _convert(data[f.name], hints[f.name], where, path)
        _check_value(value, path, where, raw=data[f.name])
        values[f.name] = value
    return cls(**values)


def recipe_from_dict(data, *, where: str = "recipe") -> Recipe:
    """A checked :class:`Recipe` from a mapping with the YAML layout (cross-field rules included)."""
    recipe = build(Recipe, data, where=where)
    sub = recipe.subsample
    if sub.mode == "safe" and sub.where == "every_layer" and sub.r == "auto":
        raise RecipeError(
            where, "subsample.r", "'auto' is not allowed with subsample.where 'every_layer' (there is no original "
            "stride to match); give a number, e.g. 4 as in the paper", sub.r,
        )
    return recipe
