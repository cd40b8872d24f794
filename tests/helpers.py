"""What the tests share: where the repository is, the bundles under test, and demo data for a bundle."""

from __future__ import annotations

from pathlib import Path

from ci import demo, zoo

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURE_BUNDLE = REPO_ROOT / "tests" / "fixtures" / "bundles" / "tiny_wt_segmentation"
# Set in the pytest process that tests OpenVINO itself (tests/unit/test_openvino_runtime.py): the one process where
# tests/conftest.py lets OpenVINO load.
OPENVINO_IN_PROCESS = "ZOO_TESTS_OPENVINO_IN_PROCESS"
# Every bundle joins the shared checks by being present in bundles/; the fixture keeps the tools tested
# on content that does not move when the real bundles change.
BUNDLES_UNDER_TEST = [*zoo.find_bundles(), FIXTURE_BUNDLE]


def prepare_demo_data(bundle: Path, phantom_root: Path, work_dir: Path) -> tuple[dict, Path]:
    """The bundle's ``configs/demo.json`` and its dataset folder, phantoms generated (or reused) and prepared.

    The standard ids that ``ci/demo.py`` gives every overlay are the caller's to add (``dataset_dir``,
    ``demo_work_dir``, ...); ``work_dir`` receives what the spec's ``prepare`` commands write.
    """
    spec = zoo.load_json(bundle / "configs" / "demo.json")
    dataset_dir = demo.synthetic_dir(phantom_root, spec["synthetic"]).resolve()
    demo.prepare_data(spec, dataset_dir, work_dir.resolve(), work_dir / "data.log")
    return spec, dataset_dir
