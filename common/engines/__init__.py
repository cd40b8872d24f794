"""Training-engine helpers shared by the bundles' configs."""

from .checkpoints import latest_checkpoint

__all__ = ["latest_checkpoint"]
