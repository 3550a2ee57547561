"""Shared plumbing of the CLI tests: a test-only model registered for a module, and a CliRunner call."""

from __future__ import annotations

import contextlib

import torch
from typer.testing import CliRunner

from njetify.cli import app
from njetify.models import registry


@contextlib.contextmanager
def registered(name: str, cls):
    """``cls`` registered as built-in model ``name`` meanwhile (removed afterwards)."""
    registry.register_model(name, description="test-only tiny CNN", overwrite=True)(cls)
    try:
        yield name
    finally:
        registry._BUILTINS.pop(name, None)


def cli_invoker(tmp_path, monkeypatch, columns: int = 100):
    """``invoke(*args)``: the njetify CLI inside ``tmp_path``, ``columns`` wide, no colour, seed 0."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args, env=None):
        torch.manual_seed(0)
        return runner.invoke(app, list(args), env={"COLUMNS": str(columns), "NO_COLOR": "1", **(env or {})})

    return invoke
