"""``njetify bake CONVERTED``: freeze σ into plain convolutions and fixed resizes; optional ONNX."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app
from .common import DebugOption, InputSizeOption, command, console, input_size, load_converted
from .errors import UserError, user_errors

_EPILOG = (
    "Examples:\n\n"
    "  njetify bake resnet32-njet.safetensors\n\n"
    "  njetify bake resnet32-njet.safetensors --out r32.pt2 --onnx r32.onnx\n\n"
    "A .pt2 file is a torch.export program: torch.export.load(path).module() runs it\n"
    "without njetify (batch size free, H and W fixed). A .pt file is the pickled module\n"
    "(any input size; needs njetify to load)."
)


@command(app, "bake", epilog=_EPILOG)
def bake(
    converted: Path = typer.Argument(..., help="A file written by 'njetify convert' or 'finetune'."),
    out: Path | None = typer.Option(None, "--out", "-o", metavar="PATH",
                                       help="Baked model, .pt2 or .pt (default: <name>-baked.pt2)."),
    onnx: Path | None = typer.Option(None, "--onnx", metavar="PATH", help="Also export ONNX here (checked with onnxruntime)."),
    size: str | None = InputSizeOption,
    debug: bool = DebugOption,
) -> None:
    """Freeze σ for deployment: plain convolutions and fixed resizes.

    Every N-Jet layer becomes an nn.Conv2d with its current filter, every
    safe-subsampling a fixed resize at its learned size; the outputs are checked
    to be unchanged.
    """
    import torch

    from ..bake import bake as bake_model
    from ..bake import check_onnx, export_onnx, save_baked
    from ..summary import compare_models, default_input_size

    if out is not None and out.suffix.lower() not in (".pt2", ".pt", ".pth"):
        raise UserError(f"--out: must end in .pt2 (torch.export) or .pt (pickled module), got {str(out)!r}")
    model = load_converted(converted)
    shape = input_size(size) or default_input_size(model)
    baked = bake_model(model)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    with user_errors(ValueError, RuntimeError, what=f"input size {'x'.join(map(str, shape))}"):
        stats = compare_models(model, baked, x)
    out = out or Path(converted.name.removesuffix(".safetensors").removesuffix("-njet") + "-baked.pt2")
    save_baked(baked, out, x)
    counts: dict[int, int] = {}
    for m in baked.modules():
        if isinstance(m, torch.nn.Conv2d):
            counts[m.kernel_size[0]] = counts.get(m.kernel_size[0], 0) + 1
    from ..bake import FixedSubsample
    from .render import kv_table, pct

    factors = sorted({round(m.factor, 4) for m in baked.modules() if isinstance(m, FixedSubsample)})
    rows = [
        ("convs", ", ".join(f"{n}× {k}x{k}" for k, n in sorted(counts.items())) or "none"),
        ("resizes", (f"{sum(isinstance(m, FixedSubsample) for m in baked.modules())} fixed, factors "
                     f"{', '.join(map(str, factors)) or '-'}")),
        ("params", pct(stats.params_before, stats.params_after)),
        (f"MACs @{'x'.join(map(str, shape))}", pct(stats.macs_before, stats.macs_after)),
        ("check", (f"max |Δ| vs converted {stats.max_abs_diff:.3g} on a random "
                   f"{'x'.join(map(str, x.shape))} batch")),
        ("saved", f"{out} ({out.stat().st_size / 1e6:.2f} MB)"),
    ]
    if onnx is not None:
        with user_errors(ImportError, what="--onnx"):
            export_onnx(baked, onnx, x[:1])
            diff = check_onnx(onnx, baked, x)
        rows.append(("onnx", f"{onnx} ({onnx.stat().st_size / 1e6:.2f} MB), onnxruntime max |Δ| {diff:.3g}"))
    console().print(kv_table(rows, title=f"baked {converted.name}"))
