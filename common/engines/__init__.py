"""Training-engine helpers shared by the bundles' configs."""

from .checkpoints import AtomicCheckpointSaver, latest_checkpoint, with_best_metric

__all__ = ["AtomicCheckpointSaver", "latest_checkpoint", "with_best_metric"]
