"""Bake a converted model for deployment: plain convolutions and fixed resizes, no σ left.

:func:`bake` replaces every N-Jet layer by an ``nn.Conv2d`` holding its materialised
filter (:meth:`NJetConv2d.to_conv`), every tied ASPP branch by its own conv, and every
:class:`~njetify.layers.SafeSubsample` by a :class:`FixedSubsample` frozen at its current
factor. The baked model computes the same outputs as the converted one for every input
size (the resize rule is the same function of the input side), has no ``log_sigma``
parameter, and exports to ONNX (:func:`export_onnx`). It keeps the replaced modules as a record
(``model.njetify_unbaked``, not part of its state_dict or forward) from which
:func:`njetify.rescale` rebuilds the σ layers.

Where the factorised form is faster — measured on the layer's last input shape, or, for a layer
that never ran, where the dense filter needs over :data:`FACTORISED_RATIO` times its
multiply-adds (a 2048→256 layer at σ = 18 with a 63×63 filter: ~300×; see
:mod:`njetify.layers.bake_form`) — the layer is baked as a
:class:`~njetify.layers.factorised_conv.FactorisedConv2d` instead (1-D convs + a 1×1
conv, same outputs, also exportable); :func:`bake` says so once — a :class:`FactorisedNote`, a
``UserWarning`` that is a note on a deliberate choice, not a problem — naming those layers, and
:func:`factorised_layers` lists them with the reason.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .layers import Conv2dDynamicSame, FixedSubsample, SafeSubsample, SubsampledConv2d, carries_sigma
from .layers.bake_form import FACTORISED_RATIO, bake_forms
from .layers.factorised_conv import FactorisedConv2d
from .bake_record import attach_record
from .inputs import first_tensor
from .modes import evaluating

__all__ = [
    "Conv2dDynamicSame",
    "FACTORISED_RATIO",
    "FactorisedConv2d",
    "FactorisedNote",
    "FixedSubsample",
    "bake",
    "factorised_layers",
    "check_onnx",
    "export_onnx",
    "freeze_subsampling",
    "save_baked",
]


class FactorisedNote(UserWarning):
    """A note from :func:`bake`: some layers were baked as :class:`FactorisedConv2d` on purpose (same outputs,
    fewer multiply-adds). Silence it with ``warnings.filterwarnings("ignore", category=FactorisedNote)``."""


def factorised_layers(model: nn.Module) -> list[tuple[str, FactorisedConv2d]]:
    """The layers of a baked model kept in factorised form, with their paths (``.reason`` says why)."""
    return [(p, m) for p, m in model.named_modules() if isinstance(m, FactorisedConv2d)]


def _set(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


def freeze_subsampling(model: nn.Module, at: str = "learned", *, inplace: bool = False) -> nn.Module:
    """Replace every SafeSubsample by a :class:`FixedSubsample`; N-Jet layers stay.

    ``at="learned"`` freezes the current factor; ``at="original"`` uses ``1/stride``, the
    factor of the network before conversion (its feature-map sizes).
    """
    if at not in ("learned", "original"):
        raise ValueError(f"freeze_subsampling: at must be 'learned' or 'original', got {at!r}")
    if not inplace:
        model = copy.deepcopy(model)
    for path, m in list(model.named_modules(remove_duplicate=False)):
        if isinstance(m, SafeSubsample):
            _set(model, path, m.frozen(at))
    return model


@torch.no_grad()
def bake(model: nn.Module, *, inplace: bool = False, factorised="auto") -> nn.Module:
    """Freeze a converted model: N-Jet layers → ``nn.Conv2d`` (or :class:`FactorisedConv2d` where that is
    faster), SafeSubsample → :class:`FixedSubsample` (a strided conv where it keeps every k-th pixel).

    Args:
        model: a model from :func:`njetify.njetify` (or :func:`njetify.load`), fine-tuned or not.
        inplace: modify ``model`` itself (default: bake a deep copy).
        factorised: ``"auto"`` — a layer that has run is baked in the form measured faster on its
            last input shape, one that never ran factorised only where the dense filter needs over
            :data:`FACTORISED_RATIO` times the multiply-adds; ``"never"`` — plain convs only; a
            number — factorised where the dense filter needs over that many times the multiply-adds.

    Returns the baked ``nn.Module`` (same train/eval mode). Its outputs equal the converted
    model's for every input size the converted model accepts.

    Raises:
        ValueError: when a module still holds a learned σ that no rule here can freeze
            (the message names its path and type).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"bake: model must be an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    done: list[str] = []
    replaced: dict[str, nn.Module] = {}
    with bake_forms(factorised):
        _bake_modules(model, done, replaced)
    left = [(p, type(m).__name__) for p, m in model.named_modules() if carries_sigma(m) or hasattr(m, "log_sigma")]
    if left:
        names = ", ".join(f"{p} ({t})" for p, t in left[:5])
        raise ValueError(f"bake: cannot freeze {len(left)} module(s) with a learned σ: {names}")
    attach_record(model, replaced)  # what njetify.rescale needs to rebuild the σ layers
    kept = factorised_layers(model)
    if kept:
        names = ", ".join(f"{p} ({m.size}x{m.size})" for p, m in kept[:5])
        names += f" and {len(kept) - 5} more" if len(kept) > 5 else ""
        warnings.warn(f"bake: note: {len(kept)} layer(s) baked as FactorisedConv2d (1-D convs + 1x1 conv, same "
                      f"outputs) by design, where it beats a dense filter: {names} "
                      "(njetify.bake.factorised_layers gives each one's reason)", FactorisedNote, stacklevel=2)
    return model


