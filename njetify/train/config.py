"""Resolving and checking the fine-tuning settings; seeding and deterministic mode."""

from __future__ import annotations

import contextlib
import math
import os
import random
from dataclasses import fields, replace

import numpy as np
import torch

from ..options import AMP_MODES, CLASS_WEIGHTS, OPTIMIZERS, SCHEDULES, check_choice
from ..recipes import FinetuneConfig


def resolve_config(config: FinetuneConfig | dict | None = None, **overrides) -> FinetuneConfig:
    """``config`` (a FinetuneConfig, a dict of its fields, or None for the defaults) with keyword
    ``overrides`` applied (``None`` values are ignored), checked by :func:`check_config`."""
    if config is None:
        config = FinetuneConfig()
    elif isinstance(config, dict):
        config = _from_dict(config)
    elif not isinstance(config, FinetuneConfig):
        raise TypeError(f"config must be a FinetuneConfig, a dict or None, got {type(config).__name__}")
    names = {f.name for f in fields(FinetuneConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown fine-tuning setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    cfg = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    check_config(cfg)
    return cfg


def _from_dict(d: dict) -> FinetuneConfig:
    names = {f.name for f in fields(FinetuneConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise TypeError(f"unknown fine-tuning setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    return FinetuneConfig(**d)


#: Largest learning rates accepted: the σ's are learned as log σ, so a σ rate of 10 can already move σ by
#: a factor e^10 in one step; a weight rate above 10 diverges at once (typical: 0.001-0.1 for both).
MAX_LR = 10.0


def _pos(name, v, kind=(int, float), zero=False, most=None):
    bad = isinstance(v, bool) or not isinstance(v, kind) or not math.isfinite(v) or (v < 0 if zero else v <= 0)
    if bad or (most is not None and v > most):
        what = "non-negative" if zero else "positive"
        upto = f" up to {most:g}" if most is not None else ""
        raise ValueError(f"{name} must be a finite {what} {'int' if kind is int else 'number'}{upto}, got {v!r}")


def check_config(cfg: FinetuneConfig) -> None:
    """Raise ``ValueError`` naming the first field with a value that is not allowed."""
    for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("amp", AMP_MODES)):
        check_choice(name, getattr(cfg, name), allowed)
    for name in ("lr", "sigma_lr"):
        _pos(name, getattr(cfg, name), zero=name == "sigma_lr", most=MAX_LR)
    _pos("gamma", cfg.gamma)
    for name in ("momentum", "weight_decay", "warmup_epochs"):
        _pos(name, getattr(cfg, name), zero=True)
    for name in ("epochs", "batch_size", "step_size"):
        _pos(name, getattr(cfg, name), kind=int)
    for name in ("checkpoint_every", "num_workers", "seed"):
        _pos(name, getattr(cfg, name), kind=int, zero=True)
    if cfg.grad_clip is not None:
        _pos("grad_clip", cfg.grad_clip)
    if cfg.class_weights is not None and cfg.class_weights not in CLASS_WEIGHTS:
        raise ValueError(f"class_weights must be None or one of {', '.join(map(repr, CLASS_WEIGHTS))}, "
                         f"got {cfg.class_weights!r}")


def amp_dtype(cfg: FinetuneConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: full precision). fp16 needs CUDA."""
    if cfg.amp == "none":
        return None
    if cfg.amp == "fp16":
        if device.type != "cuda":
            raise ValueError(f"amp='fp16' needs a CUDA device (got {device}); use amp='bf16' on CPU")
        return torch.float16
    return torch.bfloat16


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python's ``random`` and NumPy."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


@contextlib.contextmanager
def deterministic_mode(enabled: bool):
    """Deterministic algorithms and no cuDNN autotuning inside the block (restored after)."""
    if not enabled:
        yield
        return
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = prev[2], prev[3]
