"""Recipes: schema (``schema.py``); loading and validation come with the recipes issue."""

from .schema import AsppConfig, FinetuneConfig, LayerSettings, Recipe, Rule, SubsampleConfig

__all__ = ["AsppConfig", "FinetuneConfig", "LayerSettings", "Recipe", "Rule", "SubsampleConfig"]
