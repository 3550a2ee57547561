"""Parameter groups (α, σ, the rest), optimisers and learning-rate schedules with warm-up."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..layers import sigma_parameters
from ..options import OPTIMIZERS, SCHEDULES
from ..recipes import FinetuneConfig

GROUPS = ("alpha", "sigma", "decay", "no_decay")


def split_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by group (each parameter once, shared ones included once).

    * ``sigma``: :func:`njetify.layers.sigma_parameters` (σ = exp(log_sigma)),
    * ``alpha``: the other ≥2-D parameters of the modules that own a σ parameter (N-Jet layers,
      tied ASPP heads): their basis coefficients,
    * ``no_decay``: 0-/1-D parameters and every ``bias`` (norm scales/shifts, N-Jet and tied biases),
    * ``decay``: everything else (conv and linear weights).
    """
    sigma_ids = {id(p) for p in sigma_parameters(model)}
    groups: dict[str, list[nn.Parameter]] = {g: [] for g in GROUPS}
    seen: set[int] = set()
    for module in model.modules():
        own = list(module.named_parameters(recurse=False))
        njet = any(id(p) in sigma_ids for _, p in own)
        for name, p in own:
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            if id(p) in sigma_ids:
                groups["sigma"].append(p)
            elif p.ndim <= 1 or name == "bias":
                groups["no_decay"].append(p)
            elif njet:
                groups["alpha"].append(p)
            else:
                groups["decay"].append(p)
    return groups


def param_groups(model: nn.Module, cfg: FinetuneConfig) -> list[dict]:
    """Optimizer parameter groups with the paper's settings: σ has its own ``sigma_lr`` and no
    weight decay; biases and normalisation parameters have no weight decay. Empty groups are left out."""
    out = []
    for name, params in split_parameters(model).items():
        if not params:
            continue
        lr = cfg.sigma_lr if name == "sigma" else cfg.lr
        wd = cfg.weight_decay if name in ("alpha", "decay") else 0.0
        out.append({"params": params, "lr": lr, "weight_decay": wd, "name": name})
    if not out:
        raise ValueError("model has no trainable parameters (all requires_grad=False)")
    return out


def build_optimizer(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """SGD with (Nesterov-free) momentum or AdamW over :func:`param_groups`."""
    groups = param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))}, got {cfg.optimizer!r}")


def lr_factor(step: int, steps_per_epoch: int, cfg: FinetuneConfig) -> float:
    """Multiplier of every group's base lr after ``step`` optimizer steps.

    Linear warm-up from ~0 over ``warmup_epochs``, then ``cosine`` (to 0 at the end
    of ``epochs``), ``step`` (× ``gamma`` every ``step_size`` epochs) or ``constant``.
    """
    warm = cfg.warmup_epochs * steps_per_epoch
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.gamma ** (step // (cfg.step_size * steps_per_epoch))
    if cfg.schedule == "cosine":
        total = cfg.epochs * steps_per_epoch
        t = min(1.0, (step - warm) / max(1.0, total - warm))
        return 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"schedule must be one of {', '.join(map(repr, SCHEDULES))}, got {cfg.schedule!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: FinetuneConfig, steps_per_epoch: int):
    """A per-step ``LambdaLR`` following :func:`lr_factor` (call ``.step()`` after every optimizer step)."""
    lr_factor(0, steps_per_epoch, cfg)  # validates cfg.schedule now, not at the first step
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, cfg))


def current_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Learning rate of each named group, e.g. ``{"alpha": 0.01, "sigma": 0.01, ...}``."""
    return {g.get("name", str(i)): float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}
