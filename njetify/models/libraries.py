"""Model names that resolve to the libraries: ``timm:``, ``tv:`` (torchvision) and ``smp:Arch:encoder``.

The libraries are imported only when a name needs them. ``pretrained=True`` uses
each library's own download (internet); otherwise nothing is downloaded —
torchvision segmentation backbones and smp encoders are built without weights.
"""

from __future__ import annotations

import contextlib
import os
import socket
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from torch import nn

__all__ = ["PREFIXES", "OfflineError", "create_library_model", "library_model_names", "smp_arch_names",
           "unsupported_kind"]


class OfflineError(ConnectionError):
    """Pretrained weights are needed, are not in the local cache, and their server cannot be reached."""


def _reachable(host: str, timeout: float = 3.0) -> bool:
    """True when a TCP connection to ``host``:443 opens within ``timeout`` s (or a proxy is configured)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # the proxy decides; let the library try
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline_unless_reachable():
    """Inside the block, the Hugging Face hub is used offline (cached files only, no retries) when its
    server cannot be reached: a missing file fails in a second instead of after a minute of retries."""
    try:
        import huggingface_hub.constants as hub
    except ImportError:  # pragma: no cover - timm depends on it
        yield
        return
    if hub.HF_HUB_OFFLINE or _reachable(urlparse(hub.ENDPOINT).hostname or "huggingface.co"):
        yield
        return
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    except Exception as e:
        chain, seen = e, set()
        while chain is not None and id(chain) not in seen:  # only the hub's "not cached, offline" errors
            if type(chain).__name__ in ("OfflineModeIsEnabled", "LocalEntryNotFoundError"):
                break
            seen.add(id(chain))
            chain = chain.__cause__ or chain.__context__
        else:
            raise
        raise OfflineError(
            f"{urlparse(hub.ENDPOINT).hostname} cannot be reached and the pretrained weights are not in the local "
            f"Hugging Face cache ({type(e).__name__}); download them once where there is internet, or pass "
            f"weights=PATH with a local checkpoint"
        ) from e
    finally:
        hub.HF_HUB_OFFLINE = False


def unsupported_kind(name: str) -> str | None:
    """``"detection"``, ``"video"`` or ``"optical flow"`` for a torchvision model njetify does not convert yet."""
    import torchvision.models as tvm

    bare = name.removeprefix("tv:")
    for module, kind in ((tvm.detection, "detection"), (tvm.video, "video"), (tvm.optical_flow, "optical flow")):
        if bare in tvm.list_models(module=module):
            return kind
    return None


def not_supported_yet(name: str, kind: str) -> ValueError:
    return ValueError(
        f"create_model: {name!r} is a torchvision {kind} model: not supported yet. njetify converts "
        f"classification and segmentation networks (timm:, tv: classifiers and segmentation models, smp:); "
        f"a {kind} model's backbone can be converted on its own"
    )

PREFIXES = ("timm:", "tv:", "smp:")


@lru_cache(maxsize=1)
def _tv_names() -> dict[str, str]:
    """torchvision classification and segmentation builder names → kind."""
    import torchvision.models as tvm

    names = {n: "classification" for n in tvm.list_models(module=tvm)}
    names.update({n: "segmentation" for n in tvm.list_models(module=tvm.segmentation)})
    return names


def smp_arch_names() -> dict[str, str]:
    """smp architecture class names (``Unet``, ``DeepLabV3Plus``, ...) by lower-case key."""
    import segmentation_models_pytorch as smp

    return {key: cls.__name__ for key, cls in smp.MODEL_ARCHITECTURES_MAPPING.items()}


@lru_cache(maxsize=1)
def library_model_names() -> tuple[str, ...]:
    """``timm:<name>``, ``tv:<name>`` and ``smp:<Arch>:<encoder>`` for every model the libraries build.

    smp combinations are listed for every architecture and encoder; a few architectures
    accept only some encoders (smp says which when it is asked for an invalid pair).
    Computed once per process.
    """
    import segmentation_models_pytorch as smp
    import timm

    names = [f"timm:{n}" for n in timm.list_models()]
    names += [f"tv:{n}" for n in sorted(_tv_names())]
    encoders = smp.encoders.get_encoder_names()
    names += [f"smp:{arch}:{enc}" for arch in sorted(smp_arch_names().values()) for enc in encoders]
    return tuple(names)


def create_library_model(
    name: str, *, num_classes: int | None, in_chans: int | None, pretrained: bool, kwargs: dict
) -> nn.Module:
    """Build ``name`` (with its prefix; a bare name is tried in timm)."""
    lib, _, rest = name.partition(":") if ":" in name else ("timm", ":", name)
    if lib == "timm":
        return _create_timm(name, rest, num_classes, in_chans, pretrained, kwargs)
    if lib == "tv":
        return _create_tv(name, rest, num_classes, in_chans, pretrained, kwargs)
    if lib == "smp":
        return _create_smp(name, rest, num_classes, in_chans, pretrained, kwargs)
    raise ValueError(f"create_model: unknown prefix {lib + ':'!r} in {name!r}; allowed prefixes: {', '.join(PREFIXES)}")


def _unknown(name: str, candidates, what: str) -> ValueError:
    import difflib

    close = difflib.get_close_matches(name, list(candidates), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return ValueError(f"create_model: unknown {what} {name!r}{hint} (see njetify.list_models())")


def _create_timm(full, name, num_classes, in_chans, pretrained, kwargs):
    import timm

    if not timm.is_model(name):
        raise _unknown(full, _all_names_for_suggestions(), "model name")
    extra = dict(kwargs)
    if num_classes is not None:
        extra["num_classes"] = num_classes
    if in_chans is not None:
        extra["in_chans"] = in_chans
    with _hub_offline_unless_reachable() if pretrained else contextlib.nullcontext():
        return timm.create_model(name, pretrained=pretrained, **extra)


def _create_tv(full, name, num_classes, in_chans, pretrained, kwargs):
    import torchvision.models as tvm

    kinds = _tv_names()
    if name not in kinds:
        kind = unsupported_kind(name)
        if kind is not None:
            raise not_supported_yet(full, kind)
        raise _unknown(full, [f"tv:{n}" for n in kinds], "torchvision model")
    extra = dict(kwargs)
    extra.setdefault("weights", "DEFAULT" if pretrained else None)
    if kinds[name] == "segmentation" and extra["weights"] is None:
        extra.setdefault("weights_backbone", None)  # never download a backbone behind the user's back
    if num_classes is not None:
        if extra["weights"] is not None:
            raise ValueError(
                f"create_model: {full!r} with pretrained weights keeps the classes it was trained on; "
                f"num_classes={num_classes} needs pretrained=False (or a timm: model, whose head timm replaces)"
            )
        extra["num_classes"] = num_classes
    if extra["weights"] is not None:
        _check_tv_download(full, tvm.get_model_weights(name), extra["weights"])
    model = tvm.get_model(name, **extra)
    if in_chans is not None and in_chans != 3:
        _adapt_first_conv(model, in_chans, full)
    return model


def _check_tv_download(full: str, enum, weights) -> None:
    """Fail at once when torchvision would download weights that are not cached from an unreachable host."""
    import torch

    w = enum[weights] if isinstance(weights, str) and weights != "DEFAULT" else getattr(enum, "DEFAULT", None)
    url = getattr(w, "url", None)
    if not url or (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)).is_file():
        return
    host = urlparse(url).hostname or ""
    if not _reachable(host):
        raise OfflineError(f"{host} cannot be reached and the pretrained weights of {full!r} are not in the local "
                           f"torch hub cache ({torch.hub.get_dir()}); download them once where there is internet, "
                           f"or pass weights=PATH with a local checkpoint")


def _adapt_first_conv(model: nn.Module, in_chans: int, name: str) -> None:
    """Replace the first 3-channel conv by one with ``in_chans`` inputs (weights adapted as timm does)."""
    from timm.models import adapt_input_conv

    for path, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d) and conv.in_channels == 3 and conv.groups == 1:
            new = nn.Conv2d(
                in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                bias=conv.bias is not None, padding_mode=conv.padding_mode,
            )
            new.weight.data = adapt_input_conv(in_chans, conv.weight.data)
            if conv.bias is not None:
                new.bias.data = conv.bias.data.clone()
            parent_path, _, attr = path.rpartition(".")
            setattr(model.get_submodule(parent_path) if parent_path else model, attr, new)
            return
    raise ValueError(f"create_model: in_chans={in_chans} given but {name!r} has no 3-channel input conv to adapt")


def _create_smp(full, rest, num_classes, in_chans, pretrained, kwargs):
    import segmentation_models_pytorch as smp
    import timm

    arch, _, encoder = rest.partition(":")
    archs = smp_arch_names()
    if arch.lower() not in archs:
        raise _unknown(full, [f"smp:{a}" for a in archs.values()], "smp architecture")
    encoder = encoder or "resnet34"
    known = smp.encoders.get_encoder_names()
    if encoder not in known and not (encoder.startswith("tu-") and timm.is_model(encoder[3:])):
        err = _unknown(encoder, known, "smp encoder")
        raise ValueError(f"{err} in {full!r}; smp also takes 'tu-<timm name>' encoders") from None
    extra = dict(kwargs)
    if "encoder_weights" not in extra:
        extra["encoder_weights"] = _smp_default_weights(encoder) if pretrained else None
    if num_classes is not None:
        extra["classes"] = num_classes
    if in_chans is not None:
        extra["in_channels"] = in_chans
    with _hub_offline_unless_reachable() if extra["encoder_weights"] else contextlib.nullcontext():
        return smp.create_model(archs[arch.lower()], encoder_name=encoder, **extra)


def _smp_default_weights(encoder: str) -> str:
    if encoder.startswith("tu-"):
        return "imagenet"
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders[encoder].get("pretrained_settings", {})
    if not settings:
        raise ValueError(f"create_model: smp encoder {encoder!r} has no pretrained weights; use pretrained=False")
    return "imagenet" if "imagenet" in settings else next(iter(settings))


def _all_names_for_suggestions() -> list[str]:
    import timm

    from .registry import _BUILTINS

    return list(_BUILTINS) + timm.list_models() + [f"tv:{n}" for n in _tv_names()] + [
        f"smp:{a}" for a in smp_arch_names().values()
    ]
