"""``njetify models [PATTERN]`` and ``njetify recipes [NAME]``: what can be converted, and how."""

from __future__ import annotations

from typing import Optional

import typer

from .app import app
from .common import DebugOption, command, console
from .errors import user_errors

_MODELS_EPILOG = (
    "Examples:\n\n"
    "  njetify models                  the built-ins (no download needed)\n\n"
    "  njetify models resnet           every name containing 'resnet'\n\n"
    "  njetify models 'tv:*'           torchvision models (timm:, tv:, smp: prefixes)\n\n"
    "  njetify models --builtin --plain   one name per line, for scripts"
)


@command(app, "models", epilog=_MODELS_EPILOG)
def models(
    pattern: Optional[str] = typer.Argument(
        None, help="Glob on model names (case-insensitive); without * or ? it matches names containing it."),
    builtin: bool = typer.Option(False, "--builtin", help="Only the built-in architectures."),
    plain: bool = typer.Option(False, "--plain", help="One name per line, nothing else."),
    debug: bool = DebugOption,
) -> None:
    """List the model names [bold]convert[/] accepts: built-ins, [cyan]timm:[/], [cyan]tv:[/], [cyan]smp:[/]."""
    from ..models import list_models, model_entry

    glob = pattern
    if pattern is not None and not any(c in pattern for c in "*?["):
        glob = f"*{pattern}*"
    with user_errors(what="pattern"):  # without a pattern, list only the built-ins: listing libraries is slow
        names = list_models(glob, libraries=not builtin and pattern is not None)
    if plain:
        for n in names:
            typer.echo(n)
        return
    con = console()
    if not names:
        con.print(f"no model name matches {pattern!r}; try 'njetify models' for the built-ins")
        return
    built = [n for n in names if model_entry(n) is not None]
    libs = [n for n in names if model_entry(n) is None]
    if built:
        from rich.table import Table

        t = Table(title="built-in models (no download needed)", title_justify="left", box=None,
                  pad_edge=False, header_style="bold")
        t.add_column("name", no_wrap=True, style="cyan")
        t.add_column("description", overflow="fold")
        for n in built:
            t.add_row(n, model_entry(n).description)
        con.print(t)
    if pattern is None and not builtin:
        con.print("\nlibrary models: timm:<name>, tv:<name> (torchvision), smp:<Arch>:<encoder> "
                  "(segmentation-models-pytorch); list them with a pattern, e.g. njetify models 'tv:*'")
    if not libs:
        return
    counts: dict[str, int] = {}
    for n in libs:
        prefix = n.split(":", 1)[0]
        counts[prefix] = counts.get(prefix, 0) + 1
    from rich.columns import Columns

    con.print(f"\nlibrary models matching {pattern!r}: " + ", ".join(f"{v} {k}:" for k, v in counts.items()))
    con.print(Columns(libs, padding=(0, 2)))
