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
docs/speed.md); the CUDA rates were read from an H200 σ sweep (cuDNN convolutions are fast, and every
factorised call launches about 20 kernels), so small and medium filters stay dense there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .basis_first import TILE

PATHS = ("auto", "dense", "factorised", "basis_first", "mix_first")


@dataclass(frozen=True)
class Rates:
    """Throughputs (multiply-adds or bytes per second) and fixed costs (seconds) of one device."""

    conv: float  # dense conv2d MACs/s (groups of > 4 channels), forward
    conv_train: float  # the same, forward + backward (MACs of the forward / seconds)
    conv_depthwise: float  # dense conv2d MACs/s, ≤ 4 channels per group, forward
    conv_depthwise_train: float  # the same, forward + backward
    gemm: float  # large matrix products (the mix)
    gemm_thin: float  # products with a small inner size (the x-pass, ~H)
    planes: float  # batched products of one image plane each (the y-pass)
    plane_call: float  # seconds per plane product
    bandwidth: float  # bytes/s of an intermediate written and read once
    fresh: float  # bytes/s of writing newly allocated memory (first touch faults pages in)
    call: float  # fixed seconds of a basis-first forward above a dense one (operator building, ~20 ops)
    sample_call: float  # seconds per sample and x-order of mix-first's sample-by-sample products
    fill: float = 0.0  # output elements (N·H'·W'·C_out) a dense conv needs to reach its rate (0: any)


#: One CPU thread (measured with ``benchmarks/path_cost.py --rates --threads 1``); the MAC and
#: memory rates scale with ``torch.get_num_threads()``.
CPU_THREAD = Rates(conv=40e9, conv_train=10.3e9, conv_depthwise=19e9, conv_depthwise_train=0.41e9, gemm=31e9,
                   gemm_thin=22e9, planes=27e9, plane_call=0.45e-6, bandwidth=6.4e9, fresh=1.2e9, call=250e-6,
                   sample_call=150e-6)
#: An H200 (``benchmarks/layer.py --device cuda`` σ sweep, fp32): cuDNN convolutions run at
#: ~6.5e13 MAC/s forward once the output has ~2e6 elements (less below: ``fill``); a factorised
#: call is bound by its ~20 kernel launches (~0.7 ms forward, ~3 ms train step, whatever σ).
CUDA = Rates(conv=6.5e13, conv_train=2.5e13, conv_depthwise=0.3e12, conv_depthwise_train=0.1e12, gemm=12e12,
             gemm_thin=2e12, planes=2e12, plane_call=1e-9, bandwidth=1e12, fresh=1e12, call=0.7e-3, sample_call=50e-6,
             fill=2e6)


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
    """The rate table of ``device``: CPU rates times the threads torch uses; accelerators share CUDA's."""
    if torch.device(device).type != "cpu":
        return CUDA
    k = torch.get_num_threads()
    r = CPU_THREAD
    return Rates(conv=r.conv * k, conv_train=r.conv_train * k, conv_depthwise=r.conv_depthwise * k,
                 conv_depthwise_train=r.conv_depthwise_train * k, gemm=r.gemm * k, gemm_thin=r.gemm_thin * k,
                 planes=r.planes * k, plane_call=r.plane_call / k, bandwidth=r.bandwidth * min(k, 4),
                 fresh=r.fresh * min(k, 4), call=r.call, sample_call=r.sample_call)


#: glibc returns allocations above this many bytes to the kernel when they are freed, so a new
#: one faults its pages in again (the ``fresh`` rate); smaller ones are recycled.
MMAP_BYTES = 32 * 2**20


def _fresh(nbytes: float, rates: Rates) -> float:
    """Seconds of writing a newly allocated tensor of ``nbytes`` (page faults above :data:`MMAP_BYTES`)."""
    return nbytes / (rates.fresh if nbytes > MMAP_BYTES else rates.bandwidth)


