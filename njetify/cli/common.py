"""Shared pieces of the commands: consoles, common options, the error-handling decorator."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import typer

from .errors import UserError, handle_errors, user_errors

__all__ = [
    "DebugOption",
    "InputSizeOption",
    "command",
    "console",
    "existing_file",
    "fmt_count",
    "input_size",
    "load_converted",
]

#: The global ``--debug`` flag (set by the app callback; each command also takes ``--debug``).
STATE = {"debug": False}

DebugOption = typer.Option(False, "--debug", help="Show the full traceback on errors.")
InputSizeOption = typer.Option(
    None, "--input-size", "-s", metavar="CxHxW",
    help="Input size as CxHxW, e.g. 3x32x32 (default: the model's own).",
)


def console():
    """The rich console on stdout (created per call; respects NO_COLOR and the terminal width)."""
    from rich.console import Console

    return Console(highlight=False)


def command(app: typer.Typer, name: str, **kwargs):
    """Register ``fn`` as command ``name`` of ``app``, run inside :func:`handle_errors`."""

    def decorator(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kw):
            with handle_errors(STATE["debug"] or bool(kw.get("debug"))):
                return fn(*args, **kw)

        return app.command(name, **kwargs)(wrapper)

    return decorator


def input_size(text: str | None, default=None) -> tuple[int, int, int] | None:
    """Parse ``--input-size`` (``None`` gives ``default``); a bad value is a :class:`UserError`."""
    if text is None:
        return default
    from ..summary import parse_input_size

    with user_errors(ValueError, what="--input-size"):
        return parse_input_size(text)


def existing_file(path: Path | str, option: str) -> Path:
    """``path`` as a Path that exists and is a file, else a :class:`UserError` naming ``option``."""
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise UserError(f"{option}: no such file: {str(path)!r}")
    if p.is_dir():
        raise UserError(f"{option}: {str(path)!r} is a directory, expected a file")
    return p


def fmt_count(n: int | None, unit: str = "") -> str:
    """``1234567`` → ``"1.23M"`` (k, M, G)."""
    if n is None:
        return "-"
    for suffix, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}{unit}"
    return f"{n}{unit}"


def load_converted(path: Path | str):
    """``njetify.load(path)`` with missing files and bad files as :class:`UserError`."""
    p = existing_file(path, "CONVERTED")
    from ..io import load

    with user_errors(ValueError, TypeError, FileNotFoundError, what=str(path)):
        return load(p)
