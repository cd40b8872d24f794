"""Shared test set-up: strict MONAI config parsing, one folder of phantoms and one OpenVINO cache per session."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Duplicate keys in a bundle config are a bug; MONAI only warns about them unless told otherwise.
os.environ.setdefault("MONAI_FAIL_ON_DUPLICATE_CONFIG", "1")


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """Synthetic phantoms shared by the whole session: demo specs that ask for the same data share one folder."""
    return tmp_path_factory.mktemp("phantoms")


@pytest.fixture(scope="session", autouse=True)
def openvino_cache(tmp_path_factory) -> Iterator[Path]:
    """Where the session's bundle runs keep their OpenVINO conversions (the default runtime of two bundles): a
    folder of the session, not the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("openvino")
    previous = os.environ.get("ZOO_OPENVINO_CACHE")
    os.environ["ZOO_OPENVINO_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("ZOO_OPENVINO_CACHE", None)
    else:
        os.environ["ZOO_OPENVINO_CACHE"] = previous
