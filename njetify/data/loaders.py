"""Data loaders whose order is a pure function of (seed, epoch, rank): exact resume, DDP sharding."""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ResumableSampler(Sampler[int]):
    """Shuffled (or ordered) indices for one rank, reproducible per epoch, skippable.

    Epoch ``e`` uses the permutation ``randperm(n, seed + e)`` (as
    ``DistributedSampler``); rank ``r`` of ``world`` takes positions ``r, r+world, …``
    so that batch ``b`` of all ranks together is batch ``b`` of a single process with
    the global batch size. ``drop_last`` drops the tail so every rank has the same
    number of samples (training); without it (evaluation) the shards are uneven and
    nothing is repeated. ``skip(n)`` makes the next iteration start ``n`` samples into
    this rank's share (resuming mid-epoch).
    """

    def __init__(self, length: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
        self.length, self.shuffle, self.seed = int(length), shuffle, int(seed)
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` and start from its beginning."""
        self.epoch, self.start = int(epoch), 0

    def skip(self, n: int) -> None:
        """Start the next iteration ``n`` samples into this rank's share."""
        self.start = int(n)

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            idx = torch.randperm(self.length, generator=g).tolist()
        else:
            idx = list(range(self.length))
        if self.drop_last:
            idx = idx[: self.length - self.length % self.world_size]
        return idx[self.rank :: self.world_size]

    def __iter__(self):
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        n = self.length // self.world_size if self.drop_last else math.ceil((self.length - self.rank) / self.world_size)
        return max(0, n - self.start)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader over ``dataset`` with a :class:`ResumableSampler` (``loader.sampler``).

    ``batch_size`` is per rank. Training loaders shuffle and drop the last incomplete
    batch; evaluation loaders keep everything, in order. Worker seeds come from a
    generator reseeded by the trainer each epoch, never from the global RNG.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    sampler = ResumableSampler(len(dataset), shuffle=train, seed=seed, rank=rank,
                               world_size=world_size, drop_last=train)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=train, num_workers=num_workers,
        pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )


def make_loaders(
    train_data: Dataset,
    val_data: Dataset | None,
    batch_size: int,
    *,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> tuple[DataLoader, DataLoader | None]:
    """Training and validation loaders (see :func:`make_loader`); ``batch_size`` is per rank."""
    kw = dict(seed=seed, rank=rank, world_size=world_size, num_workers=num_workers, pin_memory=pin_memory)
    train = make_loader(train_data, batch_size, train=True, **kw)
    val = None if val_data is None else make_loader(val_data, batch_size, train=False, **kw)
    return train, val
