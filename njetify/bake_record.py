"""The record a baked model keeps of its σ layers, and :func:`unbake`, which puts them back.

:func:`njetify.bake.bake` replaces every σ layer and safe-subsampling by plain modules; it
keeps the replaced modules (their α, σ and subsampling links) in ``model.njetify_unbaked``,
a :class:`BakeRecord` that is neither a submodule nor in the state_dict, with a checksum of
the plain modules it produced. :func:`unbake` swaps them back, which is how
:func:`njetify.rescale` works on a baked model. The record travels with the module object
(``copy.deepcopy``, a pickled ``.pt`` file), not with a ``.pt2`` / ONNX export.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from .digest import tensor_digest

__all__ = ["BAKED_ATTR", "BAKE_RECORD_ATTR", "BakeRecord", "attach_record", "unbake"]

#: Attribute of a baked model that holds its :class:`BakeRecord`.
BAKE_RECORD_ATTR = "njetify_unbaked"
#: Attribute :func:`njetify.bake.bake` sets on every model it bakes (``True``; kept when the record is lost,
#: so that a baked model with no trace of σ left — every conv plain, strided where it was — is still known).
BAKED_ATTR = "njetify_baked"


@dataclass
class BakeRecord:
    """``modules``: ``{path: the σ layer or safe-subsampling that bake replaced there}``;
    ``digest``: SHA-256 of the baked modules' tensors at those paths, taken at bake time."""

    modules: dict[str, nn.Module]
    digest: str


def _digest(model: nn.Module, paths) -> str:
    tensors = {}
    for path in paths:
        for key, t in model.get_submodule(path).state_dict().items():
            tensors[f"{path}.{key}"] = t
    return tensor_digest(tensors)


def attach_record(baked: nn.Module, replaced: dict[str, nn.Module]) -> None:
    """Keep ``replaced`` (path → module that bake swapped out of ``baked``) on ``baked``."""
    object.__setattr__(baked, BAKED_ATTR, True)
    if replaced:
        object.__setattr__(baked, BAKE_RECORD_ATTR, BakeRecord(dict(replaced), _digest(baked, replaced)))


def unbake(baked: nn.Module) -> nn.Module:
    """A copy of ``baked`` with its σ layers and safe-subsampling back (from its :class:`BakeRecord`).

    What was not baked (BatchNorm, Linear, kept convs) comes from ``baked`` as it is now.
    Raises ``ValueError`` when ``baked`` has no record (an exported or re-built module) or when
    its baked convolutions changed since baking (fine-tuned as plain convs): the record would
    bring back the old filters.
    """
    rec = getattr(baked, BAKE_RECORD_ATTR, None)
    how = ("rescale the converted model, then bake it (njetify.bake(njetify.rescale(converted, f)[0])), or "
           "njetify rescale CONVERTED.safetensors --factor F and then njetify bake")
    if not isinstance(rec, BakeRecord):
        raise ValueError(f"{type(baked).__name__} has no σ layer: it is baked (plain convolutions) and keeps no "
                         f"record of its N-Jet layers to rebuild them from; {how}")
    try:
        same = _digest(baked, rec.modules) == rec.digest
    except AttributeError:  # a recorded path is gone
        same = False
    if not same:
        raise ValueError("the baked convolutions changed since baking (fine-tuned as plain convs?), so its record "
                         f"of N-Jet layers is out of date; {how}")
    work = copy.deepcopy(baked)  # one copy: the record's modules keep their links to each other
    record = work.__dict__.pop(BAKE_RECORD_ATTR)
    work.__dict__.pop(BAKED_ATTR, None)
    for path, module in record.modules.items():
        old = work.get_submodule(path)
        ref = next(iter([*old.parameters(), *old.buffers()]), None)
        if ref is not None:
            module.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        module.train(old.training)
        parent, _, name = path.rpartition(".")
        setattr(work.get_submodule(parent) if parent else work, name, module)
    return work
