"""``njetify rescale CONVERTED --factor F --out OUT``: move a converted model to inputs F times larger."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from .app import app
from .common import DebugOption, ForceOption, InputSizeOption, command, console, input_size, load_converted, writable_file
from .errors import UserError, user_errors

_EPILOG = (
    "Examples:\n"
    "  njetify rescale mnist-njet.safetensors --factor 2 --out mnist-56px.safetensors\n"
    "  njetify rescale big-njet.safetensors --factor 0.5 --out small.safetensors\n"
    "\n"
    "σ of the layers that see the input's resolution is multiplied by F, and the\n"
    "first safe-subsampling follows, so the maps behind it keep their size: the\n"
    "network sees an input F times larger with the same receptive fields in image\n"
    "units. A σ that would shrink below --min-sigma is held there (named in a\n"
    "warning). 'njetify inspect OUT' shows the resolution it is built for now; bake\n"
    "OUT for deployment."
)


def _positive(text: str, option: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{option}: must be a positive number ({what}), got {text!r}")
    return value


@command(app, "rescale", epilog=_EPILOG)
def rescale(
    converted: Path = typer.Argument(..., metavar="CONVERTED", help="A file written by 'njetify convert' or 'finetune'."),
    factor: str = typer.Option(..., "--factor", "-F", metavar="F", help="New input side / old (2: twice as large)."),
    out: Path = typer.Option(..., "--out", "-o", metavar="PATH", help="Where to write the rescaled model (.safetensors)."),
    min_sigma: str = typer.Option("0.5", "--min-sigma", metavar="PX",
                                  help="Floor for a σ that shrinks (F < 1), in pixels; 'none' for no floor."),
    size: str | None = InputSizeOption,
    force: bool = ForceOption,
    debug: bool = DebugOption,
) -> None:
    """Move a converted model to another input resolution: σ × F, subsampling following."""
    from ..io import save
    from ..rescaling import rescale as rescale_model

    f = _positive(factor, "--factor", "new input side / old: 2 for inputs twice as large, 0.5 for half")
    floor = None if min_sigma.lower() in ("none", "off") else _positive(min_sigma, "--min-sigma", "pixels, or none")
    if out.suffix.lower() != ".safetensors":
        raise UserError(f"--out: must end in .safetensors (a model 'njetify inspect' and 'bake' read), got {str(out)!r}")
    model = load_converted(converted)
    out = writable_file(out, "--out", force)
    with user_errors(ValueError):
        rescaled, report = rescale_model(model, f, input_size=input_size(size), min_sigma=floor)
    with user_errors(ValueError, TypeError, what="--out"):
        save(rescaled, out)
    con = console()
    con.print(report)
    con.print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB)")
