"""Dictionary transforms used by the bundles that MONAI does not provide; import each from its module."""
