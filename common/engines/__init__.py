"""Training-engine helpers shared by the bundles' configs."""

from .checkpoints import (
    AtomicCheckpointSaver,
    CheckpointError,
    CheckpointLoader,
    CheckpointNotFoundError,
    CheckpointSaveError,
    latest_checkpoint,
    load_checkpoint,
    missing_weights_help,
    read_checkpoint,
    with_best_metric,
    with_weights,
)
from .progress import CaseProgressBar, EpochETALogger

__all__ = [
    "AtomicCheckpointSaver",
    "CaseProgressBar",
    "CheckpointError",
    "CheckpointLoader",
    "CheckpointNotFoundError",
    "CheckpointSaveError",
    "EpochETALogger",
    "latest_checkpoint",
    "load_checkpoint",
    "missing_weights_help",
    "read_checkpoint",
    "with_best_metric",
    "with_weights",
]
