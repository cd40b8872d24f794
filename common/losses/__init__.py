"""Losses used by the bundles that MONAI does not provide as such."""
