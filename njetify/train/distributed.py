"""DistributedDataParallel under ``torchrun``: process group, device, wrapping, rank-0 helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, its ``device``; ``owns_group`` if we created it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that writes checkpoints, history and progress)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | torch.device | None = None, backend: str | None = None) -> DistInfo:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` env vars).

    Single process without those variables. Backend: NCCL when the device is CUDA,
    gloo otherwise. Device: ``cuda:LOCAL_RANK`` when CUDA is available (or as given).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        dev = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    elif world > 1:
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                device_id=dev if dev.type == "cuda" else None)
        owns = True
    return DistInfo(rank, world, local, dev, owns)


def teardown(info: DistInfo) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, info: DistInfo, *, sync_bn: bool = False) -> nn.Module:
    """``DistributedDataParallel(model)`` when running distributed (SyncBatchNorm if asked), else ``model``.

    N-Jet layers use every parameter in every forward, so ``find_unused_parameters`` stays
    off; parameters with ``requires_grad=False`` (a frozen σ) are ignored by DDP.
    """
    if not info.distributed:
        return model
    if sync_bn:
        if info.device.type == "cpu":
            raise ValueError("sync_bn=True needs GPU processes (torch's SyncBatchNorm does not run on CPU); "
                             f"this process runs on {info.device}")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and/or ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()
