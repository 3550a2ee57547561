"""``njetify models [PATTERN]`` and ``njetify recipes [NAME]``: what can be converted, and how."""

from __future__ import annotations

import typer

from .app import app
from .common import DebugOption, command, console
from .errors import user_errors

_MODELS_EPILOG = (
    "Examples:\n"
    "  njetify models                   the built-ins (no download needed)\n"
    "  njetify models resnet            every name containing 'resnet'\n"
    "  njetify models 'tv:*'            torchvision models (also timm:, smp:)\n"
    "  njetify models --builtin --plain one name per line, for scripts"
)


@command(app, "models", epilog=_MODELS_EPILOG)
def models(
    pattern: str | None = typer.Argument(
        None, metavar="PATTERN", help="Glob on model names (case-insensitive); without * or ? it matches names containing it."),
    builtin: bool = typer.Option(False, "--builtin", help="Only the built-in architectures."),
    plain: bool = typer.Option(False, "--plain", help="One name per line, nothing else."),
    debug: bool = DebugOption,
) -> None:
    """List the model names that convert accepts.

    Built-in architectures (no download needed) and library models with a
    prefix: timm:, tv: (torchvision), smp: (segmentation-models-pytorch).
    """
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


_RECIPES_EPILOG = (
    "Examples:\n"
    "  njetify recipes                 the built-in recipes\n"
    "  njetify recipes paper-resnet32  one recipe as YAML (copy it to make yours)\n"
    "  njetify recipes my.yaml         check a recipe file and print it resolved"
)


@command(app, "recipes", epilog=_RECIPES_EPILOG)
def recipes(
    name: str | None = typer.Argument(None, metavar="NAME", help="A built-in name or a YAML path: print it as YAML."),
    debug: bool = DebugOption,
) -> None:
    """List the built-in recipes, or print one as YAML."""
    from ..recipes import list_recipes, load_recipe, recipe_to_yaml

    con = console()
    if name is not None:
        with user_errors(what="recipe"):
            rec = load_recipe(name)
        typer.echo(recipe_to_yaml(rec), nl=False)
        return
    from rich.table import Table

    t = Table(title="built-in recipes (use with --recipe NAME)", title_justify="left", box=None,
              pad_edge=False, header_style="bold")
    t.add_column("name", no_wrap=True, style="cyan")
    t.add_column("N", justify="right")
    t.add_column("subsample", no_wrap=True)
    t.add_column("description", overflow="fold")
    for n in list_recipes():
        rec = load_recipe(n)
        sub = rec.subsample.mode if rec.subsample.mode == "keep" else f"safe r={rec.subsample.r}"
        if rec.subsample.mode == "safe" and rec.subsample.where == "every_layer":
            sub += " all"
        t.add_row(n, str(rec.order), sub, rec.description)
    con.print(t)
