"""Reusable CPU scratch buffers for the transient maps of the factorised paths."""

from __future__ import annotations

import math
import threading

import torch


class _Workspace(threading.local):
    def __init__(self):
        self.buffers: dict[tuple, torch.Tensor] = {}


_WORKSPACE = _Workspace()


def workspace(slot: str, shape, like: torch.Tensor) -> torch.Tensor:
    """A reusable scratch tensor of ``shape`` (CPU; elsewhere a fresh tensor).

    Fresh large CPU tensors cost a page fault per 4 KiB page on first touch (glibc hands
    allocations above 32 MiB back to the kernel on free), which is slower than the matrix
    products that fill them. The transient maps of the factorised path live here instead:
    one buffer per slot, dtype and thread, grown to the largest size asked for. Only
    values that never leave a forward or backward call may use it.
    """
    if like.device.type != "cpu":
        return like.new_empty(shape)
    numel = math.prod(shape)
    key = (slot, like.dtype)
    buf = _WORKSPACE.buffers.get(key)
    if buf is None or buf.numel() < numel:
        buf = _WORKSPACE.buffers[key] = like.new_empty(numel)
    return buf[:numel].view(shape)


def release_workspace() -> int:
    """Free the CPU scratch buffers of this thread; returns the bytes released."""
    total = sum(b.numel() * b.element_size() for b in _WORKSPACE.buffers.values())
    _WORKSPACE.buffers.clear()
    return total
