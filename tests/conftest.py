"""Shared test set-up: strict MONAI config parsing, one folder of phantoms and one OpenVINO cache per session."""

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import OPENVINO_IN_PROCESS

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


_openvino_culprit: list[str] = []


@pytest.fixture(autouse=True)
def openvino_stays_out_of_the_test_process(request) -> Iterator[None]:
    """Fails the first test that loads OpenVINO into the pytest process: its thread pool does not survive the forks
    of later tests (DataLoader workers), which then crash the whole session with a segmentation fault. Tests that run
    the two BraTS bundles' inference in this process set ``fast_cpu_runtime: torch``; OpenVINO itself is tested in a
    process of its own (``tests/unit/test_openvino_runtime.py``, which sets ``OPENVINO_IN_PROCESS``)."""
    yield
    if not _openvino_culprit and "openvino" in sys.modules and not os.environ.get(OPENVINO_IN_PROCESS):
        _openvino_culprit.append(request.node.nodeid)
        pytest.fail(
            f"{request.node.nodeid} loaded OpenVINO into the pytest process; set fast_cpu_runtime: torch or run it in "
            "a subprocess"
        )
