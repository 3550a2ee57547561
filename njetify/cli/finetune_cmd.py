"""``njetify finetune CONVERTED --data NAME``: fine-tune a converted model (σ learns), save it."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from . import run_folder
from .app import app
from .common import (DataDirOption, DebugOption, check_budget, check_device, command, console, load_converted, peek_converted,
                     stored_input_size)
from .errors import UserError, stderr_console, user_errors
from .finetune_data import check_fit, datasets, settings_error
from .run_lock import RunLock
from ..budget import set_budget

_EPILOG = (
    "Examples:\n"
    "  njetify finetune resnet32-njet.safetensors --data cifar10 --epochs 10 --plot\n"
    "  njetify finetune resnet32-njet.safetensors -d cifar10 --max-steps 200 -o try\n"
    "  njetify finetune resnet32-njet.safetensors -d cifar10 -o try --resume\n"
    "  njetify finetune resnet32-njet.safetensors -d cifar10 --limit-val 1000\n"
    "  njetify finetune m.safetensors --data folder:photos --val-split 0.1\n"
    "\n"
    "Writes into OUT: last.pt and best.pt (checkpoints), history.json and .csv,\n"
    "model.safetensors (the fine-tuned model, for 'njetify inspect' and 'bake'),\n"
    "run.json (the settings, for --resume) and with --plot sigma.png, sizes.png,\n"
    "curves.png. Ctrl-C stops after the current step and writes a checkpoint.\n"
    "Every setting defaults to the recipe stored with the model."
)


@command(app, "finetune", epilog=_EPILOG)
def finetune(
    converted: Path = typer.Argument(..., metavar="CONVERTED", help="A file written by 'njetify convert'."),
    data: str = typer.Option(..., "--data", "-d", metavar="NAME",
                             help="mnist, fashion-mnist, cifar10, cifar100, svhn, folder:PATH, mnist-resized, "
                                  "mnist-multiscale-seg."),
    data_dir: Path | None = DataDirOption,
    download: bool = typer.Option(False, "--download", help="Download the data set if missing (needs internet)."),
    val_split: float | None = typer.Option(None, "--val-split", min=0.0, max=1.0, metavar="F",
                                           help="folder:PATH without val/: hold out this fraction for validation."),
    limit_train: int | None = typer.Option(None, "--limit-train", min=1, metavar="N",
                                           help="Train on a fixed random subset of N samples."),
    limit_val: int | None = typer.Option(None, "--limit-val", min=1, metavar="N",
                                         help="Validate on a fixed random subset of N samples."),
    epochs: int | None = typer.Option(None, "--epochs", "-e", min=1, metavar="N", help="Epochs (default: the recipe's)."),
    batch_size: int | None = typer.Option(None, "--batch-size", "-b", min=1, metavar="N", help="Global batch size."),
    lr: float | None = typer.Option(None, "--lr", metavar="LR", help="Learning rate of the weights."),
    sigma_lr: float | None = typer.Option(None, "--sigma-lr", metavar="LR", help="Learning rate of the σ's."),
    budget: float | None = typer.Option(None, "--budget", metavar="B",
                                        help="Cost budget: at most B × the original's MACs at the input size (e.g. "
                                             "1.3) at every step; filter sizes are capped per layer."),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, metavar="N",
                                         help="Stop after N optimizer steps in total (checkpoint and summary)."),
    checkpoint_every: int | None = typer.Option(None, "--checkpoint-every", min=0, metavar="STEPS",
                                                help="Also write last.pt every STEPS steps (0: at epoch ends)."),
    seed: int | None = typer.Option(None, "--seed", min=0, metavar="N", help="Random seed (default: the recipe's)."),
    out: Path | None = typer.Option(None, "--out", "-o", metavar="DIR", help="Run folder (default: MODEL-finetune)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT exactly where it stopped."),
    force: bool = typer.Option(False, "--force", "-f", help="Start over in an OUT that holds a run."),
    plot: bool = typer.Option(False, "--plot", help="Write PNGs of σ, sizes and curves into OUT."),
    device: str | None = typer.Option(None, "--device", metavar="DEV",
                                      help="cpu, cuda, cuda:1 (default: cuda when there is one)."),
    debug: bool = DebugOption,
) -> None:
    """Fine-tune a converted model: the weights and the σ's learn.

    A progress bar with ETA, a checkpoint per epoch (and every --checkpoint-every
    steps, and on Ctrl-C), a history file, a summary at the end.
    """
    from ..recipes import FinetuneConfig, load_recipe
    from ..train import resolve_config

    # Every check that needs no model first (the model load can take a minute); nothing is written.
    check_device(device)
    check_budget(budget)
    meta = peek_converted(converted)
    out = out or Path(converted.name.removesuffix(".safetensors").removesuffix("-njet") + "-finetune")
    run_folder.check(out, resume, force)
    shape = stored_input_size(meta)
    model = None
    if shape is None:  # an older file: the model knows its input size
        from ..summary import default_input_size

        model = load_converted(converted)
        shape = default_input_size(model)
    given = {"data": data, "data_dir": None if data_dir is None else str(data_dir), "val_split": val_split,
             "limit_train": limit_train, "limit_val": limit_val, "seed": seed, "batch_size": batch_size,
             "image_size": shape[-1] if data.startswith("folder:") else None, "epochs": epochs, "lr": lr,
             "sigma_lr": sigma_lr, "max_steps": max_steps, "checkpoint_every": checkpoint_every,
             "plot": plot or None, "budget": budget}
    s = run_folder.settings(out, given, resume)
    try:
        config = load_recipe(meta["recipe"]).finetune if meta.get("recipe") else FinetuneConfig()
        cfg = resolve_config(config, epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"],
                             sigma_lr=s["sigma_lr"], seed=s["seed"], checkpoint_every=s["checkpoint_every"])
    except (ValueError, TypeError) as e:
        raise settings_error(e) from None
    train, val, info = datasets({**s, "seed": cfg.seed}, download, shape[0])
    model = model or load_converted(converted)
    check_fit(model, info, train[0][0])
    if s.get("budget") is not None:
        with user_errors(ValueError, what="--budget"):
            set_budget(model, s["budget"])
    if len(train) < cfg.batch_size:
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the {len(train)} training samples; "
                        f"use --batch-size {len(train)} or less")
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 writes
        return _train(model, train, val, info, cfg, out, resume, device, s, converted, False)
    with RunLock(out):
        clear = run_folder.check(out, resume, force)  # again, under the lock: another run may have started
        _train(model, train, val, info, cfg, out, resume, device, s, converted, clear)


def _train(model, train, val, info, cfg, out, resume, device, s, converted, clear: bool) -> None:
    """Write run.json (a resumed run: once its checkpoint has loaded), fit, save, plot, print."""
    if clear:
        run_folder.clear(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {**s, "converted": str(converted), "seed": cfg.seed}
    if not resume:
        run_folder.save_settings(out, settings)

    def start() -> None:  # after a resume has loaded its checkpoint: a failed one changes nothing
        if resume:
            run_folder.save_settings(out, settings)
        _plan(cfg, len(train), len(val), s["max_steps"], device)

    history = _fit(model, train, val, info, cfg, out, resume, device, s, converted, on_start=start)
    from ..io import save

    path = save(model, out / "model.safetensors", input_shape=(1, *train[0][0].shape))
    written = _plots(out) if s["plot"] else []
    _print(history, cfg, out, path, written)


def _plan(cfg, n_train: int, n_val: int, max_steps: int | None, device: str | None) -> None:
    """One line before the work: how many steps of what, on which device."""
    import torch

    per_epoch = n_train // cfg.batch_size
    total = cfg.epochs * per_epoch if max_steps is None else min(max_steps, cfg.epochs * per_epoch)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    stderr_console().print(
        f"plan: {total:,} steps ({cfg.epochs} epoch(s) × {per_epoch:,} batches of {cfg.batch_size} from {n_train:,} "
        f"samples) on {dev}, validating on {n_val:,} samples after each epoch; --max-steps, --epochs, "
        f"--limit-train or --limit-val make it shorter")


def _fit(model, train, val, info, cfg, out, resume, device, s, converted, on_start=None):
    """``njetify.train.fit``; ``on_start()`` once a resume has succeeded; on Ctrl-C: save what was
    reached, say how to continue, exit 130."""
    from ..train import CheckpointError, TrainingInterrupted, fit

    def started(event, state):
        if event == "start" and on_start is not None:
            on_start()

    try:
        with user_errors(ValueError, what="fine-tuning"):
            try:
                return fit(model, train, val, task=info.task, config=cfg, out_dir=out, resume=resume,
                           device=device, max_steps=s["max_steps"], callbacks=[started])
            except CheckpointError as e:
                origin = run_folder.started_from(out) or "see run.json"
                raise UserError(f"--resume: {e}; nothing was changed. Give the CONVERTED model this run was "
                                f"started from ({origin}), or start over with --force") from None
    except TrainingInterrupted as stop:
        con = stderr_console()
        if stop.checkpoint is None:
            con.print("[red]interrupted[/] before the first training step; nothing to continue from")
            raise typer.Exit(130) from None
        from ..io import save

        save(model, out / "model.safetensors", input_shape=(1, *train[0][0].shape))
        if s["plot"]:
            _plots(out)
        con.print(f"[red]interrupted[/] at step {stop.step:,} (epoch {stop.epoch + 1}, batch {stop.batch:,}/"
                  f"{stop.steps_per_epoch:,}); saved {stop.checkpoint} and {out / 'model.safetensors'}. "
                  f"Continue exactly where it stopped with:")
        con.print(f"  {run_folder.resume_command(converted, s['data'], out)}", soft_wrap=True)  # one line to copy
        raise typer.Exit(130) from None


def _plots(out: Path) -> list[Path]:
    from ..plots import plot_history

    return plot_history(out, out)


def _print(history, cfg, out: Path, path: str, written: list[Path]) -> None:
    from .render import kv_table

    last, first = history.last() or {}, (history.epochs or [{}])[0]
    spe = history.meta.get("steps_per_epoch") or 1
    if last.get("partial"):
        step = last["step"]
        pos = f"stopped by --max-steps at step {step:,} (epoch {step // spe + 1}, batch {step % spe:,}/{spe:,})"
    else:
        pos = f"{last.get('epoch', 0)} of {cfg.epochs} epoch(s), {last.get('step', 0):,} steps"
    rows = [("trained", pos)]
    for split in ("train", "val"):
        vals = last.get(split) or {}
        if vals:
            rows.append((split, ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in vals.items())))
    layers, start = last.get("layers") or {}, first.get("layers") or {}
    sig = [d["sigma"] for d in layers.values() if d.get("sigma") is not None]
    if sig:
        sig0 = [d["sigma"] for d in start.values()]
        rows.append(("σ", f"{min(sig):.3g} .. {max(sig):.3g} px over {len(sig)} N-Jet layer(s)"
                          + (f" (at the start {min(sig0):.3g} .. {max(sig0):.3g})" if sig0 else "")))
        grew = sum(d["size"] > (start.get(n) or d)["size"] for n, d in layers.items())
        shrank = sum(d["size"] < (start.get(n) or d)["size"] for n, d in layers.items())
        rows.append(("filters", f"{grew} grew, {shrank} shrank, {len(layers) - grew - shrank} kept their size"))
    if last.get("throughput"):
        rows.append(("speed", f"{last['throughput']:,.1f} samples/s"))
    rows.append(("saved", f"{path}, {out / 'history.json'}, checkpoints in {out}"))
    if written:
        rows.append(("plots", ", ".join(p.name for p in written) + f" in {out}"))
    console().print(kv_table(rows, title="fine-tuning done"))
