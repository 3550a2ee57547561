"""Weights computed from other tensors: copying such models, and what conversion drops of them.

``torch.nn.utils.parametrizations.weight_norm`` / ``spectral_norm`` (parametrisations), the
older hook forms ``torch.nn.utils.weight_norm`` / ``spectral_norm`` and ``torch.nn.utils.prune``
masks all give a conv an *effective* weight computed from other tensors. Conversion fits the
N-Jet layer to that effective weight (what the conv really applies); the reparametrisation
itself (g·v/‖v‖, the spectral normalisation, the mask) is not carried over: the N-Jet layer
learns α and σ. :func:`reparametrisations` says, per conv, what is dropped.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

_PARAMETRISATIONS = {"_WeightNorm": "weight_norm", "_SpectralNorm": "spectral_norm"}


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``, also when a hook keeps a computed (non-leaf) weight on a module
    (the old ``weight_norm``, ``prune``), which ``copy.deepcopy`` refuses: such tensors are copied
    detached (their hook recomputes them at the next forward). ``model`` is left as it was.
    Raises TypeError naming the class when the copy still fails."""
    stashed = []
    for m in model.modules():
        for name, value in list(vars(m).items()):
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                stashed.append((m, name, value))
                m.__dict__[name] = value.detach()
    try:
        return copy.deepcopy(model)
    except Exception as e:  # noqa: BLE001 - any failure of the user's class to copy
        raise TypeError(f"{type(model).__name__} cannot be deep-copied ({type(e).__name__}: {e})") from None
    finally:
        for m, name, value in stashed:
            m.__dict__[name] = value


def refresh_effective(model: nn.Module) -> None:
    """Recompute the weight the old hooks keep on a module (``weight_norm``, ``spectral_norm``, ``prune``),
    as their next forward would (no power iteration, no gradient): the old ``spectral_norm`` holds the
    raw weight until the first forward, and conversion reads ``module.weight``."""
    from torch.nn.utils import prune
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    with torch.no_grad():
        for m in model.modules():
            for hook in m._forward_pre_hooks.values():
                if isinstance(hook, SpectralNorm):
                    m.__dict__[hook.name] = hook.compute_weight(m, do_power_iteration=False)
                elif isinstance(hook, WeightNorm):
                    m.__dict__[hook.name] = hook.compute_weight(m)
                elif isinstance(hook, prune.BasePruningMethod):
                    m.__dict__[hook._tensor_name] = hook.apply_mask(m)


def reparametrisations(model: nn.Module) -> dict[str, str]:
    """Module path → what computes its weight (e.g. ``"weight_norm"``, ``"a torch.nn.utils.prune mask
    (50% zeros)"``), for every module whose ``weight`` is computed; empty when there is none."""
    out = {}
    for path, m in model.named_modules():
        what = _describe(m)
        if what:
            out[path] = " and ".join(what)
    return out


def _describe(m: nn.Module) -> list[str]:
    what = []
    if parametrize.is_parametrized(m, "weight"):
        for p in m.parametrizations["weight"]:
            what.append(_PARAMETRISATIONS.get(type(p).__name__, f"the parametrisation {type(p).__name__}"))
    from torch.nn.utils import prune
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    for hook in m._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm) and hook.name == "weight":
            what.append("weight_norm (hook)")
        elif isinstance(hook, SpectralNorm) and hook.name == "weight":
            what.append("spectral_norm (hook)")
        elif isinstance(hook, prune.BasePruningMethod) and getattr(hook, "_tensor_name", None) == "weight":
            mask = getattr(m, "weight_mask", None)
            zeros = f" ({100 * float((mask == 0).float().mean()):.0f}% zeros)" if isinstance(mask, torch.Tensor) else ""
            what.append(f"a torch.nn.utils.prune mask{zeros}")
    return what


def note_dropped(ctx, before: dict[str, str]) -> None:
    """A :class:`~njetify.surgery.decisions.Reparametrised` decision for each conv the conv pass converted whose
    weight was computed (``before``: :func:`reparametrisations` of the model before conversion); the
    report's view notes it and sets ``extra["reparametrised"]`` on its row unless it ended up kept."""
    from .decisions import Conversion, Reparametrised

    for d in ctx.decided(Conversion):
        what = before.get(d.path)
        if what is not None and d.decision == "converted":
            ctx.decide(Reparametrised(d.path, what=what))
