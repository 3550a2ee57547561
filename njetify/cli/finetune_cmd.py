"""``njetify finetune CONVERTED --data NAME``: fine-tune a converted model (σ learns), save it."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app
from .common import DebugOption, command, console, load_converted
from .errors import UserError, user_errors

_EPILOG = (
    "Examples:\n\n"
    "  njetify finetune resnet32-njet.safetensors --data cifar10 --epochs 10\n\n"
    "  njetify finetune lenet-njet.safetensors --data mnist --data-dir /data --lr 0.05\n\n"
    "  njetify finetune unet-njet.safetensors --data mnist-multiscale-seg --resume\n\n"
    "Writes OUT/last.pt, OUT/best.pt (checkpoints), OUT/history.json and .csv, and\n"
    "OUT/model.safetensors (the fine-tuned model: 'njetify inspect' and 'bake' read it).\n"
    "Defaults for every setting come from the recipe stored with the model."
)


def _datasets(name: str, data_dir: Path, download: bool, image_size: int):
    """Train and test splits of ``name`` and its info; folder images are resized to ``image_size``."""
    from ..data import dataset_info, get_dataset

    with user_errors(ValueError, FileNotFoundError, TypeError, what="--data"):
        if name.startswith("folder:"):
            train = get_dataset(name, "train", image_size=image_size)
            val = get_dataset(name, "test", image_size=image_size)
        else:
            train = get_dataset(name, "train", data_dir, download=download)
            val = get_dataset(name, "test", data_dir, download=download)
        info = dataset_info(name, train, image_size=image_size)
    return train, val, info


def _check_fit(model, info, sample) -> None:
    """The model takes the data's channels and has at least as many outputs as the data has classes."""
    from ..bake import _first_tensor
    from ..modes import evaluating

    try:
        with evaluating(model):
            out = _first_tensor(model(sample[None]))
    except RuntimeError as e:
        raise UserError(
            f"--data {info.name}: the model does not run on its samples {tuple(sample.shape)} ({str(e).splitlines()[0]}); "
            f"convert the model with --in-chans {info.in_channels}"
        ) from None
    if out.shape[1] < info.num_classes:
        raise UserError(
            f"--data {info.name}: {info.num_classes} classes but the model has {out.shape[1]} outputs; "
            f"convert it with --num-classes {info.num_classes}"
        )


@command(app, "finetune", epilog=_EPILOG)
def finetune(
    converted: Path = typer.Argument(..., help="A file written by 'njetify convert'."),
    data: str = typer.Option(..., "--data", "-d", metavar="NAME",
                             help="mnist, fashion-mnist, cifar10, cifar100, svhn, folder:PATH, mnist-resized, "
                                  "mnist-multiscale-seg."),
    data_dir: Path = typer.Option(Path("data"), "--data-dir", metavar="DIR", help="Where data sets live."),
    download: bool = typer.Option(False, "--download", help="Download the data set if missing (needs internet)."),
    epochs: int | None = typer.Option(None, "--epochs", "-e", min=1, metavar="N", help="Epochs (default: the recipe's)."),
    batch_size: int | None = typer.Option(None, "--batch-size", "-b", min=1, metavar="N", help="Global batch size."),
    lr: float | None = typer.Option(None, "--lr", metavar="LR", help="Learning rate of the weights."),
    sigma_lr: float | None = typer.Option(None, "--sigma-lr", metavar="LR", help="Learning rate of the σ's."),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, metavar="N", help="Stop after this many steps."),
    out: Path | None = typer.Option(None, "--out", "-o", metavar="DIR",
                                       help="Run folder (default: <model>-finetune)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last.pt."),
    device: str | None = typer.Option(None, "--device", metavar="DEV", help="cpu, cuda, cuda:1 (default: cuda if available)."),
    debug: bool = DebugOption,
) -> None:
    """Fine-tune a converted model: weights and σ's learn.

    Rich progress bars, a checkpoint per epoch, a history file, a final summary.
    """
    import torch

    from ..recipes import FinetuneConfig, load_recipe
    from ..summary import default_input_size
    from ..train import fit

    if device is not None:
        with user_errors(RuntimeError, what="--device"):
            torch.device(device)
    model = load_converted(converted)
    train, val, info = _datasets(data, data_dir, download, default_input_size(model)[-1])
    _check_fit(model, info, train[0][0])
    meta = getattr(model, "njetify_meta", None) or {}
    config = load_recipe(meta["recipe"]).finetune if meta.get("recipe") else FinetuneConfig()
    out = out or Path(converted.name.removesuffix(".safetensors").removesuffix("-njet") + "-finetune")
    if resume and not (out / "last.pt").is_file():
        raise UserError(f"--resume: no checkpoint {out / 'last.pt'} to continue from (run without --resume first)")
    with user_errors(ValueError, TypeError, what="fine-tuning settings"):
        from ..train import resolve_config

        cfg = resolve_config(config, epochs=epochs, batch_size=batch_size, lr=lr, sigma_lr=sigma_lr)
    history = fit(model, train, val, task=info.task, config=cfg, out_dir=out, resume=resume,
                  device=device, max_steps=max_steps)
    from ..io import save

    path = save(model, out / "model.safetensors", input_shape=(1, *train[0][0].shape))
    _print(history, out, path)


def _print(history, out: Path, path: str) -> None:
    from .render import kv_table

    last = history.last() or {}
    rows = [("epochs", f"{last.get('epoch', 0)} (step {last.get('step', 0)})")]
    for split in ("train", "val"):
        vals = last.get(split) or {}
        if vals:
            rows.append((split, ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in vals.items())))
    sig = [d["sigma"] for d in (last.get("layers") or {}).values() if d.get("sigma") is not None]
    sig = [s if isinstance(s, (int, float)) else max(s) for s in sig]
    if sig:
        rows.append(("σ", f"{min(sig):.3g} .. {max(sig):.3g} over {len(sig)} N-Jet layer(s)"))
    if last.get("throughput"):
        rows.append(("speed", f"{last['throughput']:.1f} samples/s"))
    rows.append(("saved", f"{path}, {out / 'history.json'}, checkpoints in {out}"))
    console().print(kv_table(rows, title="fine-tuning done"))
