"""Networks used by the bundles."""
