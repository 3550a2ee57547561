"""``njetify convert MODEL``: build a model, convert it to N-Jet layers, report, save."""

from __future__ import annotations

import json
import math
import re
import warnings
from enum import Enum
from pathlib import Path

import typer

from ..options import MAX_ORDER, SUBSAMPLE_MODES, r_problem
from .app import app
from .common import (
    DataDirOption,
    check_budget,
    DebugOption,
    ForceOption,
    InputSizeOption,
    SeedOption,
    command,
    console,
    input_size,
    plain_weights,
    writable_file,
)
from .errors import UserError, stderr_console, user_errors

_EPILOG = (
    "Examples:\n"
    "  njetify convert resnet32 --order 3\n"
    "  njetify convert resnet32 --recipe paper-resnet32 --out r32.safetensors\n"
    "  njetify convert tv:resnet18 --num-classes 10 --input-size 3x64x64\n"
    "  njetify convert resnet20 --weights ckpt.pth --calibrate cifar10\n"
    "  njetify convert timm:resnet18 --calibrate folder:photos\n"
    "  njetify convert resnet32 --dry-run --json > report.json\n"
    "\n"
    "--calibrate takes a data set name, or folder:PATH: any images, no labels."
)


#: ``--subsample`` choices: the allowed ``subsample.mode`` values of :mod:`njetify.options`.
Subsample = Enum("Subsample", {m: m for m in SUBSAMPLE_MODES}, type=str)


def _parse_r(text: str | None):
    """``--subsample-r``: None (the recipe's), ``"auto"`` or a number, checked by :func:`njetify.options.r_problem`."""
    if text is None or text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = text
    problem = r_problem(value)
    if problem:
        raise UserError(f"--subsample-r: must be {problem}, got {text!r}")
    return value


def _parse_gate(text: str | None):
    """``--max-fit-error``: None (the recipe's), ``inf`` for "none" (a gate that never reverts) or a number ≥ 0."""
    if text is None or text.lower() in ("none", "null", "off"):
        return text if text is None else math.inf
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise UserError(f"--max-fit-error: must be a relative error ≥ 0 (e.g. 0.5) or 'none' for no gate, got {text!r}")
    return value


