"""One job: the SHA-256 of a set of named tensors (``njetify.save``'s checksum, the bake record's)."""

from __future__ import annotations

import hashlib
from typing import Mapping

import torch

__all__ = ["tensor_digest"]


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """Hex SHA-256 over every tensor's name, dtype, shape and bytes, in name order (device-independent)."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
