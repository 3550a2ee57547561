"""The data of ``njetify finetune``: its splits, checked against the model before any training."""

from __future__ import annotations

from .errors import UserError, user_errors


def datasets(s: dict, download: bool, channels: int):
    """Train and validation splits and the data set's info (folder images at the model's size and channels)."""
    from ..data import dataset_info, get_dataset, limit

    name = s["data"]
    with user_errors(ValueError, FileNotFoundError, TypeError, what=f"--data {name}"):
        if name.startswith("folder:"):
            opts = {"image_size": s["image_size"], "val_split": s["val_split"]}
            train = get_dataset(name, "train", **opts)
            val = get_dataset(name, "val", **opts)
        else:
            if s["val_split"] is not None:
                raise ValueError("--val-split is for folder:PATH data without a val/ folder; "
                                 f"{name} has its own test split")
            train = get_dataset(name, "train", s["data_dir"], download=download)
            val = get_dataset(name, "test", s["data_dir"], download=download)
        info = dataset_info(name, train, image_size=s["image_size"])
        train, val = limit(train, s["limit_train"], seed=s["seed"] or 0), limit(val, s["limit_val"], seed=0)
    if name.startswith("folder:") and info.in_channels != channels:
        kind = "grayscale" if info.in_channels == 1 else "colour"
        raise UserError(f"--data {name}: the images are {kind} ({info.in_channels} channel(s)) but the model takes "
                        f"{channels}; convert the model with --in-chans {info.in_channels}")
    return train, val, info


def check_fit(model, info, sample) -> None:
    """The model runs on the data's samples and has one output per class."""
    from ..inputs import first_tensor
    from ..modes import evaluating

    try:
        with evaluating(model):
            out = first_tensor(model(sample[None]))
    except RuntimeError as e:
        raise UserError(
            f"--data {info.name}: the model does not run on its samples {tuple(sample.shape)} "
            f"({str(e).splitlines()[0]}); convert the model with --in-chans {info.in_channels}"
        ) from None
    k = out.shape[1]
    if k < info.num_classes or (info.task == "classification" and k != info.num_classes):
        raise UserError(f"--data {info.name}: {info.num_classes} classes but the model has {k} outputs; "
                        f"convert it with --num-classes {info.num_classes} (a new head for these classes)")


#: Flags of the fine-tuning settings, for messages (``lr must be …`` → ``--lr: must be …``).
FLAGS = {"sigma_lr": "--sigma-lr", "lr": "--lr", "epochs": "--epochs", "batch_size": "--batch-size",
         "seed": "--seed", "checkpoint_every": "--checkpoint-every"}


def settings_error(e: Exception) -> UserError:
    """A fine-tuning settings error (``lr must be …``) in command-line words (``--lr: must be …``)."""
    msg = str(e)
    for key, flag in FLAGS.items():
        if msg.startswith(key + " "):
            return UserError(f"{flag}: {msg[len(key) + 1:]}")
    return UserError(f"fine-tuning settings: {msg}")
