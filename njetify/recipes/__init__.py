"""Recipes: the schema (``schema.py``), loading and checking (``loader.py``, ``validate.py``),
and the built-in YAML files (``builtin/*.yaml``)."""

from .schema import AsppConfig, CalibrationConfig, FinetuneConfig, LayerSettings, Recipe, Rule, SubsampleConfig
from .loader import (
    list_recipes,
    load_recipe,
    recipe_source,
    recipe_to_dict,
    recipe_to_yaml,
    resolve_recipe,
    validate_rules_against,
)
from .validate import RecipeError, recipe_from_dict

__all__ = [
    "AsppConfig",
    "CalibrationConfig",
    "FinetuneConfig",
    "LayerSettings",
    "Recipe",
    "RecipeError",
    "Rule",
    "SubsampleConfig",
    "list_recipes",
    "load_recipe",
    "recipe_from_dict",
    "recipe_source",
    "recipe_to_dict",
    "recipe_to_yaml",
    "resolve_recipe",
    "validate_rules_against",
]
