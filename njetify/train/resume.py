"""Checkpointing and resuming of the trainer: what is saved, and how a run continues exactly."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from . import distributed as D
from .checkpoint import BEST, LAST, load_checkpoint, rng_state, save_checkpoint, set_rng_state
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
            raise ValueError(f"checkpoint {path} is for task {ck['task']!r}, not {self.task!r}")
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
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
