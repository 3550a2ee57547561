"""What a converted model looks like at one input size: σ, filter sizes, feature maps, receptive fields.

:func:`summarize` runs one forward pass at the learned σ's and one as the *original*
network: every safe-subsampling back at its original stride and every N-Jet layer at
the extent of the kernel it replaced (from the conversion report the model carries).
For each spatial layer (N-Jet layers, tied ASPP branches, remaining convolutions,
pooling and subsampling) it records σ, filter size, output side and theoretical
receptive field in both. :func:`count_macs` counts multiply-accumulates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import math

import torch
from torch import nn

from ..bake import freeze_subsampling
from ..fit import sigma_from_kernel
from ..inputs import first_tensor
from ..layers import FixedSubsample, NJetConv2d, SafePool2d, SafeSubsample, SafeUpsample, carries_sigma
from ..modes import evaluating
from .trace import MacCounter, RFTracker

__all__ = ["LayerInfo", "ModelSummary", "count_macs", "original_sizes", "parse_input_size", "summarize"]

_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass
class LayerInfo:
    """One spatial layer. Sizes ``(H, W)`` and receptive fields ``(rf_h, rf_w)`` are in pixels.

    ``kind``: ``"njet"``, ``"tied"`` (an ASPP branch sharing α), ``"conv"`` (kept as is),
    ``"subsample"``, ``"upsample"`` or ``"pool"``. ``*_original``: the same in the network before
    conversion (every safe-subsampling at its original stride, every N-Jet layer at the
    extent ``(k−1)·d + 1`` of the k×k kernel with dilation d it replaced). ``sigma0``: σ at
    conversion. ``sigma_range``: (min, max) for σ per channel. ``factor``: the current
    resize factor of a subsampling.
    """

    path: str
    kind: str
    op: str
    sigma: float | None = None
    sigma_range: tuple[float, float] | None = None
    size: int | None = None
    size_original: int | None = None
    sigma0: float | None = None
    stride: int | None = None
    factor: float | None = None
    source: str | None = None
    out_size: tuple[int, int] | None = None
    out_size_original: tuple[int, int] | None = None
    rf: tuple[float, float] | None = None
    rf_original: tuple[float, float] | None = None


@dataclass
class ModelSummary:
    """Per-layer :class:`LayerInfo` rows in execution order, plus totals."""

    input_size: tuple[int, int, int]
    layers: list[LayerInfo] = field(default_factory=list)
    params: int = 0
    macs: int | None = None
    output_shape: tuple[int, ...] | None = None

    @property
    def njet_layers(self) -> list[LayerInfo]:
        """Rows of the layers with a learned σ (N-Jet layers and tied branches)."""
        return [r for r in self.layers if r.kind in ("njet", "tied")]

    def to_dict(self) -> dict:
        """Plain, JSON-serialisable dict."""
        d = asdict(self)
        d["njet_count"] = len(self.njet_layers)
        return d

    def headline(self) -> str:
        """One line: input size, N-Jet count, σ range, parameters, MACs."""
        sig = [r.sigma for r in self.njet_layers if r.sigma is not None]
        c, h, w = self.input_size
        parts = [f"input {c}x{h}x{w}", f"{len(self.njet_layers)} N-Jet layer(s)"]
        if sig:
            parts.append(f"σ {min(sig):.3g}..{max(sig):.3g}")
        parts.append(f"{self.params:,} params")
        if self.macs is not None:
            parts.append(f"{self.macs / 1e6:,.1f}M MACs")
        return ", ".join(parts)

    def table(self):
        """A rich renderable, one line per layer, that fits the console it is printed on (module
        paths shortened in the middle). Columns: σ, filter size s and s₀ (original), output
        side out and out₀ (original), receptive field RF and RF₀ (original), in pixels."""
        from ..textfit import Column, PathTable

        cols = [Column("layer"), Column("op"), Column("σ", "right"), Column("s", "right"), Column("s₀", "right"),
                Column("out", "right"), Column("out₀", "right"), Column("RF", "right"), Column("RF₀", "right")]
        rows = [[r.path, r.op, _sig(r), _int(r.size), _int(r.size_original), _hw(r.out_size),
                 _hw(r.out_size_original), _hw(r.rf), _hw(r.rf_original)] for r in self.layers]
        return PathTable(cols, rows, title=self.headline())

    def __rich__(self):
        return self.table()


def _sig(r: LayerInfo) -> str:
    if r.sigma_range is not None:
        return f"{r.sigma_range[0]:.2g}-{r.sigma_range[1]:.2g}"
    return "" if r.sigma is None else f"{r.sigma:.3g}"


def _int(v) -> str:
    return "" if v is None else str(v)


def _hw(v) -> str:
    if v is None:
        return "-"
    a, b = (round(x) for x in v)
    return str(a) if a == b else f"{a}x{b}"


def parse_input_size(text: str | tuple | list) -> tuple[int, int, int]:
    """``"3x32x32"`` (or ``(3, 32, 32)``) → ``(C, H, W)``.

    Raises ``ValueError`` naming the value and the accepted form.
    """
    if isinstance(text, (tuple, list)):
        parts = list(text)
    else:
        parts = str(text).strip().lower().replace("×", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except (TypeError, ValueError):
        nums = []
    if len(nums) != 3 or min(nums) < 1:
        raise ValueError(f"input size must be CxHxW with three positive integers (e.g. 3x32x32), got {text!r}")
    return tuple(nums)


def _describe(m: nn.Module) -> tuple[str, dict] | None:
    if carries_sigma(m):  # any σ layer, a user's own included, describes itself (SigmaModule.describe)
        info = dict(m.describe())
        return info.pop("kind", "njet"), info
    if isinstance(m, nn.ConvTranspose2d):
        k, s = m.kernel_size, m.stride[0]
        return "conv", {"op": f"conv transposed {k[0]}x{k[1]} ×{s}", "size": k[0], "stride": 1}
    if isinstance(m, SafeUpsample):
        return "upsample", {"op": "resize to partner" if not m.has_scale else f"upsample ×{m.scale[0]:g} (to partner)"}
    if isinstance(m, SafeSubsample):
        return "subsample", {"op": f"subsample ×{m.factor:.3g}", "factor": m.factor, "stride": m.stride,
                             "source": m.source_name}
    if isinstance(m, FixedSubsample):
        return "subsample", {"op": f"resize ×{m.factor:.3g}", "factor": m.factor, "stride": m.stride}
    if isinstance(m, nn.Conv2d):
        k, s = m.kernel_size, m.stride[0]
        return "conv", {"op": f"conv {k[0]}x{k[1]}" + (f" s{s}" if s > 1 else ""), "size": k[0], "stride": s}
    if isinstance(m, (_POOLS, SafePool2d)):
        spec = getattr(m, "spec", None)
        if spec is not None:
            return "pool", {"op": f"{spec.kind}pool {spec.kernel} s1", "size": spec.kernel, "stride": 1}
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            return "pool", {"op": "global pool" if m.output_size in (1, (1, 1)) else "adaptive pool"}
        k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
        s = m.stride if isinstance(m.stride, int) else m.stride[0]
        kind = "max" if isinstance(m, nn.MaxPool2d) else "avg"
        return "pool", {"op": f"{kind}pool {k} s{s}", "size": k, "stride": s}
    return None


@torch.no_grad()
def _trace(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, tuple], list[str], tuple]:
    """``{path: (out_size, rf)}`` per spatial layer, the execution order, the output shape."""
    rows: dict[str, tuple] = {}
    order: list[str] = []
    tracker = RFTracker(x)
    handles = []
    for path, m in model.named_modules():
        if path and _describe(m) is not None:
            def hook(mod, args, out, path=path):
                t = out if isinstance(out, torch.Tensor) else None
                if t is None or t.dim() != 4:
                    return
                st = tracker.get(t)
                rows[path] = (tuple(t.shape[-2:]), None if st is None else st.rf)
                if path not in order:
                    order.append(path)
            handles.append(m.register_forward_hook(hook))
    try:
        with tracker:
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    out = first_tensor(out)
    return rows, order, tuple(out.shape)


def original_sizes(model: nn.Module) -> dict[str, dict]:
    """``{layer: {"size", "sigma0"}}`` for every conv the conversion replaced, from the report the
    model carries (``model.njetify_report``, also after :func:`njetify.load`): ``size`` is the
    pixel extent ``(k−1)·d + 1`` of the original k×k kernel with dilation d. Empty without a report."""
    report = getattr(model, "njetify_report", None)
    out = {}
    for row in getattr(report, "rows", None) or []:
        if row.kind == "conv" and row.action == "converted" and isinstance(row.kernel, int):
            d = row.dilation if isinstance(row.dilation, int) else 1
            out[row.path] = {"size": (row.kernel - 1) * d + 1, "sigma0": row.sigma0}
    return out


def _as_original(model: nn.Module, sizes: dict[str, dict]) -> nn.Module:
    """A copy of ``model`` that computes like the network before conversion: subsampling at the
    original strides, every N-Jet layer with a known original kernel at that kernel's extent."""
    copy = freeze_subsampling(model, "original")
    with torch.no_grad():
        for path, m in copy.named_modules():
            if isinstance(m, NJetConv2d) and path in sizes and sizes[path]["size"] > 1:
                m.log_sigma.fill_(math.log(sigma_from_kernel(sizes[path]["size"], 1, m.extent)))
    return copy


