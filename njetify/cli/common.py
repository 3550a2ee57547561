"""Shared pieces of the commands: consoles, common options, the error-handling decorator."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import typer

from .errors import UserError, handle_errors, user_errors

__all__ = [
    "DataDirOption",
    "DebugOption",
    "ForceOption",
    "InputSizeOption",
    "SeedOption",
    "check_device",
    "command",
    "console",
    "existing_file",
    "fmt_count",
    "free_outputs",
    "input_size",
    "load_converted",
    "peek_converted",
    "plain_weights",
    "stored_input_size",
    "writable_file",
]

#: The global ``--debug`` flag (set by the app callback; each command also takes ``--debug``).
STATE = {"debug": False}

DebugOption = typer.Option(False, "--debug", help="Show the full traceback on errors.")
ForceOption = typer.Option(False, "--force", "-f", help="Overwrite an existing output.")
SeedOption = typer.Option(0, "--seed", min=0, metavar="N", help="Random seed (same seed, same result).")
DataDirOption = typer.Option(
    None, "--data-dir", metavar="DIR",
    help="Folder that holds the data sets (default: $NJETIFY_DATA, else ./data).",
)
InputSizeOption = typer.Option(
    None, "--input-size", "-s", metavar="CxHxW",
    help="Input size as CxHxW, e.g. 3x32x32 (default: the model's own).",
)


def console():
    """The rich console on stdout (created per call; respects NO_COLOR and the terminal width)."""
    from rich.console import Console

    return Console(highlight=False)


def command(app: typer.Typer, name: str, **kwargs):
    """Register ``fn`` as command ``name`` of ``app``, run inside :func:`handle_errors`.

    The epilog (examples) is kept as written: each paragraph is marked for click not to rewrap it.
    """
    if "epilog" in kwargs:
        kwargs["epilog"] = "\n\n".join("\b\n" + para for para in kwargs["epilog"].split("\n\n"))

    def decorator(fn):
        from .app import Command

        @functools.wraps(fn)
        def wrapper(*args, **kw):
            with handle_errors(STATE["debug"] or bool(kw.get("debug"))):
                return fn(*args, **kw)

        return app.command(name, cls=Command, **kwargs)(wrapper)

    return decorator


def writable_file(path: Path | str, option: str, force: bool = False) -> Path:
    """``path`` checked before any work: not a folder, not existing unless ``force``, and inside a
    folder that exists or can be created and written. Problems are a :class:`UserError` naming ``option``."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_dir():
        raise UserError(f"{option}: {str(path)!r} is a folder; give a file name")
    if p.exists() and not force:
        raise UserError(f"{option}: {str(path)!r} exists; add --force to overwrite it, or choose another name")
    writable_folder(p.parent, option)
    return p


def free_outputs(paths: list[Path], option: str, force: bool) -> None:
    """None of ``paths`` exists, unless ``force`` (then they are overwritten); else a :class:`UserError`."""
    there = [p for p in paths if p.exists()]
    if there and not force:
        more = f" (and {len(there) - 1} more of the files it writes)" if len(there) > 1 else ""
        raise UserError(f"{option}: {str(there[0])!r} exists{more}; add --force to overwrite, or choose another "
                        "folder")


def writable_folder(folder: Path, option: str) -> None:
    """``folder`` exists or can be created, and can be written (checked, not created)."""
    folder = Path(os.path.abspath(folder))
    anc = folder
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise UserError(f"{option}: cannot create {str(folder)!r}: {str(anc)!r} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise UserError(f"{option}: cannot write into {str(anc)!r} (no permission or a read-only file system); "
                        "choose another folder")