def _bake_modules(model: nn.Module, done: list[str], replaced: dict[str, nn.Module]) -> None:
    """Replace every σ layer and SafeSubsample of ``model`` by its baked form (in place)."""
    for path, m in list(model.named_modules(remove_duplicate=False)):
        if not path or any(path.startswith(d + ".") for d in done):
            continue  # inside a module baked already (an N-Jet layer's subsampling)
        if carries_sigma(m):
            _set(model, path, m.baked())
        elif isinstance(m, SubsampledConv2d) and isinstance(m.subsample, SafeSubsample):
            _set(model, path, m.frozen())
        elif isinstance(m, SafeSubsample):
            _set(model, path, m.frozen())
        else:
            continue
        replaced[path] = m
        done.append(path)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_input: torch.Tensor,
    *,
    dynamic_batch: bool = True,
    opset: int = 17,
) -> Path:
    """Export a baked model to ONNX at the spatial size of ``example_input`` ``(N, C, H, W)``.

    The batch axis is dynamic when ``dynamic_batch``; H and W are fixed (the resize picks
    are computed for that size). Returns the path written.
    """
    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4:
        shape = getattr(example_input, "shape", None)
        raise ValueError(f"export_onnx: example_input must be a tensor (N, C, H, W), got shape {shape}")
    left = [p for p, m in model.named_modules() if carries_sigma(m)]
    if left:
        raise ValueError(f"export_onnx: bake the model first ({len(left)} module(s) still learn σ, e.g. {left[0]})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    with evaluating(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shapes turned into constants
        torch.onnx.export(
            model, (example_input,), str(path), input_names=["input"], output_names=["output"],
            dynamic_axes=axes, opset_version=opset, dynamo=False,
        )
    return path


def check_onnx(path: str | os.PathLike, model: nn.Module, example_input: torch.Tensor) -> float:
    """Run the ONNX file with onnxruntime on ``example_input``; max abs difference to ``model``."""
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("check_onnx needs onnxruntime: pip install 'njetify[onnx]'") from None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: example_input.detach().cpu().numpy()})[0]
    with evaluating(model):
        ref = first_tensor(model(example_input))
    return float((torch.from_numpy(got) - ref.detach().cpu()).abs().max())


def save_baked(model: nn.Module, path: str | os.PathLike, example_input: torch.Tensor) -> Path:
    """Write a baked model. ``.pt2``: a ``torch.export`` program (loads without njetify:
    ``torch.export.load(path).module()``; dynamic batch, H and W fixed to ``example_input``'s).
    ``.pt`` / ``.pth``: the whole module pickled with ``torch.save`` (any input size; loading
    needs njetify installed and ``torch.load(path, weights_only=False)``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".pt2", ".pt", ".pth"):
        raise ValueError(f"save_baked: path must end in .pt2 (torch.export) or .pt/.pth (pickled module), got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix != ".pt2":
        torch.save(model, path)
        return path
    shapes = ({0: torch.export.Dim("batch", min=1)},) if example_input.shape[0] > 1 else None
    with evaluating(model):
        program = torch.export.export(model, (example_input,), dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return path
