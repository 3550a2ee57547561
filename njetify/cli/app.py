"""The ``njetify`` command line (typer + rich). Commands live one per module; this wires them up."""

from __future__ import annotations

import typer

from .common import STATE

app = typer.Typer(
    name="njetify",
    help=(
        "Make a CNN's resolution learnable: convert its convolutions to N-Jet layers "
        "(Gaussian-derivative filters with a learned scale σ) and its subsampling to "
        "safe-subsampling, fine-tune, inspect, and bake for deployment."
    ),
    epilog=(
        "Examples:\n\n"
        "  njetify convert resnet32 --order 3\n\n"
        "  njetify inspect resnet32-njet.safetensors\n\n"
        "  njetify bake resnet32-njet.safetensors --onnx resnet32.onnx\n\n"
        "Run 'njetify COMMAND --help' for a command's options."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("njetify")
        except PackageNotFoundError:  # running from a source tree that is not installed
            from .. import __version__ as v
        typer.echo(f"njetify {v}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors (any command)."),
) -> None:
    STATE["debug"] = debug


def _register() -> None:
    from . import bake_cmd, convert_cmd, finetune_cmd, inspect_cmd, listing  # noqa: F401


_register()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``njetify = "njetify.cli:main"``)."""
    app(args=argv, prog_name="njetify")
