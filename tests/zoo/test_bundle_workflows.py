"""Every bundle trains, evaluates and infers through ``python -m monai.bundle run``, as the demo runs it.

The demo spec of each bundle (``configs/demo.json``, without its ``demo_only`` section) gives the phantoms and sizes;
here training is cut to one epoch with validation, which is enough to exercise every stage and every output the
report needs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ci import demo
from tests.helpers import BUNDLES_UNDER_TEST, FIXTURE_BUNDLE

QUICK = {"epochs": 1, "val_interval": 1}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("phantoms")


@pytest.mark.parametrize("bundle", BUNDLES_UNDER_TEST, ids=[b.name for b in BUNDLES_UNDER_TEST])
def test_train_evaluate_infer(bundle: Path, tmp_path: Path, data_root: Path):
    summary = demo.run_bundle(bundle, tmp_path, data_root, train_overrides=QUICK, demo_only=False)
    out = tmp_path / bundle.name
    assert (out / "models" / "model.pt").is_file(), "training saved no best-metric checkpoint"
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    dice = [v for k, v in metrics.items() if "dice" in k and v is not None]  # None: no case had the region
    assert dice and all(0.0 <= v <= 1.0 for v in dice), metrics
    assert (out / "training_curve.png").stat().st_size > 0
    assert len(summary["overlays"]) == len(
        json.loads((bundle / "configs" / "demo.json").read_text())["overlay"]["cases"]
    )
    assert all((out / png).stat().st_size > 0 for png in summary["overlays"])


def test_demo_writes_report(tmp_path: Path, data_root: Path):
    assert (
        demo.main(
            ["--out", str(tmp_path / "out"), "--bundles-dir", str(FIXTURE_BUNDLE.parent), "--data-dir", str(data_root)]
        )
        == 0
    )
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| tiny_wt_segmentation | 0.1.0 |" in report
    assert "synthetic phantoms" in report
    assert "![training curve](tiny_wt_segmentation/training_curve.png)" in report
    assert (tmp_path / "out" / "tiny_wt_segmentation" / "overlay_BraTS2021_00005.png").is_file()


def test_demo_reports_a_broken_bundle_and_fails(tmp_path: Path, data_root: Path):
    import shutil

    bundles = tmp_path / "bundles"
    shutil.copytree(FIXTURE_BUNDLE, bundles / FIXTURE_BUNDLE.name)
    config = bundles / FIXTURE_BUNDLE.name / "configs" / "train.json"
    config.write_text(config.read_text().replace('"_target_": "UNet"', '"_target_": "NoSuchNetwork"'))
    assert demo.main(["--out", str(tmp_path / "out"), "--bundles-dir", str(bundles), "--data-dir", str(data_root)]) == 1
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## tiny_wt_segmentation: FAILED" in report and "train.log" in report