def summarize(model: nn.Module, input_size=(3, 224, 224), *, original: bool = True, macs: bool = True) -> ModelSummary:
    """Summarise ``model`` at ``input_size`` ``(C, H, W)`` (or ``"CxHxW"``).

    Runs in eval mode on a batch of one on the model's device (restoring its mode after).
    ``original``: also run the original network (see :func:`original_sizes`): its feature-map
    sides and receptive fields fill the ``*_original`` fields.
    ``macs``: count multiply-accumulates of the forward pass.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"summarize: model must be an nn.Module, got {type(model).__name__}")
    size = parse_input_size(input_size)
    p = next(model.parameters(), None)
    device, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)
    x = torch.randn(1, *size, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    sizes = original_sizes(model)
    with evaluating(model):
        learned, order, out_shape = _trace(model, x)
        orig = _trace(_as_original(model, sizes), x)[0] if original else {}
        total_macs = count_macs(model, x, warmup=False) if macs else None
    modules = dict(model.named_modules())
    summary = ModelSummary(size, params=sum(q.numel() for q in model.parameters()), macs=total_macs,
                           output_shape=out_shape)
    for path in order:
        kind, info = _describe(modules[path])
        out_size, rf = learned[path]
        o_size, o_rf = orig.get(path, (None, None))
        if kind == "njet" and path in sizes:
            info.update(size_original=sizes[path]["size"], sigma0=sizes[path]["sigma0"])
        elif kind in ("conv", "pool"):
            info["size_original"] = info.get("size")
        summary.layers.append(LayerInfo(path, kind, out_size=out_size, rf=rf, out_size_original=o_size,
                                        rf_original=o_rf, **info))
    return summary


@torch.no_grad()
def count_macs(model: nn.Module, example_input: torch.Tensor, *, warmup: bool = True) -> int:
    """Multiply-accumulates of one forward pass on ``example_input`` (convolutions and matmuls).

    Counted by :class:`~njetify.summary.trace.MacCounter` after one warm-up pass (skip it
    with ``warmup=False`` when the model just ran in eval mode), so cached N-Jet filters
    (eval mode) are not counted as work.
    """
    if warmup:
        model(example_input)
    counter = MacCounter()
    with counter:
        model(example_input)
    return counter.macs
