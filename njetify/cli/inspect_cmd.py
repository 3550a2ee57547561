"""``njetify inspect CONVERTED``: σ, filter size, feature-map sizes and receptive field per layer."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .app import app
from .common import (DebugOption, ForceOption, InputSizeOption, command, console, free_outputs, input_size,
                     load_converted, writable_folder)
from .errors import UserError, user_errors

_EPILOG = (
    "Examples:\n"
    "  njetify inspect resnet32-njet.safetensors\n"
    "  njetify inspect resnet32-njet.safetensors --input-size 3x64x64\n"
    "  njetify inspect run/model.safetensors --plot figs --layer layer2.0.conv1\n"
    "  njetify inspect run/model.safetensors --plot figs --force   # redraw them\n"
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
    force: bool = ForceOption,
    debug: bool = DebugOption,
) -> None:
    """Per-layer σ, filter size, feature-map size and receptive field, learned and original."""
    from ..resolution import resolution_line
    from ..summary import default_input_size, summarize

    model = load_converted(converted)
    natural = default_input_size(model)
    shape = input_size(size) or natural
    if shape[0] != natural[0]:
        hw = "x".join(map(str, shape[1:]))
        raise UserError(f"--input-size {size}: the model takes {natural[0]} input channel(s), not {shape[0]}; "
                        f"use --input-size {natural[0]}x{hw}")
    with user_errors(ValueError, RuntimeError, what=f"input size {'x'.join(map(str, shape))}"):
        summary = summarize(model, shape)
    summary.layers = parent_first(summary.layers)
    written = []
    if plot is not None:
        from ..plots import plot_sigma, plot_summary

        writable_folder(plot, "--plot")
        history = converted.parent / "history.json"
        njet = [r.path for r in summary.njet_layers]
        if layer is not None and layer not in njet:
            raise UserError(f"--layer: must be the path of an N-Jet layer (e.g. {', '.join(njet[:5])}), got {layer!r}")
        names = ["sigma_layers.png", "sizes.png", f"filters_{(layer or (njet or [''])[0]).replace('.', '_')}.png"]
        free_outputs([plot / n for n in names + (["sigma.png"] if history.is_file() else [])], "--plot", force)
        written = plot_summary(summary, model, plot, layer)
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


def parent_first(rows: list) -> list:
    """Rows in execution order, except that a layer's own sub-module (``conv1.subsample``, which finishes
    inside ``conv1``) is listed right after that layer, not before it."""
    out: list = []
    waiting: dict[str, list] = {}
    paths = {r.path for r in rows}
    for r in rows:
        parent = r.path.rpartition(".")[0]
        if parent in paths and not any(o.path == parent for o in out):
            waiting.setdefault(parent, []).append(r)
            continue
        out.append(r)
        out.extend(waiting.pop(r.path, []))
    for rest in waiting.values():
        out.extend(rest)
    return out
