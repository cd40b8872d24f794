"""Shared test set-up: the `ci/` tools importable, strict MONAI config parsing, the bundles under test."""

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "ci"))
# Duplicate keys in a bundle config are a bug; MONAI only warns about them unless told otherwise.
os.environ.setdefault("MONAI_FAIL_ON_DUPLICATE_CONFIG", "1")

import demo  # noqa: E402
import zoo  # noqa: E402

FIXTURE_BUNDLE = REPO_ROOT / "tests" / "fixtures" / "bundles" / "tiny_wt_segmentation"
# Every bundle joins the shared checks by being present in bundles/; the fixture keeps the tools tested
# on content that does not move when the real bundles change.
BUNDLES_UNDER_TEST = [*zoo.find_bundles(), FIXTURE_BUNDLE]


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """Synthetic phantoms shared by the whole session: demo specs that ask for the same data share one folder."""
    return tmp_path_factory.mktemp("phantoms")


def prepare_demo_data(bundle: Path, phantom_root: Path, work_dir: Path) -> tuple[dict, Path]:
    """The bundle's ``configs/demo.json`` and its dataset folder, phantoms generated (or reused) and prepared.

    The standard ids that ``ci/demo.py`` gives every overlay are the caller's to add (``dataset_dir``,
    ``demo_work_dir``, ...); ``work_dir`` receives what the spec's ``prepare`` commands write.
    """
    spec = zoo.load_json(bundle / "configs" / "demo.json")
    dataset_dir = demo.synthetic_dir(phantom_root, spec["synthetic"]).resolve()
    demo.prepare_data(spec, dataset_dir, work_dir.resolve(), work_dir / "data.log")
    return spec, dataset_dir
