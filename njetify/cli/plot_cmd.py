"""``njetify plot RUN_DIR``: the figures of a fine-tuning run (σ over steps, sizes, curves)."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app
from .common import DebugOption, ForceOption, command, console, free_outputs, writable_folder
from .errors import UserError, user_errors

_EPILOG = (
    "Examples:\n"
    "  njetify plot resnet32-finetune\n"
    "  njetify plot resnet32-finetune --out figs\n"
    "  njetify plot resnet32-finetune --force      # draw its PNGs again\n"
    "\n"
    "sigma.png: σ of every N-Jet layer over the training steps; dotted lines mark\n"
    "where the filter size changes (σ 0.5 → 3x3, 1.0 → 5x5, ...).\n"
    "sigma_layers.png: σ per layer at the end, next to σ at conversion.\n"
    "sizes.png: feature-map and filter sizes per layer, original vs learned.\n"
    "curves.png: training loss per step, validation loss and accuracy."
)


@command(app, "plot", epilog=_EPILOG)
def plot(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="A folder written by 'njetify finetune'."),
    out: Path | None = typer.Option(None, "--out", "-o", metavar="DIR", help="Where the PNGs go (default: RUN_DIR)."),
    force: bool = ForceOption,
    debug: bool = DebugOption,
) -> None:
    """Draw a fine-tuning run: σ over the steps, sizes, loss and accuracy.

    Works while the run is going (it reads RUN_DIR/history.json) and after.
    """
    from ..plots import plot_history
    from .run_folder import PLOTS

    if not (run_dir / "history.json").is_file():
        raise UserError(f"RUN_DIR: {str(run_dir)!r} holds no history.json; give the --out folder of "
                        "'njetify finetune'")
    out = out or run_dir
    writable_folder(out, "--out")
    free_outputs([out / name for name in PLOTS], "--out" if out != run_dir else "RUN_DIR", force)
    with user_errors(ValueError, what=str(run_dir / "history.json")):
        written = plot_history(run_dir, out)
    con = console()
    for p in written:
        con.print(f"wrote {p}")