def default_out(name: str) -> str:
    """``"timm:resnet50"`` → ``"timm-resnet50-njet.safetensors"``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") + "-njet.safetensors"


@command(app, "convert", epilog=_EPILOG)
def convert(
    model: str = typer.Argument(..., metavar="MODEL",
                                help="A model name (see 'njetify models'): built-in, timm:, tv:, smp:."),
    order: int | None = typer.Option(None, "--order", "-n", min=0, max=MAX_ORDER, metavar="N",
                                     help="Derivative order N of the N-Jet layers (default: the recipe's, 3)."),
    recipe: str | None = typer.Option(None, "--recipe", metavar="NAME|PATH",
                                      help="A built-in recipe (see 'njetify recipes') or a YAML file."),
    weights: Path | None = typer.Option(None, "--weights", "-w", metavar="PATH",
                                        help="Local checkpoint (.pth, .pt, .safetensors) to load first."),
    pretrained: bool = typer.Option(False, "--pretrained", help="The library's pretrained weights (downloads)."),
    num_classes: int | None = typer.Option(None, "--num-classes", min=1, metavar="N", help="Output classes."),
    in_chans: int | None = typer.Option(None, "--in-chans", min=1, metavar="N", help="Input channels."),
    size: str | None = InputSizeOption,
    subsample: Subsample | None = typer.Option(None, "--subsample", metavar="safe|keep",
                                               help="safe: learned subsampling (default); keep: strides stay."),
    r: str | None = typer.Option(None, "--subsample-r", metavar="auto|R",
                                 help="r of safe-subsampling, factor (1/2)^(σ/r): auto keeps the original "
                                      "sizes at σ₀ (default); the paper uses 4."),
    calibrate: str | None = typer.Option(None, "--calibrate", metavar="DATA",
                                         help="Refit every layer to reproduce the original's outputs on a few "
                                              "batches of DATA: mnist, cifar10, ... or folder:PATH."),
    max_fit_error: str | None = typer.Option(None, "--max-fit-error", metavar="E|none",
                                             help="Fidelity gate: a layer whose relative error after the fit is "
                                                  "above E stays the original conv (default: the recipe's, 0.5)."),
    budget: float | None = typer.Option(None, "--budget", metavar="B",
                                        help="Cost budget: the converted model may cost at most B × the original's "
                                             "MACs at the input size (e.g. 1.3); filter sizes are capped per layer "
                                             "so it holds while σ learns."),
    calibrate_batches: int = typer.Option(4, "--calibrate-batches", min=1, metavar="N",
                                          help="Batches for --calibrate."),
    calibrate_batch_size: int = typer.Option(16, "--calibrate-batch-size", min=1, metavar="N",
                                             help="Images per calibration batch."),
    data_dir: Path | None = DataDirOption,
    download: bool = typer.Option(False, "--download", help="Download the --calibrate data set if missing."),
    out: Path | None = typer.Option(None, "--out", "-o", metavar="PATH",
                                    help="Output file (default: MODEL-njet.safetensors)."),
    force: bool = ForceOption,
    seed: int = SeedOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="Convert and report, write nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON only (for scripts)."),
    debug: bool = DebugOption,
) -> None:
    """Convert MODEL to an N-Jet network and save it.

    k×k convolutions become N-Jet layers, strided convolutions and pooling
    become safe-subsampling. Prints one row per convolution and subsampling
    site, parameters and MACs before and after, and the largest output
    difference to the original on a random input. Built-in models need no
    download; the same command gives the same file (--seed).
    """
    import torch

    from ..models import create_model
    from ..summary import compare_models, default_input_size
    from ..surgery import convert as convert_model

    r_value, gate = _parse_r(r), _parse_gate(max_fit_error)
    check_budget(budget)
    shape = input_size(size)
    if shape is not None and in_chans is not None and shape[0] != in_chans:
        raise UserError(f"--input-size has {shape[0]} channel(s) but --in-chans is {in_chans}; give one of them")
    rec = None
    if recipe is not None:
        from ..recipes import load_recipe

        with user_errors(ValueError, TypeError, FileNotFoundError, IsADirectoryError, what="--recipe"):
            rec = load_recipe(recipe)
    if weights is not None:
        weights = plain_weights(weights)
    path = None if dry_run else writable_file(out if out is not None else default_out(model), "--out", force)
    batches, info = (None, None)
    if calibrate is not None:
        from .calibration import calibration_batches

        batches, info = calibration_batches(calibrate, data_dir, calibrate_batches, calibrate_batch_size, download,
                                            shape[-1] if shape else 224, in_chans or (shape[0] if shape else None))
        if shape is None and info.input_size is not None:
            shape = (in_chans or info.in_channels, *info.input_size)
    if in_chans is None and shape is not None and shape[0] != 3:
        in_chans = shape[0]
    torch.manual_seed(seed)  # random initialisation and every random draw below
    with user_errors(ValueError, TypeError, FileNotFoundError):
        net = create_model(model, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained,
                           weights=None if weights is None else str(weights))
    if shape is None:
        shape = default_input_size(net, model)
    example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(seed))
    con = stderr_console() if as_json else console()
    with user_errors(ValueError, what=f"converting {model} at input size {'x'.join(map(str, shape))}"), \
            _watch(batches, net, con), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*has no convertible convolution")  # said below, as an error
        overrides = {"order": order, "subsample": None if subsample is None else subsample.value, "r": r_value,
                     "max_fit_error": gate, "budget": budget}  # one recipe key per option
        converted, report = convert_model(net, recipe=rec, calibration_data=batches, example_inputs=example,
                                          **overrides)
    stats = compare_models(net, converted, example, unzero=True)
    changed = any(row.action in ("converted", "subsampled") for row in report.rows)
    if changed and path is not None:
        from ..io import save

        save(converted, path, report=report, input_shape=(1, *shape))
    if as_json:
        doc = {"model": model, "input_size": list(shape), "output": None if not changed or path is None else str(path),
               "stats": stats.to_dict(), "report": report.to_dict()}
        typer.echo(json.dumps(doc, indent=2, default=str))
    else:
        _print(model, shape, report, stats, path if changed else None, dry_run)
    if not changed:
        raise UserError(f"{model} ({report.model_class}) has nothing to convert: no k×k convolution with k > 1 "
                        "and no strided op became an N-Jet layer or safe-subsampling (see the reasons above); "
                        "nothing was written")
    if as_json and path is not None:
        stderr_console().print(f"wrote {path}")


def _watch(batches, net, con):
    """A :class:`CalibrationWatch` while calibrating, else nothing."""
    import contextlib

    if not batches:
        return contextlib.nullcontext()
    from .calibration import CalibrationWatch, count_convertible

    x = batches[0]
    con.print(f"calibrating about {count_convertible(net)} layers on {len(batches)} batch(es) of "
              f"{x.shape[0]} images {'x'.join(map(str, x.shape[1:]))}")
    return CalibrationWatch(count_convertible(net), con)


def _why_zero(stats) -> str:
    """Why a random-weight check shows no difference, with the check that does (empty when |Δ| > 0)."""
    if stats.max_abs_diff_unzeroed is None:  # set when |Δ| is float rounding and some norm scales are 0
        return ""
    d, y = stats.max_abs_diff_unzeroed, stats.max_abs_output_unzeroed
    again = (f"; with their scales set to 1 in both models: max |Δ| {d:.3g} (max |y| {y:.3g}, "
             f"rel {d / y if y else float('nan'):.2g})")
    return (f". It is ~0 because {stats.zero_norms} normalisation layer(s) have scale 0 (random weights: timm "
            f"zero-initialises each residual block's last BatchNorm), so the converted blocks add nothing{again}")


def _print(model, shape, report, stats, path, dry_run) -> None:
    from .errors import cli_words
    from .render import kv_table, pct

    import dataclasses

    from rich.console import Group

    con = console()
    shown = dataclasses.replace(report, notes=[cli_words(n) for n in report.notes])
    con.print(Group(*shown.rich_parts(summary=False)))
    conv, sub = report.counts().get("conv", {}), report.subsampling_counts()
    advice = report.gate_advice(cli=True)
    fixed = f" ({sub['fixed']} fixed at 1/stride: their σ source kept its conv)" if sub["fixed"] else ""
    size = "x".join(map(str, shape))
    rel = stats.max_abs_diff / stats.max_abs_output if stats.max_abs_output else float("nan")
    cal = report.calibration
    fit = f"{cal.get('fit')}" + (f" on {cal.get('batches')} batch(es)" if cal.get("batches") else "")
    rows = [
        ("model", f"{model} ({report.model_class}), tracing: {report.tracing.get('mode')}"),
        ("convs", f"{conv.get('converted', 0)} converted, {conv.get('kept', 0) + conv.get('skipped', 0)} kept"
                  + (f"; [yellow]{advice}[/]" if advice else "")),
        ("subsampling", f"{sub['made_safe']} made safe, {sub['kept']} kept{fixed}"),
        ("fit", cli_words(fit)),
        ("params", pct(stats.params_before, stats.params_after)),
        (f"MACs @{size}", pct(stats.macs_before, stats.macs_after)),
        *_budget_row(report.macs),
        ("output", (f"max |Δ| {stats.max_abs_diff:.3g} (max |y| {stats.max_abs_output:.3g}, rel {rel:.2g}) "
                    f"on a random {'x'.join(map(str, stats.input_shape))} batch" + _why_zero(stats))),
    ]
    if tuple(stats.output_shape_before) != tuple(stats.output_shape_after):
        rows.append(("shape", (f"[red]output {stats.output_shape_after} differs from the original "
                               f"{stats.output_shape_before}[/]")))
    if dry_run:
        rows.append(("saved", "nothing (--dry-run)"))
    elif path is not None:
        rows.append(("saved", f"{path} ({Path(path).stat().st_size / 1e6:.2f} MB)"))
    con.print(kv_table(rows, title=f"{model} → N-Jet"))


def _budget_row(macs: dict) -> list[tuple[str, str]]:
    """The ``budget`` row of the summary (none without a budget)."""
    if macs.get("budget") is None:
        return []
    caps = list(macs.get("caps", {}).values()) or [0]
    return [("budget", f"{macs['budget']:g}× the original's MACs: filters capped at {min(caps)}–{max(caps)} px, "
                       f"at most {macs['ceiling']:.2f}× while σ learns")]
