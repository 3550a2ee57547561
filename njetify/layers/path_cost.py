"""Which way to run an N-Jet convolution: a cost model of sizes, channels, groups and device.

Three exact ways (DESIGN §7): ``"dense"`` (materialise the ``s×s`` filter, one ``conv2d``),
``"basis_first"`` and ``"mix_first"`` (:mod:`njetify.layers.factorised`). The model
predicts each one's time as a sum of terms ``work / rate``, with one rate per kind of
work, plus a fixed overhead per call, and picks the fastest:

* dense: ``N·Ho·Wo·O·Cg·s²`` conv MACs (rate per device; depthwise convs have their own
  rate), plus building the filter ``O·Cg·F·s²`` when it is not cached (training);
* factorised: the 1×1 mix ``N·P·O·Cg·F`` (GEMM rate, P the pixels it runs at), the x-pass
  (one GEMM of small inner size) and the y-pass (many small matrix products), plus the
  memory traffic of the ``F``-fold intermediate maps.

A training step (forward + backward) costs about 3× the forward for every way; the
basis-first backward recomputes its filtering (one more pass). The CPU rates were
measured with ``benchmarks/layer.py --calibrate`` on the development machine (see
docs/speed.md); the CUDA rates are estimates (cuDNN convolutions are fast, and every
factorised call launches about 20 kernels), so small and medium filters stay dense there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PATHS = ("auto", "dense", "factorised", "basis_first", "mix_first")


@dataclass(frozen=True)
class Rates:
    """Throughputs (multiply-adds or bytes per second) and fixed costs (seconds) of one device."""

    conv: float  # dense conv2d MACs/s (groups of ≥ 8 channels)
    conv_depthwise: float  # dense conv2d MACs/s, ≤ 4 channels per group
    gemm: float  # large matrix products (the mix)
    gemm_thin: float  # products with a small inner size (the x-pass, ~H)
    planes: float  # batched products of one image plane each (the y-pass)
    plane_call: float  # seconds per plane product
    bandwidth: float  # bytes/s of an intermediate written and read once
    call: float  # fixed seconds per factorised call (operator building, ~20 ops)


CPU = Rates(conv=40e9, conv_depthwise=4e9, gemm=35e9, gemm_thin=12e9, planes=12e9, plane_call=0.3e-6,
            bandwidth=8e9, call=300e-6)
CUDA = Rates(conv=8e12, conv_depthwise=0.3e12, gemm=12e12, gemm_thin=2e12, planes=2e12, plane_call=1e-9,
             bandwidth=1e12, call=250e-6)


@dataclass(frozen=True)
class ConvShape:
    """Everything the costs depend on. ``per_channel``: one σ per output channel."""

    batch: int
    in_channels: int
    out_channels: int
    groups: int
    height: int
    width: int
    out_height: int
    out_width: int
    size: int
    order: int
    per_channel: bool = False

    @property
    def num_basis(self) -> int:
        return (self.order + 1) * (self.order + 2) // 2


def rates_for(device: torch.device | str) -> Rates:
    """The rate table of ``device`` (CUDA-like accelerators share the CUDA table)."""
    return CPU if torch.device(device).type == "cpu" else CUDA


def dense_seconds(sh: ConvShape, rates: Rates, training: bool) -> float:
    """Predicted time of the dense path (forward, or forward + backward when ``training``)."""
    cg = sh.in_channels // sh.groups
    macs = sh.batch * sh.out_height * sh.out_width * sh.out_channels * cg * sh.size**2
    rate = rates.conv_depthwise if cg <= 4 else rates.conv
    t = macs / rate
    if training:
        build = sh.out_channels * cg * sh.num_basis * sh.size**2 / rates.gemm
        t = 3 * t + 3 * build
    return t


def factorised_seconds(sh: ConvShape, rates: Rates, training: bool, order: str, shared_mix: int = 1) -> float:
    """Predicted time of ``order`` = ``"basis_first"`` or ``"mix_first"``.

    ``shared_mix``: number of branches sharing one mix (tied heads); its cost is split among them.
    """
    n, c, o, nf, m = sh.batch, sh.in_channels, sh.out_channels, sh.num_basis, sh.order + 1
    cg = c // sh.groups
    h, w, ho, wo = sh.height, sh.width, sh.out_height, sh.out_width
    elem = 4
    if order == "basis_first":
        mix = n * ho * wo * o * cg * nf
        xpass = n * c * h * w * m * wo
        ypass = n * c * nf * ho * h * wo
        planes = n * c * m
        traffic = 2 * elem * n * c * (nf * ho * wo + m * h * wo)
        filt = xpass / rates.gemm_thin + ypass / rates.planes + planes * rates.plane_call + traffic / rates.bandwidth
        fwd = mix / rates.gemm + filt
        return rates.call + (3 * mix / rates.gemm + 4 * filt if training else fwd)
    if order == "mix_first":
        mix = n * h * w * o * cg * nf / shared_mix
        ystage = n * o * nf * ho * h * w
        xstage = n * o * m * ho * w * wo
        planes = n * o * m
        traffic = 2 * elem * n * o * nf * h * w / shared_mix
        filt = ystage / rates.planes + planes * rates.plane_call + xstage / rates.gemm_thin
        fwd = mix / rates.gemm + filt + traffic / rates.bandwidth
        return rates.call + (3 * fwd if training else fwd)
    raise ValueError(f"order must be 'basis_first' or 'mix_first', got {order!r}")


def choose_path(sh: ConvShape, device, training: bool, force: str = "auto", dense_ok: bool = True,
                shared_mix: int = 1) -> str:
    """``"dense"``, ``"basis_first"`` or ``"mix_first"`` for one call.

    ``force`` is the layer's ``path`` setting: ``"auto"`` (cheapest predicted), ``"dense"``,
    ``"factorised"`` (the cheaper factorised order) or an order by name. ``dense_ok=False``
    (the dense filter would not fit in memory) rules dense out of ``"auto"``. One σ per
    output channel runs mix-first (basis-first needs one σ for all outputs).
    """
    if force == "dense":
        return "dense"
    if force in ("basis_first", "mix_first"):
        return force
    rates = rates_for(device)
    orders = ("mix_first",) if sh.per_channel else ("basis_first", "mix_first")
    costs = {k: factorised_seconds(sh, rates, training, k, shared_mix) for k in orders}
    if force == "auto" and dense_ok:
        costs["dense"] = dense_seconds(sh, rates, training)
    return min(costs, key=costs.get)


def available_bytes(device) -> int:
    """Memory free for a new tensor on ``device``: free GPU memory, or the host's MemAvailable."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown: do not refuse


def check_dense_fits(what: str, out_channels: int, in_per_group: int, size: int, element_size: int,
                     device, training: bool) -> None:
    """Raise ``MemoryError`` (before allocating) when a dense ``size×size`` filter cannot fit.

    ``what`` names the layer (shape and channels) in the message. Training needs the filter
    and its gradient; eval the filter alone.
    """
    need = out_channels * in_per_group * size * size * element_size * (2 if training else 1)
    free = available_bytes(device)
    if need > free:
        raise MemoryError(
            f"{what}: the dense path needs a {size}x{size} filter of {out_channels}x{in_per_group} "
            f"channels ({_gib(need)} GiB{' with its gradient' if training else ''}), but only {_gib(free)} GiB "
            f"is free on {torch.device(device)}; use path='auto' or path='factorised' (no dense filter), "
            "or a smaller max_size"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"
