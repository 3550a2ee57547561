"""The ``njetify`` command line (typer, plain help text, rich output). Commands live one per module;
this wires them up."""

from __future__ import annotations

import typer
from typer.core import TyperCommand

from .common import STATE


class Command(TyperCommand):
    """A command whose usage line reads ``njetify convert [OPTIONS] MODEL`` (typer writes ``{MODEL}``)."""

    def collect_usage_pieces(self, ctx):
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in super().collect_usage_pieces(ctx)]

    def format_options(self, ctx, formatter):
        """Arguments by name only (no ``<str>`` type labels), then the options."""
        args = [(p.metavar or p.name.upper(), (p.help or "") + ("  [required]" if p.required else ""))
                for p in self.get_params(ctx) if p.param_type_name == "argument"]
        opts = [rec for p in self.get_params(ctx) if p.param_type_name == "option"
                for rec in [p.get_help_record(ctx)] if rec is not None]
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        with formatter.section("Options"):
            formatter.write_dl(opts)


app = typer.Typer(
    name="njetify",
    help=(
        "Make a CNN's resolution learnable: convert its convolutions to N-Jet layers "
        "(Gaussian-derivative filters with a learned scale σ) and its subsampling to "
        "safe-subsampling, fine-tune, inspect, plot, and bake for deployment."
    ),
    epilog=(
        "\b\nExamples:\n"
        "  njetify convert resnet32 --order 3\n"
        "  njetify finetune resnet32-njet.safetensors --data cifar10 --plot\n"
        "  njetify inspect resnet32-njet.safetensors\n"
        "  njetify bake resnet32-njet.safetensors --onnx resnet32.onnx\n"
        "\nRun 'njetify COMMAND --help' for a command's options."
    ),
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 80},
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
    from . import bake_cmd, convert_cmd, finetune_cmd, inspect_cmd, listing, plot_cmd  # noqa: F401
    from . import rescale_cmd  # noqa: F401


_register()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``njetify = "njetify.cli:main"``)."""
    app(args=argv, prog_name="njetify")
