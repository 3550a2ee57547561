"""Load recipes (built-in names or YAML files), apply keyword overrides, check rules against a model.

A recipe file is YAML whose keys are the fields of :class:`~njetify.recipes.schema.Recipe`.
One extra top-level key, ``base: <built-in name or path>``, starts from another recipe:
the file's mappings (``subsample``, ``aspp``, ``finetune``) are merged key by key into
the base's, every other key (``rules`` included) replaces the base's value.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
from importlib import resources
from typing import Any, Mapping

from torch import nn

from .schema import AsppConfig, CalibrationConfig, FinetuneConfig, Recipe, Rule, SubsampleConfig
from .validate import RecipeError, recipe_from_dict

__all__ = [
    "load_recipe", "list_recipes", "resolve_recipe", "recipe_to_dict", "recipe_to_yaml",
    "recipe_source", "validate_rules_against",
]

_SOURCE_ATTR = "_njetify_source"  # where a Recipe came from (not a schema field)
_MERGED = ("subsample", "aspp", "calibration", "finetune")


def _builtin_dir():
    return resources.files("njetify.recipes").joinpath("builtin")


def list_recipes() -> list[str]:
    """Names of the built-in recipes (``njetify/recipes/builtin/*.yaml``), sorted."""
    return sorted(p.name[:-5] for p in _builtin_dir().iterdir() if p.name.endswith(".yaml"))


def recipe_source(recipe: Recipe) -> str:
    """Where ``recipe`` came from: a file path, ``"built-in recipe 'x'"`` or ``"recipe 'name'"``."""
    return getattr(recipe, _SOURCE_ATTR, None) or f"recipe {recipe.name!r}"


def _set_source(recipe: Recipe, where: str) -> Recipe:
    object.__setattr__(recipe, _SOURCE_ATTR, where)
    return recipe


def _is_path(text: str) -> bool:
    return text.endswith((".yaml", ".yml")) or os.sep in text or "/" in text or os.path.isfile(text)


def _read_yaml(path: str, where: str) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(where, "", f"not valid YAML{at}: {problem}") from None
    if data is None:
        raise RecipeError(where, "", "the file is empty; a recipe is a YAML mapping such as 'order: 3'")
    if not isinstance(data, dict):
        raise RecipeError(where, "", f"a recipe must be a YAML mapping of keys to values, got a {type(data).__name__}")
    return data


def _merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if key in _MERGED and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _load_data(name_or_path: str, chain: tuple[str, ...]) -> tuple[dict, str]:
    """The merged raw mapping of a recipe (following ``base:``) and where it came from."""
    if _is_path(name_or_path):
        path = os.path.abspath(name_or_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"recipe: no such file {name_or_path!r}")
        where, default_name = name_or_path, os.path.splitext(os.path.basename(path))[0]
    else:
        names = list_recipes()
        if name_or_path not in names:
            close = difflib.get_close_matches(name_or_path, names, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"recipe: unknown built-in recipe {name_or_path!r}{hint} (built-ins: {', '.join(names)}; "
                "or give a path to a .yaml file)"
            )
        path, where, default_name = None, f"built-in recipe {name_or_path!r}", name_or_path
    key = path or name_or_path
    if key in chain:
        raise RecipeError(where, "base", f"circular 'base' chain: {' -> '.join(chain + (key,))}")
    if path is None:
        with resources.as_file(_builtin_dir().joinpath(f"{name_or_path}.yaml")) as p:
            data = _read_yaml(str(p), where)
    else:
        data = _read_yaml(path, where)
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise RecipeError(where, "base", f"expected a built-in recipe name or a path, got {base!r}", base)
        if path is not None and _is_path(base) and not os.path.isabs(base):
            base = os.path.join(os.path.dirname(path), base)
        base_data, _ = _load_data(base, chain + (key,))
        base_data.pop("name", None)
        base_data.pop("description", None)
        data = _merge(base_data, data)
    data.setdefault("name", default_name)
    return data, where


def load_recipe(name_or_path: str | os.PathLike | Recipe | Mapping) -> Recipe:
    """A checked :class:`Recipe` from a built-in name (``njetify.list_recipes()``), a YAML path,
    a mapping with the YAML layout, or a Recipe (checked and copied).

    Raises :class:`RecipeError` (a ValueError) naming the file, the key path, the bad value
    and what is allowed; ``FileNotFoundError`` for a missing file; ``ValueError`` for an
    unknown built-in name (with the closest names).
    """
    if isinstance(name_or_path, Recipe):
        where = recipe_source(name_or_path)
        return _set_source(recipe_from_dict(recipe_to_dict(name_or_path), where=where), where)
    if isinstance(name_or_path, Mapping):
        return _set_source(recipe_from_dict(dict(name_or_path), where="recipe mapping"), "recipe mapping")
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            f"recipe must be a built-in name, a YAML path, a mapping or a Recipe, got {type(name_or_path).__name__}"
        )
    data, where = _load_data(os.fspath(name_or_path), ())
    return _set_source(recipe_from_dict(data, where=where), where)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain data with the YAML layout (rules list only the keys they set)."""
    data = dataclasses.asdict(recipe)
    data["rules"] = [{k: v for k, v in rule.items() if v is not None} for rule in data["rules"]]
    return data


def recipe_to_yaml(recipe: Recipe) -> str:
    """The recipe as YAML text that :func:`load_recipe` reads back to an equal Recipe."""
    import yaml

    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, allow_unicode=True)


#: Keyword overrides that go into ``subsample``.
_SUBSAMPLE_SHORTCUTS = ("r", "where", "interpolation")
_NOT_OVERRIDABLE = ("name",)
#: Blocks a keyword override merges into (a mapping) or replaces (the block's dataclass).
#: Recipe blocks an override may give whole (the dataclass), in part (a mapping), or — where a block has
#: one — by its shorthand field alone.
_BLOCKS = {"subsample": (SubsampleConfig, "mode"), "aspp": (AsppConfig, "tie"),
           "finetune": (FinetuneConfig, None), "calibration": (CalibrationConfig, None)}


def resolve_recipe(recipe: Recipe | str | os.PathLike | Mapping | None = None, **overrides) -> Recipe:
    """``recipe`` (None: the built-in ``default``) with keyword ``overrides`` applied; a new, checked Recipe.

    ``None`` means "not given". Any top-level field can be overridden (``order=2``,
    ``sigma_init=1.0``, ``max_size=None`` is *not* possible — None means not given).
    Shortcuts: ``subsample="keep"`` (a mode, or a mapping / SubsampleConfig), ``r=4``,
    ``where="every_layer"``, ``interpolation="bilinear"``; ``aspp=True`` (tie) or a mapping;
    ``finetune={"lr": 0.01}`` and ``calibration={"ridge": 1e-2}`` merge into their block (a
    FinetuneConfig / CalibrationConfig replaces it);
    ``rules=[...]`` are *appended* after the recipe's own rules (so they win).
    """
    base = load_recipe("default" if recipe is None else recipe)
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return base
    where = "keyword override"
    data = recipe_to_dict(base)
    names = [f.name for f in dataclasses.fields(Recipe) if f.name not in _NOT_OVERRIDABLE]
    for key, value in given.items():
        if key in _SUBSAMPLE_SHORTCUTS:
            data["subsample"][key] = value
        elif key in _BLOCKS:
            block, shorthand = _BLOCKS[key]
            if isinstance(value, block):
                data[key] = dataclasses.asdict(value)
            elif isinstance(value, Mapping):
                data[key].update(value)
            elif shorthand is not None:
                data[key][shorthand] = value  # e.g. subsample="keep", aspp=False
            else:
                raise RecipeError(where, key, f"expected a mapping or a {block.__name__}, got {value!r}", value)
        elif key == "rules":
            extra = value if isinstance(value, (list, tuple)) else [value]
            data["rules"] += [dataclasses.asdict(r) if isinstance(r, Rule) else r for r in extra]
        elif key in names:
            data[key] = value
        else:
            allowed = names + list(_SUBSAMPLE_SHORTCUTS)
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RecipeError(where, key, f"unknown recipe setting{hint} (allowed: {', '.join(allowed)})", key)
    return _set_source(recipe_from_dict(data, where=where), f"{recipe_source(base)} + keyword overrides")


def validate_rules_against(recipe: Recipe, model: nn.Module) -> list[list[str]]:
    """Check that every rule's ``match`` glob matches at least one module path of ``model``.

    Returns, per rule, the module paths it matches. Raises :class:`RecipeError` for the
    first rule that matches nothing, with the closest module paths.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"validate_rules_against: model must be an nn.Module, got {type(model).__name__}")
    paths = [p for p, _ in model.named_modules() if p]
    matched = []
    for i, rule in enumerate(recipe.rules):
        hits = [p for p in paths if rule.matches(p)]
        if not hits:
            close = difflib.get_close_matches(rule.match, paths, n=3, cutoff=0.5)
            hint = f"; closest module paths: {', '.join(map(repr, close))}" if close else ""
            raise RecipeError(
                recipe_source(recipe), f"rules[{i}].match",
                f"{rule.match!r} matches no module of {type(model).__name__}{hint} (globs match dotted module "
                f"paths as in model.named_modules(), e.g. {paths[0]!r}, 'layer1.*', '*.conv2')"
                if paths else f"{rule.match!r}: {type(model).__name__} has no sub-modules",
                rule.match,
            )
        matched.append(hits)
    return matched
