"""Checkpointing and resuming of the trainer: what is saved, and how a run continues exactly."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from . import distributed as D
from .checkpoint import BEST, LAST, CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .history import History


class CheckpointMixin:
    """Methods of the trainer that write ``last.pt``/``best.pt`` and restore a run from them.

    A checkpoint holds model, optimizer, scheduler and scaler states, every RNG state,
    the position (epoch, batch in epoch, step), the running metric sums of every rank,
    the time spent in the current epoch and the history: resuming from it replays the
    same batches in the same order with the same random numbers.
    """

    def _save_checkpoint(self, partial_time: float, best: bool = False) -> None:
        if self.out is None:
            return
        meters = self._gather_meters()
        if self.info.is_main:
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng_state(),
                "state": asdict(self.state),
                "meters": meters,  # one per rank: the running sums of the current epoch
                "train_time": self.train_time + partial_time,
                "history": self.history.to_dict(),
                "config": asdict(self.cfg),
                "task": self.task,
            }
            self.last_ckpt = save_checkpoint(self.out / LAST, state)
            if best:
                save_checkpoint(self.out / BEST, state)
        else:
            self.last_ckpt = self.out / LAST
        D.barrier(self.info)

    def _gather_meters(self) -> list[torch.Tensor]:
        """The running metric sums of every rank (index = rank)."""
        if not self.info.distributed:
            return [self.meter.sums.clone()]
        local = self.meter.sums.to(self.device)
        out = [torch.empty_like(local) for _ in range(self.info.world_size)]
        dist.all_gather(out, local)
        return [t.cpu() for t in out]

    def _maybe_resume(self, resume) -> bool:
        if resume is False or resume is None:
            return False
        if resume is True or resume == "auto":
            if self.out is None:
                raise ValueError("resume needs out_dir (the checkpoint is out_dir/last.pt)")
            path = self.out / LAST
            if not path.is_file():
                if resume == "auto":
                    return False
                raise FileNotFoundError(f"resume=True but there is no checkpoint at {path}")
        else:
            path = Path(resume)
        ck = load_checkpoint(path, map_location=self.device)
        if ck.get("task", self.task) != self.task:
            raise CheckpointError(f"checkpoint {path} is for task {ck['task']!r}, not {self.task!r}")
        _check_fits(path, ck["model"], self.model.state_dict())
        self.model.load_state_dict(ck["model"])
        try:
            self.optimizer.load_state_dict(ck["optimizer"])
            self.scheduler.load_state_dict(ck["scheduler"])
            self.scaler.load_state_dict(ck["scaler"])
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path}: its optimizer state does not fit this run "
                                  f"({type(exc).__name__}: {exc})") from None
        meters = ck["meters"]
        if len(meters) != self.info.world_size:
            if ck["state"]["batch"]:
                raise ValueError(f"checkpoint {path} was written mid-epoch by {len(meters)} process(es); "
                                 f"resume it with the same number (now {self.info.world_size}) or from an epoch end")
        else:
            self.meter.load_state_dict({"sums": meters[self.info.rank]})
        self.train_time = ck["train_time"]
        self.state = type(self.state)(**{**ck["state"], "stopped": None})
        self.history = History.from_dict(ck["history"])
        set_rng_state(ck["rng"])
        self.last_ckpt = path
        st = self.state
        self.progress.log(f"resumed from {path} at step {st.step} (epoch {st.epoch + 1}, batch {st.batch}/"
                          f"{self.steps_per_epoch})")
        return True


def _check_fits(path, saved: dict, current: dict) -> None:
    """The checkpoint's model tensors have this model's names and shapes, else :class:`CheckpointError`
    (checked before anything is loaded, so a failed resume leaves the model as it was)."""
    missing = [k for k in current if k not in saved]
    extra = [k for k in saved if k not in current]
    shapes = [k for k in current if k in saved and tuple(saved[k].shape) != tuple(current[k].shape)]
    if missing or extra or shapes:
        what = (f"{len(missing)} tensor(s) missing, e.g. {missing[0]}" if missing else
                f"{len(extra)} unexpected tensor(s), e.g. {extra[0]}" if extra else
                f"{shapes[0]} is {tuple(saved[shapes[0]].shape)} there, {tuple(current[shapes[0]].shape)} here")
        raise CheckpointError(f"checkpoint {path} was written for another model ({what})")
