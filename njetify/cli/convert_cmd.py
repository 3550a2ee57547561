"""``njetify convert MODEL``: build a model, convert it to N-Jet layers, report, save."""

from __future__ import annotations

import json
import re
from enum import Enum
from pathlib import Path

import typer

from .app import app
from .common import DebugOption, InputSizeOption, command, console, existing_file, input_size
from .errors import UserError, stderr_console, user_errors

_EPILOG = (
    "Examples:\n\n"
    "  njetify convert resnet32 --order 3\n\n"
    "  njetify convert resnet32 --recipe paper-resnet32 --out r32.safetensors\n\n"
    "  njetify convert tv:resnet18 --pretrained --num-classes 10 --input-size 3x64x64\n\n"
    "  njetify convert resnet20 --weights ckpt.pth --calibrate cifar10 --data-dir data\n\n"
    "  njetify convert resnet32 --dry-run --json > report.json"
)


class Subsample(str, Enum):
    safe = "safe"
    keep = "keep"


def _parse_r(text: str | None):
    if text is None or text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise UserError(f"--r: must be 'auto' or a positive number (the paper uses 4), got {text!r}")
    return value


def default_out(name: str) -> str:
    """``"timm:resnet50"`` → ``"timm-resnet50-njet.safetensors"``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") + "-njet.safetensors"


def _calibration(name: str, data_dir: Path, batches: int, batch_size: int, download: bool, image_size: int):
    """The first ``batches`` batches of the training split of ``name`` (folder images at ``image_size``)."""
    from ..data import dataset_info, get_dataset

    with user_errors(ValueError, FileNotFoundError, TypeError, what="--calibrate"):
        if name.startswith("folder:"):
            ds = get_dataset(name, "train", augment=False, image_size=image_size)
        else:
            ds = get_dataset(name, "train", data_dir, download=download, augment=False)
        info = dataset_info(name, ds, image_size=image_size)
    import torch

    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    out = []
    for i, batch in enumerate(loader):
        if i >= batches:
            break
        out.append(batch[0] if isinstance(batch, (tuple, list)) else batch)
    return out, info


@command(app, "convert", epilog=_EPILOG)
def convert(
    model: str = typer.Argument(..., help="A model name (see 'njetify models'): built-in, timm:, tv:, smp:."),
    order: int | None = typer.Option(None, "--order", "-n", min=0, max=8, metavar="N",
                                        help="Derivative order N of the N-Jet layers (default: the recipe's, 3)."),
    recipe: str | None = typer.Option(None, "--recipe", metavar="NAME|PATH",
                                         help="A built-in recipe (see 'njetify recipes') or a YAML file."),
    weights: Path | None = typer.Option(None, "--weights", "-w", metavar="PATH", help="Local checkpoint to load first."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Library pretrained weights (downloads)."),
    num_classes: int | None = typer.Option(None, "--num-classes", min=1, metavar="N", help="Output classes."),
    in_chans: int | None = typer.Option(None, "--in-chans", min=1, metavar="N", help="Input channels."),
    size: str | None = InputSizeOption,
    subsample: Subsample | None = typer.Option(None, "--subsample", metavar="safe|keep", help="safe: learned subsampling; keep: strides stay."),
    r: str | None = typer.Option(None, "--r", metavar="auto|FLOAT",
                                    help="Safe-subsampling r: auto keeps the original sizes at σ₀; the paper uses 4."),
    calibrate: str | None = typer.Option(None, "--calibrate", metavar="DATASET",
                                            help="Data-aware fit on a few batches of DATASET (mnist, cifar10, ...)."),
    calibrate_batches: int = typer.Option(4, "--calibrate-batches", min=1, metavar="N", help="Batches for --calibrate."),
    data_dir: Path = typer.Option(Path("data"), "--data-dir", metavar="DIR", help="Where data sets live."),
    download: bool = typer.Option(False, "--download", help="Download the --calibrate data set if missing."),
    out: Path | None = typer.Option(None, "--out", "-o", metavar="PATH", help="Output file (default: MODEL-njet.safetensors)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Convert and report, write nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON only (for scripts)."),
    debug: bool = DebugOption,
) -> None:
    """Convert MODEL to an N-Jet network and save it.

    k×k convolutions become N-Jet layers, strided convolutions and pooling
    become safe-subsampling. Prints one row per convolution and subsampling
    site, parameters and MACs before and after, and the largest output
    difference to the original on a random input. Built-in models need no
    download.
    """
    import torch

    from ..models import create_model
    from ..summary import compare_models
    from ..surgery import convert as convert_model

    r_value = _parse_r(r)
    shape = input_size(size)
    if shape is not None and in_chans is not None and shape[0] != in_chans:
        raise UserError(f"--input-size has {shape[0]} channel(s) but --in-chans is {in_chans}; give one of them")
    rec = None
    if recipe is not None:
        from ..recipes import load_recipe

        with user_errors(ValueError, TypeError, FileNotFoundError, IsADirectoryError, what="--recipe"):
            rec = load_recipe(recipe)
    if weights is not None:
        weights = existing_file(weights, "--weights")
    batches, info = (None, None)
    if calibrate is not None:
        batches, info = _calibration(calibrate, data_dir, calibrate_batches, 16, download,
                                     shape[-1] if shape else 224)
        if shape is None and info.input_size is not None:
            shape = (in_chans or info.in_channels, *info.input_size)
    if in_chans is None and shape is not None and shape[0] != 3:
        in_chans = shape[0]
    with user_errors(ValueError, TypeError, FileNotFoundError):
        net = create_model(model, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained,
                           weights=None if weights is None else str(weights))
    from ..summary import default_input_size

    if shape is None:
        shape = default_input_size(net, model)
    example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    with user_errors(ValueError, what=f"converting {model} at input size {'x'.join(map(str, shape))}"):
        converted, report = convert_model(net, order=order, recipe=rec, subsample=None if subsample is None
                                          else subsample.value, r=r_value, calibration_data=batches,
                                          example_inputs=example)
    stats = compare_models(net, converted, example)
    path = None
    if not dry_run:
        from ..io import save

        path = str(out) if out is not None else default_out(model)
        with user_errors(OSError, what="--out"):
            save(converted, path, report=report, input_shape=(1, *shape))
    if as_json:
        doc = {"model": model, "input_size": list(shape), "output": path, "stats": stats.to_dict(),
               "report": report.to_dict()}
        typer.echo(json.dumps(doc, indent=2, default=str))
        if path:
            stderr_console().print(f"wrote {path}")
        return
    _print(model, shape, report, stats, path, dry_run)


def _print(model, shape, report, stats, path, dry_run) -> None:
    from .render import kv_table, pct, report_tables

    con = console()
    for t in report_tables(report):
        con.print(t)
        con.print()
    for n in report.notes:
        con.print(f"[dim]note:[/] {n}")
    c = report.counts()
    conv, sub = c.get("conv", {}), c.get("subsample", {})
    size = "x".join(map(str, shape))
    rel = stats.max_abs_diff / stats.max_abs_output if stats.max_abs_output else float("nan")
    rows = [
        ("model", f"{model} ({report.model_class}), tracing: {report.tracing.get('mode')}"),
        ("convs", f"{conv.get('converted', 0)} converted, {conv.get('kept', 0) + conv.get('skipped', 0)} kept"),
        ("subsampling", f"{sub.get('subsampled', 0)} made safe, {sub.get('kept', 0)} kept"),
        ("fit", f"{report.calibration.get('fit')}"),
        ("params", pct(stats.params_before, stats.params_after)),
        (f"MACs @{size}", pct(stats.macs_before, stats.macs_after)),
        ("output", (f"max |Δ| {stats.max_abs_diff:.3g} (max |y| {stats.max_abs_output:.3g}, rel {rel:.2g}) "
                    f"on a random {'x'.join(map(str, stats.input_shape))} batch")),
    ]
    if tuple(stats.output_shape_before) != tuple(stats.output_shape_after):
        rows.append(("shape", (f"[red]output {stats.output_shape_after} differs from the original "
                               f"{stats.output_shape_before}[/]")))
    rows.append(("saved", "nothing (--dry-run)" if dry_run else f"{path} ({_mb(path)})"))
    con.print(kv_table(rows, title=f"{model} → N-Jet"))


def _mb(path: str) -> str:
    return f"{Path(path).stat().st_size / 1e6:.2f} MB"
