"""Losses used by the bundles that MONAI does not provide as such (see segmentation.py for how each is chosen)."""

from .segmentation import DiceJaccardCELoss

__all__ = ["DiceJaccardCELoss"]
