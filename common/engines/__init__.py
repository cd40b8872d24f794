"""Training-engine helpers shared by the bundles' configs."""

from .checkpoints import AtomicCheckpointSaver, latest_checkpoint

__all__ = ["AtomicCheckpointSaver", "latest_checkpoint"]
