"""The zoo's own tools, run from the repository root as ``python -m ci.<tool>``: checking, packaging and demonstrating
the bundles in ``bundles/``."""
