"""``njetify inspect CONVERTED``: σ, filter size, feature-map sizes and receptive field per layer."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .app import app
from .common import DebugOption, InputSizeOption, command, console, input_size, load_converted
from .errors import user_errors

_EPILOG = (
    "Examples:\n\n"
    "  njetify inspect resnet32-njet.safetensors\n\n"
    "  njetify inspect resnet32-njet.safetensors --input-size 3x64x64\n\n"
    "  njetify inspect resnet32-njet.safetensors --plot figs --layer layer2.0.conv1\n\n"
    "Columns: σ and filter size s (pixels), output side at the input size with the\n"
    "learned σ (out) and with the original strides (orig), theoretical receptive\n"
    "field in input pixels, learned (RF) and original (RF₀)."
)


@command(app, "inspect", epilog=_EPILOG)
def inspect(
    converted: Path = typer.Argument(..., help="A file written by 'njetify convert' or 'finetune'."),
    size: str | None = InputSizeOption,
    plot: Path | None = typer.Option(None, "--plot", metavar="DIR",
                                        help="Write PNGs: σ per layer, feature-map sizes, one layer's filters."),
    layer: str | None = typer.Option(None, "--layer", help="N-Jet layer whose filters --plot draws."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON only."),
    debug: bool = DebugOption,
) -> None:
    """Per-layer σ, filter size, feature-map size and receptive field."""
    from ..summary import default_input_size, summarize

    model = load_converted(converted)
    shape = input_size(size) or default_input_size(model)
    with user_errors(ValueError, what=f"input size {'x'.join(map(str, shape))}"):
        summary = summarize(model, shape)
    written = []
    if plot is not None:
        from ..summary.plots import plot_all

        with user_errors(ValueError, what="--layer"):
            written = plot_all(summary, model, plot, layer)
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
        return
    con = console()
    con.print(summary.table())
    for p in written:
        con.print(f"wrote {p}")
