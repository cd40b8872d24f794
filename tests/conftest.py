"""Shared test set-up: strict MONAI config parsing and one folder of phantoms per session."""

import os
from pathlib import Path

import pytest

# Duplicate keys in a bundle config are a bug; MONAI only warns about them unless told otherwise.
os.environ.setdefault("MONAI_FAIL_ON_DUPLICATE_CONFIG", "1")


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """Synthetic phantoms shared by the whole session: demo specs that ask for the same data share one folder."""
    return tmp_path_factory.mktemp("phantoms")
