"""The recipe schema: what a conversion (and its fine-tuning) is told to do.

A recipe is plain data. ``njetify.recipes`` loads it from YAML (built-in or a user
file), validates it and resolves keyword overrides; the surgery passes read it;
the trainer reads its ``finetune`` block. Field names are the YAML keys.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, fields, replace

from .. import options as O
from ..options import MAX_FIT_ERROR


@dataclass
class SubsampleConfig:
    """How strided convolutions and pooling are treated (DESIGN §4)."""

    mode: str = "safe"  # "safe": stride 1 + SafeSubsample; "keep": leave strides and pooling
    r: float | str = "auto"  # "auto": factor at σ₀ equals the original stride; a number: the paper's r
    where: str = "original"  # "original": only where the network subsampled; "every_layer": after every N-Jet layer
    interpolation: str = "nearest"  # "nearest" | "bilinear" | "area"


@dataclass
class AsppConfig:
    """DeepLab ASPP tying (DESIGN §5)."""

    tie: bool | str = "auto"  # "auto": tie the heads found; True: also warn when none is found; False: never


@dataclass
class CalibrationConfig:
    """Settings of the calibration engine (:class:`njetify.calibration.CalibrationOptions`, same names;
    docs/calibration.md gives the measurements behind each default). The gate is the top-level
    ``max_fit_error`` (per module in ``rules``), the σ₀ search's size limit ``search_max_dim``."""

    max_samples: int = O.CALIBRATION_MAX_SAMPLES  # output positions per layer over all batches (seeded subset)
    ridge: float = O.OUTPUT_MATCHING_RIDGE  # ridge weight ρ, relative to the Gram matrix's mean diagonal
    sigma_fractions: list[float] = field(default_factory=lambda: list(O.SIGMA_FRACTIONS))  # σ₀ candidates
    sigma_tolerance: float = O.SIGMA_TOLERANCE  # a smaller σ₀ wins within this relative margin of the best
    search_fraction: float = O.SIGMA_SEARCH_FRACTION  # share of the positions that ranks the σ₀ candidates
    dense_strided: bool = False  # fit strided layers on every stride-1 position
    direct_max_dim: int = O.DIRECT_MAX_DIM  # wider regressions: conjugate gradients on a stored design
    design_bytes: int = O.DESIGN_BYTES  # memory bound of that design
    max_iter: int = O.PCG_MAX_ITER  # conjugate-gradient iterations
    wide_solver: str = O.WIDE_SOLVER  # wider regressions: "pcg" (joint) or "per_channel" (no stored design)
    seed: int = 0  # seeds the position sampling


@dataclass
class Rule:
    """Per-module override, applied in order to modules whose path matches ``match`` (fnmatch glob)."""

    match: str
    skip: bool | None = None  # True: keep this module as it is; False: convert it even if ``convs`` is False
    order: int | None = None
    sigma_init: float | str | None = None
    extent: float | None = None
    learn_sigma: bool | None = None
    sigma_per: str | None = None
    sigma_per_axis: bool | str | None = None
    max_size: int | None = None
    max_fit_error: float | None = None  # a rule disables the gate with .inf
    depthwise_order: int | None = None

    def matches(self, path: str) -> bool:
        """Whether this rule applies to the module at ``path`` (dotted, as in ``named_modules()``):
        ``match`` is an fnmatch glob, case-sensitive — the one matching rule of every rule consumer."""
        return fnmatch.fnmatchcase(path, self.match)


@dataclass
class FinetuneConfig:
    """Fine-tuning hyper-parameters (read by ``njetify.train``)."""

    optimizer: str = "sgd"  # "sgd" (momentum) | "adamw"
    lr: float = 0.01
    sigma_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 10
    batch_size: int = 128
    schedule: str = "cosine"  # "cosine" | "step" | "constant"
    warmup_epochs: float = 0.0
    step_size: int = 30  # epochs between decays for schedule "step"
    gamma: float = 0.1
    grad_clip: float | None = None  # max global L2 norm of the gradients (None: no clipping)
    # added for njetify.train (execution settings; every one overridable by keyword in fit())
    amp: str = "none"  # "none" | "bf16" (autocast, CPU and CUDA) | "fp16" (autocast + GradScaler, CUDA only)
    channels_last: bool = False
    compile: bool = False  # torch.compile the model
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms + no cuDNN benchmark
    checkpoint_every: int = 0  # also checkpoint every N optimizer steps (0: only after each epoch)
    sync_bn: bool = False  # SyncBatchNorm under DistributedDataParallel
    num_workers: int = 0  # DataLoader worker processes
    class_weights: str | None = None  # segmentation: None | "inverse_frequency"
    ignore_index: int = 255  # segmentation label ignored by the loss and mIoU


@dataclass
class LayerSettings:
    """The settings one convolution gets after the recipe's rules are applied."""

    skip: bool
    order: int
    sigma_init: float | str
    extent: float
    learn_sigma: bool
    sigma_per: str
    max_size: int | None
    max_fit_error: float | None = None
    depthwise_order: int | None = None
    sigma_per_axis: bool | str = "auto"


@dataclass
class Recipe:
    """A complete conversion recipe."""

    name: str = "default"
    description: str = ""
    order: int = 3
    depthwise_order: int | None = 4  # depthwise convs get max(order, this): order 4 spans every 3×3 kernel (None: order)
    extent: float = 2.0
    sigma_init: float | str = "fit"  # "fit": the best of a few σ₀ (on the data); "kernel": σ₀ from k and dilation; or pixels
    learn_sigma: bool = True
    sigma_per: str = "layer"  # "layer" | "channel"
    # "auto": one σ per axis for non-square kernels (1×k, k×1), one σ for square ones; true: per axis for
    # square stride-1 kernels too; false: one σ only (non-square kernels stay convs) — njetify.layers.njet_axes
    sigma_per_axis: bool | str = "auto"
    max_size: int | None = 63  # filter size cap in pixels (None: no cap)
    max_fit_error: float | None = MAX_FIT_ERROR  # fidelity gate: a layer fitted worse than this stays the original conv (None: off)
    search_max_dim: int | None = O.SEARCH_MAX_DIM  # sigma_init fit: layers with more coefficients keep σ₀ (None: search every layer)
    budget: float | None = None  # cost budget: × the original's MACs at the input size (None: no budget)
    convs: bool = True  # convert the k×k convolutions (False: only what aspp/subsample ask for)
    subsample: SubsampleConfig = field(default_factory=SubsampleConfig)
    aspp: AsppConfig = field(default_factory=AsppConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    rules: list[Rule] = field(default_factory=list)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def rules_for(self, path: str) -> list[Rule]:
        """The rules that apply to the module at ``path``, in recipe order (later ones win)."""
        return [rule for rule in self.rules if rule.matches(path)]

    def settings_for(self, path: str) -> LayerSettings:
        """Recipe defaults for the module at ``path``, with every matching rule applied in order."""
        s = LayerSettings(
            skip=not self.convs,
            order=self.order,
            sigma_init=self.sigma_init,
            extent=self.extent,
            learn_sigma=self.learn_sigma,
            sigma_per=self.sigma_per,
            max_size=self.max_size,
            max_fit_error=self.max_fit_error,
            depthwise_order=self.depthwise_order,
            sigma_per_axis=self.sigma_per_axis,
        )
        for rule in self.rules_for(path):
            updates = {f.name: getattr(rule, f.name) for f in fields(rule) if f.name != "match"}
            s = replace(s, **{k: v for k, v in updates.items() if v is not None})
        return s
