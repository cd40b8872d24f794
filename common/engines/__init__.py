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

__all__ = [
    "AtomicCheckpointSaver",
    "CheckpointError",
    "CheckpointLoader",
    "CheckpointNotFoundError",
    "CheckpointSaveError",
    "latest_checkpoint",
    "load_checkpoint",
    "missing_weights_help",
    "read_checkpoint",
    "with_best_metric",
    "with_weights",
]
