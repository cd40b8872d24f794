"""`make demo` shows FCT and RefNet doing their job at the demo's budget (their ``demo_only`` sections), as a
newcomer sees it in ``demo_output/report.md``: FCT segments bone and muscle on the held-out phantom slices, and
RefNet's inference runs the base model the demo trained, then refines its label map.

Minutes of training on 2 cores, hence the slow tier. The thresholds are what a working pipeline clears with a margin on
these phantoms (the demo measured bone 0.66 and muscle 0.78; RefNet 0.533 refined against 0.419 raw), far above
what the background-only FCT and the untrained base the demo once showed reach (bone Dice 0; noise).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ci import demo
from tests.helpers import REPO_ROOT

BUNDLES = ("fct_visible_korean", "refnet_synapse")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    bundles = root / "bundles"
    bundles.mkdir()
    for name in BUNDLES:
        (bundles / name).symlink_to(REPO_ROOT / "bundles" / name)
    out = root / "out"
    assert demo.main(["--out", str(out), "--bundles-dir", str(bundles), "--data-dir", str(root / "phantoms")]) == 0
    return out


def _summary(out: Path, bundle: str) -> dict:
    return json.loads((out / bundle / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_fct_segments_bone_and_muscle_on_held_out_phantoms(report):
    summary = _summary(report, "fct_visible_korean")
    assert summary["split"] == "test"
    assert summary["metrics"]["val_dice_bone"] > 0.4 and summary["metrics"]["val_dice_muscle"] > 0.5, summary
    text = (report / "report.md").read_text()
    assert "**synthetic phantoms**" in text and "none is a result on real data" in text


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_refnet_refines_the_predictions_of_a_trained_base(report):
    summary = _summary(report, "refnet_synapse")
    work = report / "refnet_synapse" / "work"
    base = work / "base_predictions" / "base_models" / "seed0_all" / "models" / "base_model.pt"
    assert base.is_file(), "the demo trains the base model it infers with"
    inference = json.loads((work / "demo_inference.json").read_text())
    assert inference["load_base_model"] is True
    assert "base_model.pt" in (report / "refnet_synapse" / "logs" / "inference.log").read_text()
    metrics = summary["metrics"]
    assert summary["split"] == "test"
    assert metrics["raw_dice"] > 0.3, "the trained base finds the large organs"
    assert metrics["refined_dice"] > metrics["raw_dice"], metrics
