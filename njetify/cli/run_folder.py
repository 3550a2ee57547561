"""The run folder of ``njetify finetune``: refuse to overwrite a run, remember its settings, resume it.

A folder that holds a run is refused unless ``--resume`` (continue it) or ``--force``
(start over: the run's files are deleted first). ``run.json`` keeps the settings that
define the run (data, subset sizes, seed, epochs, …) so that ``--resume`` needs only the
model, ``--data`` and ``--out`` and continues exactly; a data setting given again must
match. A run that was stopped by its ``--max-steps`` continues to the end of its epochs
(or to a new ``--max-steps``); one interrupted before it continues up to it.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from .common import writable_folder
from .errors import UserError

RUN_FILES = ("last.pt", "best.pt", "history.json", "history.csv", "model.safetensors", "run.json")
PLOTS = ("sigma.png", "sigma_layers.png", "sizes.png", "curves.png")
SETTINGS_FILE = "run.json"

#: Settings that decide which samples a run sees: a resumed run must use the same.
DATA_KEYS = ("data", "data_dir", "val_split", "limit_train", "limit_val", "seed", "batch_size", "image_size")
#: Settings a resumed run takes from run.json unless given again (then the new value wins).
RUN_KEYS = ("epochs", "lr", "sigma_lr", "max_steps", "checkpoint_every", "plot")


def run_step(out: Path) -> int | None:
    """The last training step recorded in ``out/history.json`` (None when there is none to read)."""
    try:
        h = json.loads((out / "history.json").read_text())
        return max([r.get("step", 0) for r in h.get("epochs", [])] + [p["step"] for p in h.get("steps", [])] + [0])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _describe(out: Path) -> str:
    step = run_step(out)
    return "files of a run" if step is None else f"a run at step {step}"


def check(out: Path, resume: bool, force: bool) -> None:
    """Check ``out`` for a new run (absent, empty, or ``force``) or a resumed one (``last.pt`` present)."""
    if resume and force:
        raise UserError("--resume and --force contradict each other: --resume continues the run in --out, "
                        "--force starts it over")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {str(out)!r} is a file; the run needs a folder")
    if resume:
        if not (out / "last.pt").is_file():
            raise UserError(f"--resume: no checkpoint {out / 'last.pt'} to continue from (run without --resume "
                            "first, or give the --out of the run to continue)")
        writable_folder(out, "--out")
        return
    present = [p for p in (out.iterdir() if out.is_dir() else []) if not p.name.startswith(".")]
    if present and not force:
        raise UserError(f"--out: {str(out)!r} already holds {_describe(out)}; continue it with --resume, start "
                        "over with --force (deletes its checkpoints and history), or choose another --out")
    writable_folder(out, "--out")


def clear(out: Path) -> None:
    """Delete the files of a previous run in ``out`` (``--force``, after every other check passed)."""
    for name in RUN_FILES + PLOTS:
        (out / name).unlink(missing_ok=True)


def settings(out: Path, given: dict, resume: bool) -> dict:
    """The run's settings: ``given`` (None = not given) completed from ``run.json`` when resuming.

    A data setting given again with another value is an error (the run would see other samples).
    """
    if not resume:
        return dict(given)
    try:
        saved = json.loads((out / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return dict(given)  # a run from an older version: trust the command line
    merged = dict(given)
    reached = saved.get("max_steps") is not None and (run_step(out) or 0) >= saved["max_steps"]
    for key in DATA_KEYS + RUN_KEYS:
        if given.get(key) is None and not (key == "max_steps" and reached):  # a run that reached its
            merged[key] = saved.get(key)                                      # --max-steps goes on to its end
        elif key in DATA_KEYS and saved.get(key) is not None and given[key] != saved[key]:
            flag = "--" + key.replace("_", "-")
            raise UserError(f"--resume: {flag} {given[key]} differs from this run's {saved[key]} ({out / SETTINGS_FILE}); "
                            f"a resumed run must see the same data: leave {flag} out")
    return merged


def save_settings(out: Path, values: dict) -> None:
    """Write ``run.json``."""
    from ..train.checkpoint import atomic_write_bytes

    atomic_write_bytes(out / SETTINGS_FILE, json.dumps(values, indent=1, default=str).encode())


def resume_command(converted: Path, data: str, out: Path) -> str:
    """The command line that continues the run in ``out`` (its other settings come from run.json)."""
    return shlex.join(["njetify", "finetune", str(converted), "--data", data, "--out", str(out), "--resume"])
