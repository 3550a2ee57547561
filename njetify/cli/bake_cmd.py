"""``njetify bake CONVERTED``: freeze σ into plain convolutions and fixed resizes; optional ONNX."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import typer

from .app import app
from .common import (
    DebugOption,
    ForceOption,
    InputSizeOption,
    command,
    console,
    input_size,
    load_converted,
    writable_file,
)
from .errors import UserError, user_errors

_EPILOG = (
    "Examples:\n"
    "  njetify bake resnet32-njet.safetensors\n"
    "  njetify bake run/model.safetensors --out r32.pt2 --onnx r32.onnx\n"
    "\n"
    "A .pt2 file is a torch.export program: torch.export.load(path).module()\n"
    "runs it without njetify (batch size free, H and W fixed). A .pt file is the\n"
    "pickled module (any input size; needs njetify to load). The files are written\n"
    "only when every step, the ONNX check included, has succeeded."
)


@command(app, "bake", epilog=_EPILOG)
def bake(
    converted: Path = typer.Argument(..., metavar="CONVERTED", help="A file written by 'njetify convert' or 'finetune'."),
    out: Path | None = typer.Option(None, "--out", "-o", metavar="PATH",
                                    help="Baked model, .pt2 or .pt (default: next to CONVERTED, NAME-baked.pt2)."),
    onnx: Path | None = typer.Option(None, "--onnx", metavar="PATH", help="Also export ONNX here (checked with onnxruntime)."),
    factorised: str = typer.Option("auto", "--factorised", metavar="auto|never|RATIO",
                                   help="Which σ layers keep the factorised form (1-D convs + 1x1 conv): 'auto' "
                                        "measures both forms on each layer's last input, 'never' gives plain "
                                        "convs only, a number keeps it where the dense filter needs over that "
                                        "many times the multiply-adds (no timing)."),
    size: str | None = InputSizeOption,
    force: bool = ForceOption,
    debug: bool = DebugOption,
) -> None:
    """Freeze σ for deployment: plain convolutions and fixed resizes.

    Every N-Jet layer becomes an nn.Conv2d with its current filter, every
    safe-subsampling a fixed resize at its learned size; the outputs are checked
    to be unchanged.
    """
    import torch

    from ..bake import FixedSubsample
    from ..bake import bake as bake_model
    from ..summary import compare_models, default_input_size
    from .render import kv_table, pct

    if out is not None and out.suffix.lower() not in (".pt2", ".pt", ".pth"):
        raise UserError(f"--out: must end in .pt2 (torch.export) or .pt (pickled module), got {str(out)!r}")
    if onnx is not None and onnx.suffix.lower() != ".onnx":
        raise UserError(f"--onnx: must end in .onnx, got {str(onnx)!r}")
    rule = _factorised_rule(factorised)
    model = load_converted(converted)
    stem = converted.name.removesuffix(".safetensors").removesuffix("-njet")
    out = writable_file(out or converted.with_name(f"{stem}-baked.pt2"), "--out", force)
    if onnx is not None:
        onnx = writable_file(onnx, "--onnx", force)
    shape = input_size(size) or default_input_size(model)
    from ..bake import FactorisedNote

    with warnings.catch_warnings():  # a factorised layer is a choice, not a problem: said as a note below
        warnings.filterwarnings("ignore", category=FactorisedNote)
        baked = bake_model(model, factorised=rule)
    _note_factorised(baked)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    with user_errors(ValueError, RuntimeError, what=f"input size {'x'.join(map(str, shape))}"):
        stats = compare_models(model, baked, x)
    diff = _write(baked, x, out, onnx)
    counts: dict[int, int] = {}
    for m in baked.modules():
        if isinstance(m, torch.nn.Conv2d):
            counts[m.kernel_size[0]] = counts.get(m.kernel_size[0], 0) + 1
    subs = [m for m in baked.modules() if isinstance(m, FixedSubsample)]
    factors = sorted({round(m.factor, 4) for m in subs})
    rows = [
        ("convs", ", ".join(f"{n}× {k}x{k}" for k, n in sorted(counts.items())) or "none"),
        ("resizes", f"{len(subs)} fixed, factors {', '.join(map(str, factors)) or '-'}"),
        ("params", pct(stats.params_before, stats.params_after)),
        (f"MACs @{'x'.join(map(str, shape))}", pct(stats.macs_before, stats.macs_after)),
        ("check", (f"max |Δ| vs converted {stats.max_abs_diff:.3g} on a random "
                   f"{'x'.join(map(str, x.shape))} batch")),
        ("saved", f"{out} ({out.stat().st_size / 1e6:.2f} MB)"),
    ]
    if onnx is not None:
        rows.append(("onnx", f"{onnx} ({onnx.stat().st_size / 1e6:.2f} MB), onnxruntime max |Δ| {diff:.3g}"))
    console().print(kv_table(rows, title=f"baked {converted.name}"))


def _factorised_rule(text: str):
    """``--factorised``: ``"auto"``, ``"never"`` or a positive MAC ratio, checked by bake's own rule."""
    from ..layers.bake_form import check_rule

    try:
        rule = float(text)
    except ValueError:
        rule = text
    try:
        return check_rule(rule)
    except ValueError:
        raise UserError(f"--factorised: expected 'auto', 'never' or a positive MAC ratio such as 16, "
                        f"got {text!r}") from None


def _note_factorised(baked) -> None:
    """One neutral ``note:`` naming the layers kept as 1-D convs + 1x1 conv (cheaper than a dense filter)."""
    from ..bake import factorised_layers
    from .errors import stderr_console

    kept = factorised_layers(baked)
    if kept:
        names = ", ".join(f"{p} ({m.size}x{m.size})" for p, m in kept[:5]) + (", …" if len(kept) > 5 else "")
        stderr_console().print(f"note: {len(kept)} layer(s) baked as 1-D convs + a 1x1 conv (FactorisedConv2d, same "
                               f"outputs), where it beats a dense filter: {names}", markup=False)


def _write(baked, x, out: Path, onnx: Path | None) -> float | None:
    """Write the baked model (and the checked ONNX file) under temporary names next to their
    destinations, then move them into place: a failure leaves nothing behind. Returns the ONNX |Δ|."""
    from ..bake import check_onnx, export_onnx, save_baked

    staged: list[tuple[Path, Path]] = []
    try:
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}{out.suffix}")
        staged.append((tmp, out))
        out.parent.mkdir(parents=True, exist_ok=True)
        with user_errors(ValueError, RuntimeError, what="--out"):
            save_baked(baked, tmp, x)
        diff = None
        if onnx is not None:
            tmp = onnx.with_name(f".{onnx.name}.tmp-{os.getpid()}.onnx")
            staged.append((tmp, onnx))
            onnx.parent.mkdir(parents=True, exist_ok=True)
            with user_errors(ImportError, RuntimeError, ValueError, what="--onnx (nothing was written)"):
                export_onnx(baked, tmp, x[:1])
                diff = check_onnx(tmp, baked, x)
        for tmp, final in staged:
            os.replace(tmp, final)
        staged = []
        return diff
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
