"""``njetify inspect CONVERTED``: σ, filter size, feature-map sizes and receptive field per layer."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .app import app
from .common import DebugOption, InputSizeOption, command, console, input_size, load_converted, writable_folder
from .errors import user_errors

_EPILOG = (
    "Examples:\n"
    "  njetify inspect resnet32-njet.safetensors\n"
    "  njetify inspect resnet32-njet.safetensors --input-size 3x64x64\n"
    "  njetify inspect run/model.safetensors --plot figs --layer layer2.0.conv1\n"
    "\n"
    "Columns, in pixels: σ; filter size s and s0 (the kernel it replaced); output\n"
    "side out and out0 (the original network); theoretical receptive field RF and\n"
    "RF0 (the original network). A model in a run folder (next to history.json)\n"
    "also gets sigma.png, σ over the training steps, with --plot."
)


@command(app, "inspect", epilog=_EPILOG)
def inspect(
    converted: Path = typer.Argument(..., metavar="CONVERTED", help="A file written by 'njetify convert' or 'finetune'."),
    size: str | None = InputSizeOption,
    plot: Path | None = typer.Option(None, "--plot", metavar="DIR",
                                     help="Write PNGs: σ per layer, sizes, one layer's filters (and σ over training)."),
    layer: str | None = typer.Option(None, "--layer", metavar="PATH", help="N-Jet layer whose filters --plot draws."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON only."),
    debug: bool = DebugOption,
) -> None:
    """Per-layer σ, filter size, feature-map size and receptive field, learned and original."""
    from ..resolution import resolution_line
    from ..summary import default_input_size, summarize

    model = load_converted(converted)
    shape = input_size(size) or default_input_size(model)
    with user_errors(ValueError, what=f"input size {'x'.join(map(str, shape))}"):
        summary = summarize(model, shape)
    written = []
    if plot is not None:
        from ..plots import plot_sigma, plot_summary

        writable_folder(plot, "--plot")
        with user_errors(ValueError, what="--layer"):
            written = plot_summary(summary, model, plot, layer)
        history = converted.parent / "history.json"
        if history.is_file():
            with user_errors(ValueError, what=str(history)):
                written.insert(0, plot_sigma(history, plot / "sigma.png"))
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
        return
    con = console()
    con.print(summary.table())
    con.print(resolution_line(model))
    for p in written:
        con.print(f"wrote {p}")