def check_device(device: str | None) -> None:
    """``--device``: a device torch knows and this machine has (CUDA/MPS available, index in range)."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device: {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA GPU is usable here (torch.cuda.is_available() is "
                            "False); use --device cpu, or leave --device out to pick one automatically")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise UserError(f"--device {device}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError(f"--device {device}: Apple MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device: {device!r} is not supported; use cpu, cuda, cuda:N or mps")


def input_size(text: str | None, default=None) -> tuple[int, int, int] | None:
    """Parse ``--input-size`` (``None`` gives ``default``); a bad value is a :class:`UserError`."""
    if text is None:
        return default
    from ..summary import parse_input_size

    with user_errors(ValueError, what="--input-size"):
        return parse_input_size(text)


def existing_file(path: Path | str, option: str) -> Path:
    """``path`` as a Path that exists and is a file, else a :class:`UserError` naming ``option``."""
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise UserError(f"{option}: no such file: {str(path)!r}")
    if p.is_dir():
        raise UserError(f"{option}: {str(path)!r} is a directory, expected a file")
    return p


def fmt_count(n: int | None, unit: str = "") -> str:
    """``1234567`` → ``"1.23M"`` (k, M, G)."""
    if n is None:
        return "-"
    for suffix, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}{unit}"
    return f"{n}{unit}"


def peek_converted(path: Path | str) -> dict:
    """The metadata of the njetify file ``path`` (header only, no tensors: fast), with missing and bad
    files as :class:`UserError`; a PyTorch checkpoint (``.pth``, ``.pt``, ``.ckpt``, ``.bin``, or the zip
    file ``torch.save`` writes) is pointed to ``convert --weights``, a baked ``.pt2`` to its source."""
    p = existing_file(path, "CONVERTED")
    with open(p, "rb") as fh:
        head = fh.read(4)
    if p.suffix.lower() == ".pt2":
        raise UserError(f"{str(path)!r} is a baked model ('njetify bake'): it has no σ left; use the .safetensors "
                        "file it was baked from")
    torch_file = p.suffix.lower() in (".pth", ".pt", ".ckpt", ".bin") or head == b"PK\x03\x04"  # torch.save: zip
    if torch_file and p.suffix.lower() != ".safetensors":
        raise UserError(
            f"{str(path)!r} is a PyTorch checkpoint, not a model written by 'njetify convert'. Convert it "
            f"first: njetify convert MODEL --weights {path} (MODEL: the architecture it holds, see "
            f"'njetify models')"
        )
    from ..io import read_metadata

    with user_errors(ValueError, TypeError, FileNotFoundError, what=str(path)):
        return read_metadata(p)


def stored_input_size(meta: dict) -> tuple[int, ...] | None:
    """``(C, H, W)`` stored in an njetify file's metadata (None when it stores none)."""
    shapes = meta.get("input_shapes")
    return tuple(int(v) for v in shapes[0][1:]) if shapes else None


def load_converted(path: Path | str):
    """``njetify.load(path)`` after :func:`peek_converted`'s checks; load errors are :class:`UserError`."""
    peek_converted(path)
    from ..io import load

    with user_errors(ValueError, TypeError, FileNotFoundError, what=str(path)):
        return load(Path(os.path.expanduser(str(path))))


def plain_weights(path: Path | str) -> Path:
    """``--weights PATH``: a file that exists and is not an njetify model file (those are loaded as they are)."""
    p = existing_file(path, "--weights")
    if p.suffix.lower() == ".safetensors":
        from ..io import read_metadata

        try:
            meta = read_metadata(p)
        except ValueError:
            return p  # a plain safetensors state_dict (no njetify metadata): weights, as expected
        name = (meta.get("source") or {}).get("name") or meta.get("model_class") or "a model"
        raise UserError(
            f"--weights: {str(path)!r} is a model written by njetify ({name}, already converted), not the weights "
            f"of the unconverted architecture; use it as it is: njetify finetune/inspect/bake {path}"
        )
    return p


def check_budget(budget: float | None) -> None:
    """``--budget`` must be a positive finite number (× the original's MACs), else a :class:`UserError`."""
    import math

    if budget is not None and not 0 < budget < math.inf:
        raise UserError(f"--budget: {budget:g} is not a cost budget; give a positive number, the most the converted "
                        "model may cost × the original's MACs (e.g. 1.3)")
