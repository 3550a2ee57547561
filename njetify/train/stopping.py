"""How a run stops early: Ctrl-C (checkpoint at the exact step), ``max_steps`` (a partial row),
and the one-line estimate of how long the rest of the run will take."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from .interrupt import TrainingInterrupted
from .progress import format_duration


class StoppingMixin:
    """Methods of the trainer that end a run before its last epoch, or say when it will end."""

    def _check_stop(self, partial_time: float) -> None:
        """After Ctrl-C: write the checkpoint at this exact position and raise TrainingInterrupted."""
        flag = self.stop.requested
        if self.info.distributed:  # every rank stops at the same step
            t = torch.tensor([float(flag)], device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        if not flag:
            return
        st = self.state
        ckpt = None
        if self.out is not None and st.step > 0:
            self._save_checkpoint(partial_time)
            ckpt = self.last_ckpt
            if self.info.is_main:
                self.history.save(self.out)
        raise TrainingInterrupted(ckpt, st.step, st.epoch, st.batch, self.steps_per_epoch)

    def _stop_partial(self, partial_time: float) -> None:
        """``max_steps`` reached inside an epoch: checkpoint this exact position (before evaluating,
        so the RNG state is the one an uninterrupted run has here), then record a ``partial`` row."""
        self._save_checkpoint(partial_time)
        st = self.state
        if self.info.distributed:
            sums = self.meter.sums.to(self.device)
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
            meter = self._meter()
            meter.load_state_dict({"sums": sums.cpu()})
        else:
            meter = self.meter
        n = float(meter.sums[3] if self.task == "classification" else meter.sums[1])
        train_time = self.train_time + partial_time
        row = self._row(st.epoch + st.batch / self.steps_per_epoch, meter.compute(), n / max(train_time, 1e-9),
                        train_time)
        row["partial"] = True
        self.history.append(row)
        self._log(row)
        if self.out is not None and self.info.is_main:
            self.history.save(self.out)

    def _estimate(self, max_steps: int | None) -> None:
        """Once, after the first few steps of this process: how long the rest of the run will take."""
        if self._timing is None or not self.progress.enabled:
            return
        self._timing.append(time.perf_counter())
        if len(self._timing) < 5:  # the first step warms up; time steps 2..5
            return
        per_step = (self._timing[-1] - self._timing[0]) / (len(self._timing) - 1)
        self._timing = None
        st, spe = self.state, self.steps_per_epoch
        total = self.cfg.epochs * spe if max_steps is None else min(max_steps, self.cfg.epochs * spe)
        left = max(0, total - st.step)
        evals = 0 if self.val_loader is None or self.eval_time is None else \
            total // spe - st.epoch + (1 if total % spe else 0)
        text = f"estimate: {left:,} more steps × {per_step:.3g} s ≈ {format_duration(left * per_step)}"
        if evals > 0:
            text += f", + {evals} validation(s) × {format_duration(self.eval_time)}"
        self.progress.log(text)
