"""Shared test set-up: the `ci/` tools importable, strict MONAI config parsing, the bundles under test."""

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "ci"))
# Duplicate keys in a bundle config are a bug; MONAI only warns about them unless told otherwise.
os.environ.setdefault("MONAI_FAIL_ON_DUPLICATE_CONFIG", "1")

import zoo  # noqa: E402

FIXTURE_BUNDLE = REPO_ROOT / "tests" / "fixtures" / "bundles" / "tiny_wt_segmentation"
# Every bundle joins the shared checks by being present in bundles/; the fixture keeps the tools tested
# on content that does not move when the real bundles change.
BUNDLES_UNDER_TEST = [*zoo.find_bundles(), FIXTURE_BUNDLE]
