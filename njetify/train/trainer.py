"""fit(): fine-tune a (converted) network — classification or segmentation, single process or DDP."""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.loaders import make_loader
from ..layers import sigma_layers, sigma_parameters
from ..modes import evaluating
from ..options import TASKS
from ..recipes import FinetuneConfig
from . import distributed as D
from .config import amp_dtype, deterministic_mode, resolve_config, seed_everything
from ..summary.core import original_sizes
from ..budget import cost_meta, macs_now
from .history import History, feature_sizes, layer_snapshot, sigma_values, subsample_modules
from .interrupt import StopFlag
from .tasks import criterion, logits, meter, task_output
from .optim import build_optimizer, build_scheduler, current_lrs
from .progress import TrainProgress, evaluation_line
from .resume import CheckpointMixin
from .stopping import StoppingMixin


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped before applying that step."""


@dataclass
class TrainState:
    """Position in the run: ``epoch`` epochs completed, ``batch`` batches into the next, ``step`` optimizer steps."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best: float | None = None
    stopped: str | None = None  # why the run ended early ("max_steps"), None when it ran to the end


Callback = Callable[[str, TrainState], None]


def fit(
    model: nn.Module,
    train_data: Dataset | DataLoader,
    val_data: Dataset | DataLoader | None = None,
    *,
    task: str = "classification",
    config: FinetuneConfig | dict | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool | str | os.PathLike = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    max_steps: int | None = None,
    evaluate_first: bool = True,
    callbacks: Sequence[Callback] = (),
    catch_sigint: bool = True,
    **overrides,
) -> History:
    """Fine-tune ``model`` in place and return its :class:`History`.

    Args:
        model: any ``nn.Module``; N-Jet σ parameters get their own learning rate.
            Classification: ``(N, C, H, W) → (N, K)``; segmentation: ``→ (N, K, h, w)``
            (or a dict with ``"out"``), upsampled bilinearly to the label size if smaller.
        train_data, val_data: datasets of ``(image, label)`` (label ``int`` or ``(H, W)`` map),
            or ready DataLoaders (then exact mid-epoch resume is up to their sampler).
        task: ``"classification"`` or ``"segmentation"``.
        config: a :class:`~njetify.recipes.FinetuneConfig` (e.g. ``recipe.finetune``); every field
            can be overridden by keyword (``lr=0.1, epochs=3, amp="bf16"``). ``batch_size`` is
            the global batch: under ``torchrun`` each of N ranks loads ``batch_size / N``.
        out_dir: where ``last.pt``, ``best.pt``, ``history.json`` and ``history.csv`` go
            (None: nothing is written and resuming is impossible).
        resume: ``True`` continue from ``out_dir/last.pt`` (must exist), ``"auto"`` if it exists,
            or a checkpoint path. Continues exactly: same weights as an uninterrupted run.
        progress: rich progress bars and epoch summaries on stderr (rank 0 only).
        device: default ``cuda:LOCAL_RANK`` when available, else CPU.
        max_steps: stop after this many optimizer steps in total: the checkpoint holds that
            exact position, and the history ends with a ``"partial"`` row (training metrics
            of the unfinished epoch, validation, σ) so the stop is reported, not lost.
        evaluate_first: record epoch 0 (validation of the model before fine-tuning).
        callbacks: ``fn(event, state)``: ``"start"`` once before any work (after a resume succeeded),
            then after every ``"step"`` and ``"epoch"``.
        catch_sigint: on Ctrl-C (main thread only) finish the current step, write ``last.pt``
            and raise :class:`~njetify.train.TrainingInterrupted`; a second Ctrl-C aborts at once.

    Raises:
        CheckpointError: ``resume`` names a checkpoint that is unreadable or for another model
            (a ``ValueError``; nothing was changed).
        NonFiniteLossError: the loss was NaN/inf (the message names the step; the last good
            checkpoint is kept).
        TrainingInterrupted: Ctrl-C (a ``KeyboardInterrupt``; ``.checkpoint`` is the file to resume).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(map(repr, TASKS))}, got {task!r}")
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps must be a positive int or None, got {max_steps!r}")
    cfg = resolve_config(config, **overrides)
    info = D.setup(device)
    try:
        with deterministic_mode(cfg.deterministic):
            trainer = _Trainer(model, train_data, val_data, task, cfg, out_dir, info, progress,
                               evaluate_first, list(callbacks))
            with trainer.stop.watch(catch_sigint):
                return trainer.run(resume, max_steps)
    finally:
        D.teardown(info)


class _Trainer(CheckpointMixin, StoppingMixin):
    def __init__(self, model, train_data, val_data, task, cfg, out_dir, info, progress, evaluate_first, callbacks):
        self.task, self.cfg, self.info, self.callbacks = task, cfg, info, callbacks
        self.out = None if out_dir is None else Path(out_dir)
        self.evaluate_first = evaluate_first
        self.device = info.device
        self.dtype = amp_dtype(cfg, self.device)
        seed_everything(cfg.seed)
        if cfg.batch_size % info.world_size:
            raise ValueError(f"batch_size ({cfg.batch_size}) must be divisible by the number of processes ({info.world_size})")
        self.local_bs = cfg.batch_size // info.world_size
        self.train_loader = self._loader(train_data, train=True)
        self.val_loader = None if val_data is None else self._loader(val_data, train=False)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f"train_data has fewer samples than one batch ({self.local_bs} per process)")
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.sample = self._prepare(self.train_loader.dataset[0][0][None])
        self.num_classes = self._num_classes()
        self.criterion = self._criterion()
        self.ddp = D.wrap(model, info, sync_bn=cfg.sync_bn)
        self.run_model = torch.compile(self.ddp) if cfg.compile else self.ddp
        self.optimizer = build_optimizer(model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.sigmas = sigma_parameters(model)
        self.njets = sigma_layers(model)
        self.stop = StopFlag()
        self.eval_time: float | None = None  # seconds of one validation pass (for the estimate)
        self._timing: list[float] = []  # wall times of the first steps of this process (for the estimate)
        self.meter = self._meter()
        self.state = TrainState()
        self.history = History(self._meta())
        self.progress = TrainProgress(progress and info.is_main, cfg.epochs)
        self.last_ckpt: Path | None = None
        self.train_time = 0.0  # seconds spent in training steps this epoch

    # ----------------------------------------------------------------- setup
    def _loader(self, data, train: bool) -> DataLoader:
        if isinstance(data, DataLoader):
            if self.info.distributed and not hasattr(data.sampler, "set_epoch"):
                warnings.warn("fit: a DataLoader without a distributed sampler was given under torchrun: every "
                              "rank sees the whole data set; pass the Dataset instead to shard it", stacklevel=4)
            return data
        return make_loader(data, self.local_bs, train=train, seed=self.cfg.seed, rank=self.info.rank,
                           world_size=self.info.world_size, num_workers=self.cfg.num_workers,
                           pin_memory=self.device.type == "cuda")

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.cfg.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _num_classes(self) -> int:
        with evaluating(self.model), self._autocast():
            out = logits(self.model(self.sample))
        return int(out.shape[1])

    def _criterion(self) -> nn.Module:
        return criterion(self.task, self.cfg, self.train_loader.dataset, self.num_classes, self.device)

    def _meter(self):
        return meter(self.task, self.num_classes, self.cfg.ignore_index)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def _meta(self) -> dict:
        njets = self.njets
        by_id = {id(m): n for n, m in njets.items()}
        subs = subsample_modules(self.model)
        return {
            "task": self.task,
            "config": asdict(self.cfg),
            "model": type(self.model).__name__,
            "input_shape": list(self.sample.shape[1:]),
            "num_classes": self.num_classes,
            "world_size": self.info.world_size,
            "train_samples": len(self.train_loader.dataset),
            "val_samples": None if self.val_loader is None else len(self.val_loader.dataset),
            "njet_layers": list(njets),
            "extent": {n: float(m.extent) for n, m in njets.items() if hasattr(m, "extent")},
            "original_sizes": original_sizes(self.model),
            "steps_per_epoch": self.steps_per_epoch,
            "subsample_sources": {n: by_id.get(id(m.source), m.source_name) for n, m in subs.items()},
            "feature_sizes_original": feature_sizes(self.model, self.sample, original=True),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **cost_meta(self.model),
        }

    # ------------------------------------------------------------------ run
    def run(self, resume, max_steps: int | None) -> History:
        resumed = self._maybe_resume(resume)
        for cb in self.callbacks:
            cb("start", self.state)
        with self.progress:
            if not resumed and self.evaluate_first:
                t0 = time.perf_counter()
                self._record(0, None, 0.0, 0.0)
                self.eval_time = time.perf_counter() - t0
                self._check_stop(0.0)
            if max_steps is not None and self.state.step >= max_steps:
                self.state.stopped = "max_steps"
            while self.state.stopped is None and self.state.epoch < self.cfg.epochs:
                if not self._train_epoch(max_steps):
                    break
        self.history.meta["stopped"] = self.state.stopped  # in memory only: the files keep the run's record
        return self.history

    def _train_epoch(self, max_steps: int | None) -> bool:
        """One epoch (or its rest after a resume); False when ``max_steps`` stopped the run."""
        st, cfg = self.state, self.cfg
        sampler = self.train_loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(st.epoch)
        if st.batch and hasattr(sampler, "skip"):
            sampler.skip(st.batch * self.local_bs)
        if self.train_loader.generator is not None:
            self.train_loader.generator.manual_seed(cfg.seed * 100003 + st.epoch)
        if st.batch == 0:
            self.meter.reset()
            self.train_time = 0.0
        stop = None if max_steps is None else st.batch + max_steps - st.step
        self.progress.start_epoch(st.epoch + 1, self.steps_per_epoch, st.batch, stop)
        self.ddp.train()
        t0 = time.perf_counter()
        for x, y in self.train_loader:
            loss = self._step(self._prepare(x), y.to(self.device, non_blocking=True))
            st.batch += 1
            st.step += 1
            self.history.log_step(st.step, st.epoch + st.batch / self.steps_per_epoch, loss, sigma_values(self.njets),
                                  macs_now(self.model))
            self._show(loss, t0)
            self._estimate(max_steps)
            if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0 and st.batch < self.steps_per_epoch:
                self._save_checkpoint(time.perf_counter() - t0)
            for cb in self.callbacks:
                cb("step", st)
            if st.batch < self.steps_per_epoch:
                self._check_stop(time.perf_counter() - t0)
            if max_steps is not None and st.step >= max_steps and st.batch < self.steps_per_epoch:
                st.stopped = "max_steps"
                self._stop_partial(time.perf_counter() - t0)
                return False
        self.train_time += time.perf_counter() - t0
        self.meter.all_reduce(self.device)
        st.epoch, st.batch = st.epoch + 1, 0
        n = float(self.meter.sums[3] if self.task == "classification" else self.meter.sums[1])
        self._record(st.epoch, self.meter.compute(), n / max(self.train_time, 1e-9), self.train_time)
        for cb in self.callbacks:
            cb("epoch", st)
        self._check_stop(0.0)
        if max_steps is not None and st.step >= max_steps and st.epoch < cfg.epochs:
            st.stopped = "max_steps"
            return False
        return True

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        with self._autocast():
            out = self._output(self.run_model(x), y)
            loss = self.criterion(out.float(), y)
        value = loss.detach()
        if self.info.distributed:  # the same verdict on every rank
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= self.info.world_size
        value = float(value)
        if not math.isfinite(value):
            where = (f"the last good checkpoint is {self.last_ckpt}" if self.last_ckpt
                     else "no checkpoint had been written yet")
            raise NonFiniteLossError(
                f"loss is {value} at step {self.state.step + 1} (epoch {self.state.epoch + 1}, batch "
                f"{self.state.batch + 1}); stopped before applying it — {where}. Try a lower lr/sigma_lr, "
                f"grad_clip, or amp='none'."
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.meter.update(out.detach().float(), y, float(loss.detach()))
        return value

    def _output(self, out, y: torch.Tensor) -> torch.Tensor:
        return task_output(self.task, out, y)

    def _show(self, loss: float, t0: float) -> None:
        if not self.progress.enabled:
            return
        m = self.meter.compute()
        key = "acc" if self.task == "classification" else "miou"
        if self.task == "segmentation" and self.state.batch % 10 != 1:
            key = "pixel_acc"  # mIoU of a partial epoch is noisy; show it every 10 steps
        rng = None
        if self.sigmas:
            s = torch.cat([p.detach().flatten() for p in self.sigmas]).float().exp()
            rng = (float(s.min()), float(s.max()))
        seen = self.state.batch * self.cfg.batch_size
        self.progress.update(self.state.step, loss, key, m[key], rng,
                             seen / max(self.train_time + time.perf_counter() - t0, 1e-9))

    # ------------------------------------------------------------- evaluate
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation metrics, summed over all ranks."""
        model = D.unwrap(self.ddp)
        meter = self._meter()
        with evaluating(model):  # every module gets its own mode back (a frozen BatchNorm stays frozen)
            for x, y in self.val_loader:
                x, y = self._prepare(x), y.to(self.device, non_blocking=True)
                with self._autocast():
                    out = self._output(model(x), y)
                    loss = self.criterion(out.float(), y)
                meter.update(out.float(), y, float(loss))
        meter.all_reduce(self.device)
        return meter.compute()

    def _row(self, epoch: float, train: dict | None, throughput: float, train_time: float) -> dict:
        """A history row at the current position: validation, learning rates, σ, sizes."""
        row = {"epoch": epoch, "step": self.state.step, "time_s": train_time, "throughput": throughput}
        if train is not None:
            row["train"] = train
        if self.val_loader is not None:
            row["val"] = self.evaluate()
        row["lr"] = current_lrs(self.optimizer)
        row["layers"] = layer_snapshot(self.model)
        row["feature_sizes"] = feature_sizes(self.model, self.sample)
        macs = macs_now(self.model)
        if macs is not None:
            row["macs"] = macs
        return row

    def _record(self, epoch: int, train: dict | None, throughput: float, train_time: float) -> None:
        row = self._row(epoch, train, throughput, train_time)
        self.history.append(row)
        improved = False
        if "val" in row:
            key = "acc" if self.task == "classification" else "miou"
            v = row["val"][key]
            improved = math.isfinite(v) and (self.state.best is None or v > self.state.best)
            self.state.best = v if improved else self.state.best
        self._log(row)
        if self.out is not None and self.info.is_main:
            self.history.save(self.out)
        if epoch > 0 or improved:
            self._save_checkpoint(0.0, best=improved)

    def _log(self, row: dict) -> None:
        """One line per evaluation (two when it would not fit 80 columns): metrics and the σ range."""
        if row.get("partial"):
            st = self.state
            head = f"stopped at step {st.step} (epoch {st.epoch + 1}, batch {st.batch}/{self.steps_per_epoch})"
        else:
            head = f"epoch {row['epoch']}/{self.cfg.epochs}"
        self.progress.log(evaluation_line(head, row))
