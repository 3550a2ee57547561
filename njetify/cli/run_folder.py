"""The run folder of ``njetify finetune``: refuse to overwrite a run, remember its settings, resume it.

A folder that holds a run is refused unless ``--resume`` (continue it) or ``--force``
(start over: the run's files are deleted first); one whose run never reached a checkpoint
is taken over; one that holds other files (not a run's) is refused. One process at a time
writes into a folder (:mod:`.run_lock`). ``run.json`` keeps the settings that
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
RUN_KEYS = ("epochs", "lr", "sigma_lr", "max_steps", "checkpoint_every", "plot", "budget")


def run_step(out: Path) -> int | None:
    """The last training step recorded in ``out/history.json`` (None when there is none to read)."""
    try:
        h = json.loads((out / "history.json").read_text())
        return max([r.get("step", 0) for r in h.get("epochs", [])] + [p["step"] for p in h.get("steps", [])] + [0])
    except (OSError, ValueError, KeyError, TypeError):
        return None


#: Files that only a run writes: a folder holding none of them is not a run folder.
MARKERS = ("run.json", "last.pt", "history.json")


def _present(out: Path) -> list[str]:
    return sorted(p.name for p in (out.iterdir() if out.is_dir() else []) if not p.name.startswith("."))


def not_started(out: Path) -> bool:
    """``out`` holds a run that ended before its first checkpoint (e.g. killed during the first
    validation): nothing to continue, so a new run may take the folder over without ``--force``."""
    names = set(_present(out))
    return (bool(names & set(MARKERS)) and "last.pt" not in names and names <= set(RUN_FILES + PLOTS)
            and not run_step(out))


def check(out: Path, resume: bool, force: bool) -> bool:
    """Check ``out`` for a new run (absent, empty, a run that never reached a checkpoint, or ``force``)
    or a resumed one (``last.pt`` present). Returns True when files of an earlier run must be deleted
    first (:func:`clear`). Writes nothing."""
    if resume and force:
        raise UserError("--resume and --force contradict each other: --resume continues the run in --out, "
                        "--force starts it over")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {str(out)!r} is a file; the run needs a folder")
    present = _present(out)
    if present and not set(present) & set(MARKERS):
        shown = ", ".join(present[:3]) + (", …" if len(present) > 3 else "")
        raise UserError(f"--out: {str(out)!r} holds other files ({shown}), not a run of 'njetify finetune'; "
                        "choose a new or empty --out (--force deletes only a run's own files)")
    if resume:
        if not (out / "last.pt").is_file():
            hint = ("the run there stopped before its first checkpoint: run the command again without --resume"
                    if not_started(out) else "run without --resume first, or give the --out of the run to continue")
            raise UserError(f"--resume: no checkpoint {out / 'last.pt'} to continue from ({hint})")
        writable_folder(out, "--out")
        return False
    if present and not force and not not_started(out):
        step = run_step(out)
        what = "files of a run" if step is None else f"a run at step {step}"
        raise UserError(f"--out: {str(out)!r} already holds {what}; continue it with --resume, start "
                        "over with --force (deletes its checkpoints and history), or choose another --out")
    writable_folder(out, "--out")
    return bool(present)


def clear(out: Path) -> None:
    """Delete the files of a previous run in ``out`` (``--force``, after every other check passed)."""
    for name in RUN_FILES + PLOTS:
        (out / name).unlink(missing_ok=True)


def settings(out: Path, given: dict, resume: bool) -> dict:
    """The run's settings: ``given`` (None = not given) completed from ``run.json`` when resuming.

    A resumed run needs a readable ``run.json`` (without it the data subset, batch size and
    epochs of the run are unknown); a data setting given again with another value is an error
    (the run would see other samples).
    """
    if not resume:
        return dict(given)
    path = out / SETTINGS_FILE
    fix = "start over with --force, or put back the run.json that run wrote"
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--resume: {path} is missing, so the run's settings (data subset, batch size, epochs, …) "
                        f"are unknown and it cannot continue as it was; {fix}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"--resume: {path} is not readable ({type(e).__name__}), so the run's settings are "
                        f"unknown; {fix}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("data"), str):
        raise UserError(f"--resume: {path} is not the settings file of a run (no 'data' entry); {fix}")
    merged = dict(given)
    reached = saved.get("max_steps") is not None and (run_step(out) or 0) >= saved["max_steps"]
    for key in DATA_KEYS + RUN_KEYS:
        if given.get(key) is None and not (key == "max_steps" and reached):  # a run that reached its
            merged[key] = saved.get(key)                                      # --max-steps goes on to its end
        elif key in DATA_KEYS and saved.get(key) is not None and given[key] != saved[key]:
            flag = "--" + key.replace("_", "-")
            raise UserError(f"--resume: {flag} {given[key]} differs from this run's {saved[key]} ({path}); "
                            f"a resumed run must see the same data: leave {flag} out")
    return merged


def save_settings(out: Path, values: dict) -> None:
    """Write ``run.json``."""
    from ..train.checkpoint import atomic_write_bytes

    atomic_write_bytes(out / SETTINGS_FILE, json.dumps(values, indent=1, default=str).encode())


def resume_command(converted: Path, data: str, out: Path) -> str:
    """The command line that continues the run in ``out`` (its other settings come from run.json)."""
    return shlex.join(["njetify", "finetune", str(converted), "--data", data, "--out", str(out), "--resume"])


def started_from(out: Path) -> str | None:
    """The CONVERTED file the run in ``out`` was started from (from run.json; None when unknown)."""
    try:
        return json.loads((out / SETTINGS_FILE).read_text()).get("converted")
    except (OSError, ValueError, AttributeError):
        return None
