"""The model-name registry: built-in architectures plus names that resolve to timm, torchvision and smp.

``create_model("resnet32")`` builds a built-in; ``"timm:efficientnet_b0"``,
``"tv:resnet50"``, ``"smp:Unet:resnet34"`` go to the libraries, and a bare name
that is not built-in is tried in timm. The model remembers how it was built in
``model.njetify_source`` (name, num_classes, in_chans, kwargs), which
:func:`njetify.save` stores so that :func:`njetify.load` can rebuild it.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from dataclasses import dataclass
from typing import Callable

from torch import nn

__all__ = ["ModelEntry", "register_model", "create_model", "list_models", "model_entry", "SOURCE_ATTR"]

#: Attribute set on every model built by :func:`create_model`.
SOURCE_ATTR = "njetify_source"


@dataclass(frozen=True)
class ModelEntry:
    """A built-in architecture: ``fn(num_classes=None, in_chans=None, **kwargs) -> nn.Module``."""

    name: str
    fn: Callable[..., nn.Module]
    description: str
    #: ``check_weights(state_dict, num_classes)`` (num_classes None: the builder's default) raises
    #: ValueError when a checkpoint cannot fit the requested model, e.g. a head for other classes.
    check_weights: Callable[..., object] | None = None


_BUILTINS: dict[str, ModelEntry] = {}


def register_model(name: str, *, description: str = "", overwrite: bool = False, check_weights=None):
    """Decorator registering a builder ``fn(num_classes=None, in_chans=None, **kwargs) -> nn.Module``.

    ``check_weights(state_dict, num_classes)`` (optional) vets a ``weights=`` checkpoint before it loads.

    ``name`` must not contain ``:`` (reserved for library prefixes). Registering a
    name twice with a different function raises unless ``overwrite=True``.
    """
    if not isinstance(name, str) or not name or ":" in name or name != name.strip():
        raise ValueError(f"register_model: name must be a non-empty string without ':' or spaces, got {name!r}")

    def decorator(fn):
        if not callable(fn):
            raise TypeError(f"register_model({name!r}): expected a callable builder, got {type(fn).__name__}")
        old = _BUILTINS.get(name)
        if old is not None and old.fn is not fn and not overwrite:
            raise ValueError(f"register_model: {name!r} is already registered (by {old.fn.__module__}); pass overwrite=True")
        doc = (fn.__doc__ or "").strip().splitlines()
        _BUILTINS[name] = ModelEntry(name, fn, description or (doc[0] if doc else ""), check_weights)
        return fn

    return decorator


def _ensure_builtins() -> None:
    from . import _load_zoo  # noqa: F401  (importing the package registers the built-in zoo)


def model_entry(name: str) -> ModelEntry | None:
    """The built-in entry for ``name``, or None when it is not built in."""
    _ensure_builtins()
    return _BUILTINS.get(name)


def list_models(pattern: str | None = None, *, libraries: bool = True) -> list[str]:
    """Model names: built-ins first (sorted), then ``timm:…``, ``tv:…``, ``smp:Arch:encoder``.

    ``pattern`` is a case-insensitive glob (``"resnet*"``, ``"tv:*"``, ``"*efficientnet*"``);
    ``libraries=False`` lists the built-ins only.
    """
    _ensure_builtins()
    names = sorted(_BUILTINS)
    if libraries:
        from .libraries import library_model_names

        names += list(library_model_names())
    if pattern is not None:
        if not isinstance(pattern, str):
            raise TypeError(f"list_models: pattern must be a glob string or None, got {pattern!r}")
        pat = pattern.lower()
        names = [n for n in names if fnmatch.fnmatchcase(n.lower(), pat)]
    return names


def _check_count(arg: str, value) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise TypeError(f"create_model: {arg} must be a positive int or None, got {value!r}")


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    **kwargs,
) -> nn.Module:
    """Build a model by name.

    Args:
        name: a built-in (``njetify.list_models(libraries=False)``), ``timm:<name>`` (or a bare timm
            name), ``tv:<name>`` (torchvision classification/segmentation), ``smp:<Arch>[:<encoder>]``.
        num_classes: output classes (None: the architecture's default).
        in_chans: input channels (None: the architecture's default, usually 3).
        pretrained: use the library's pretrained weights (downloads; built-ins ship none).
        weights: a local ``.pth``/``.pt``/``.safetensors`` state_dict loaded after building;
            wrappers and ``module.`` prefixes are handled, and missing/unexpected keys
            are reported as a warning (see :func:`njetify.models.load_weights`).
        **kwargs: passed to the builder.

    Returns the ``nn.Module`` with ``njetify_source`` set. Unknown names raise ``ValueError``
    with the closest known names.
    """
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"create_model: name must be a non-empty string, got {name!r}")
    _check_count("num_classes", num_classes)
    _check_count("in_chans", in_chans)
    if not isinstance(pretrained, bool):
        raise TypeError(f"create_model: pretrained must be True or False, got {pretrained!r}")
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"create_model: weights must be a file path or None, got {type(weights).__name__}")

    entry = model_entry(name)
    if entry is not None:
        if pretrained:
            raise ValueError(
                f"create_model: built-in {name!r} ships no pretrained weights; pass weights=PATH to a local "
                f"checkpoint (pretrained=True is for timm:/tv:/smp: models)"
            )
        sizes = {k: v for k, v in (("num_classes", num_classes), ("in_chans", in_chans)) if v is not None}
        model = entry.fn(**sizes, **kwargs)
    elif ":" in name or _is_timm_name(name):
        from .libraries import create_library_model

        model = create_library_model(
            name, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, kwargs=kwargs
        )
    else:
        raise _unknown_name(name)

    if weights is not None:
        import warnings

        from .weights import load_weights, read_state_dict

        state = read_state_dict(weights)
        if entry is not None and entry.check_weights is not None:
            entry.check_weights(state, num_classes)
        report = load_weights(model, state)
        if not report.ok:
            warnings.warn(f"create_model({name!r}, weights=...): {report.summary()}", stacklevel=2)
    setattr(
        model,
        SOURCE_ATTR,
        {"name": name, "num_classes": num_classes, "in_chans": in_chans, "kwargs": dict(kwargs)},
    )
    return model


def _is_timm_name(name: str) -> bool:
    import timm

    return timm.is_model(name)


def _unknown_name(name: str) -> ValueError:
    from .libraries import _all_names_for_suggestions, not_supported_yet, unsupported_kind

    kind = unsupported_kind(name)
    if kind is not None:
        return not_supported_yet(name, kind)

    close = difflib.get_close_matches(name, _all_names_for_suggestions(), n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return ValueError(
        f"create_model: unknown model name {name!r}.{hint} Built-ins: {', '.join(sorted(_BUILTINS))}; "
        f"library models take a prefix: 'timm:<name>', 'tv:<name>', 'smp:<Arch>:<encoder>' "
        f"(njetify.list_models() lists them all)"
    )
