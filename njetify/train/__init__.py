"""Fine-tuning: ``fit()`` with N-Jet parameter groups, checkpoints/resume, history and DDP.

``fit(model, train_data, val_data, task=..., config=recipe.finetune, out_dir=...)`` is the
single entry point; the rest is exported for custom loops.
"""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import resolve_config
from .distributed import DistInfo
from .history import History, feature_sizes, layer_snapshot, subsample_modules
from .metrics import ClassificationMeter, SegmentationMeter
from .optim import build_optimizer, build_scheduler, lr_factor, param_groups, split_parameters
from .interrupt import TrainingInterrupted
from .progress import format_duration
from .trainer import NonFiniteLossError, TrainState, fit

__all__ = [
    "CheckpointError", "ClassificationMeter", "DistInfo", "History", "NonFiniteLossError", "SegmentationMeter", "TrainState",
    "TrainingInterrupted", "build_optimizer", "build_scheduler", "feature_sizes", "fit", "format_duration",
    "layer_snapshot", "load_checkpoint",
    "lr_factor", "param_groups", "resolve_config", "save_checkpoint", "split_parameters", "subsample_modules",
]