def dense_seconds(sh: ConvShape, rates: Rates, training: bool) -> float:
    """Predicted time of the dense path (forward, or forward + backward when ``training``)."""
    cg = sh.in_channels // sh.groups
    macs = sh.batch * sh.out_height * sh.out_width * sh.out_channels * cg * sh.size**2
    depthwise = cg <= 4
    outputs = sh.batch * sh.out_height * sh.out_width * sh.out_channels
    occupancy = min(1.0, outputs / rates.fill) ** 0.75 if rates.fill else 1.0  # small outputs leave a GPU idle
    if not training:
        return macs / (rates.conv_depthwise if depthwise else rates.conv) / occupancy
    filt = sh.out_channels * cg * sh.size**2
    build = 3 * filt * sh.num_basis / rates.gemm + 2 * _fresh(4 * filt, rates)
    return macs / (rates.conv_depthwise_train if depthwise else rates.conv_train) / occupancy + build


def factorised_seconds(sh: ConvShape, rates: Rates, training: bool, order: str, shared_mix: int = 1) -> float:
    """Predicted time of ``order`` = ``"basis_first"`` or ``"mix_first"``.

    ``shared_mix``: number of branches sharing one mix (tied heads); its cost is split among them.
    """
    n, c, o, nf, m = sh.batch, sh.in_channels, sh.out_channels, sh.num_basis, sh.order + 1
    cg = c // sh.groups
    h, w, ho, wo = sh.height, sh.width, sh.out_height, sh.out_width
    if order == "basis_first":
        mix = n * ho * wo * o * cg * nf / rates.gemm
        xpass = n * c * h * w * m * wo / rates.gemm_thin
        rows = min(h, TILE * max(1, round(h / ho)) + sh.size - 1)  # rows a band of TILE outputs reads
        ypass = n * c * nf * ho * rows * wo / rates.planes + n * c * m * rates.plane_call
        traffic = 4 * n * c * (nf * ho * wo + m * h * wo) / rates.bandwidth
        if not training:
            return rates.call + mix + xpass + ypass + traffic
        # backward: two mix-sized GEMMs; x-pass recomputed + dx + d(bx); y-pass recomputed + dz + d(ay)
        return 4 * rates.call + 3 * mix + 4 * xpass + 4 * ypass + 3 * traffic + _fresh(4 * n * c * h * w, rates)
    if order == "mix_first":
        maps = 4 * n * o * nf * h * w
        mix = n * h * w * o * cg * nf / rates.gemm / shared_mix
        ystage = n * o * nf * ho * h * w / rates.planes + n * o * m * rates.plane_call
        xstage = n * o * m * ho * w * wo / rates.gemm_thin
        fresh = _fresh(maps, rates) / shared_mix
        call = 1.7 * rates.call + n * m * rates.sample_call  # more, smaller ops than basis-first
        if not training:
            return call + mix + ystage + xstage + fresh
        # backward: y-stage recomputed + d(maps) + d(ay); x-stage for d(bx) and the maps' gradient
        return 4 * call + 3 * mix + 4 * ystage + 3 * xstage + 2 * fresh + _fresh(4 * n * c * h * w, rates)
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


#: A dense filter under this many bytes is never refused (no memory query on the forward path).
DENSE_ALWAYS_BYTES = 2**28


def dense_fits(what, out_channels: int, in_per_group: int, size: int, element_size: int, device, training: bool,
               *, strict: bool = False) -> bool:
    """Whether a dense ``size×size`` filter fits in memory; ``strict``: raise :func:`check_dense_fits`'s
    ``MemoryError`` instead of returning False. ``what`` names the layer: a string, or a callable
    giving it (only called when the filter is large enough to ask)."""
    if out_channels * in_per_group * size * size * element_size < DENSE_ALWAYS_BYTES:
        return True
    try:
        check_dense_fits(what() if callable(what) else what, out_channels, in_per_group, size, element_size, device,
                         training)
    except MemoryError:
        if strict:
            raise
        return False
    return True


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
