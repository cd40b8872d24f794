"""`make study-refnet`, the pre-registered phantom RefNet study of refnet_synapse, on a tiny budget.

The study itself (6 base models and 12 RefNet runs) takes hours and is not part of any test tier. This test runs the
same command with 2 seeds, one-epoch tiny base models on 48 x 48 x 32 phantoms and one-epoch tiny RefNets: the
phantoms in the Synapse split, Algorithm 1 and out-of-fold base predictions in one datalist, every arm scored on the
held-out test cases, the per-organ table over seeds and the curves.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from common.data.btcv import SYNAPSE_TEST_CASES, SYNAPSE_TRAIN_CASES
from tests.helpers import REPO_ROOT

ARMS = {"baseline", "data=out_of_fold", "refnet=image_aware", "learning_rate=1e-05"}
TINY_BASE = {
    "feature_size": 12,
    "network_def#depths": [1, 1, 1, 1],
    "network_def#num_heads": [1, 1, 1, 1],
    "use_checkpoint": False,
    "roi_size": [64, 64, 32],
    "spacing": [8.6, 8.6, 8.6],  # the phantoms' voxel size at 48 x 48 x 32
    "samples_per_volume": 1,
    "epochs": 1,
    "val_interval": 1000,
    "num_workers": 0,
    "amp": False,
}
TINY_REFNET = {"study_epochs": 1, "network_def#features": [8, 8, 16, 32, 64, 8], "slices_per_volume": 4}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 6 base models and 8 RefNet runs: 48 min on 2 cores shared with other jobs
def test_study_refnet_command_writes_its_tables_and_curves_on_a_tiny_budget(tmp_path: Path):
    """Every arm finishes at both seeds on its own training data, is scored on the 12 test cases only, and the
    per-organ table gives raw, refined and change with the outcome per arm."""
    base, refnet = tmp_path / "base.json", tmp_path / "refnet.json"
    base.write_text(json.dumps(TINY_BASE))
    refnet.write_text(json.dumps(TINY_REFNET))
    study = tmp_path / "study"
    result = subprocess.run(
        ["make", "-s", "study-refnet", f"REFNET_STUDY={study}", "REFNET_STUDY_SIZE=48 48 32", "REFNET_STUDY_SEEDS=2",
         f"REFNET_STUDY_BASE_MODEL={base}", f"REFNET_STUDY_BASE=--base {refnet}",
         f"REFNET_STUDY_RECORD={study / 'record'}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=3500,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # The base predictions: Algorithm 1 (3 models on all 18 training cases, predicting them) beside 3 out-of-fold
    # models; the test section is the seed-0 Algorithm 1 model's predictions of the 12 test cases.
    datalist = json.loads((study / "base" / "datalist.json").read_text())
    by_source = {}
    for entry in datalist["training"]:
        by_source.setdefault(entry["source"], []).append((entry["case"], entry.get("seed")))
    assert sorted(by_source["in_sample"]) == sorted((c, s) for c in SYNAPSE_TRAIN_CASES for s in (0, 1, 2))
    assert sorted(c for c, _ in by_source["out_of_fold"]) == sorted(SYNAPSE_TRAIN_CASES)
    assert set(by_source) == {"in_sample", "out_of_fold"}
    assert sorted(e["case"] for e in datalist["test"]) == sorted(SYNAPSE_TEST_CASES)
    groups = [(r["base predictions"], r["cases"]) for r in _rows(study / "base" / "base_quality.csv")]
    in_sample = [(f"in_sample seed {s}", "18") for s in (0, 1, 2)]
    assert sorted(groups) == sorted([*in_sample, ("out_of_fold seed 0", "18"), ("test seed 0", "12")])

    runs_dir = study / "runs"
    runs = _rows(runs_dir / "runs.csv")
    assert sorted((r["run"], r["seed"]) for r in runs) == sorted((arm, s) for arm in ARMS for s in ("0", "1"))
    assert all(r["status"] == "ok" for r in runs), runs
    for arm in ARMS:
        overlay = json.loads((runs_dir / arm / "seed0" / "overlay.json").read_text())
        expected = ["out_of_fold"] if arm == "data=out_of_fold" else ["in_sample"]
        assert overlay["training_sources"] == expected, arm
        log = (runs_dir / arm / "seed0" / "train.log").read_text()
        steps = 15 * (1 if arm == "data=out_of_fold" else 3)  # volumes an epoch: same steps over the run
        epochs = 3 if arm == "data=out_of_fold" else 1
        assert f"Epoch: {epochs}/{epochs}, Iter: {steps}/{steps}" in log, arm
        for seed in (0, 1):
            run_dir = runs_dir / arm / f"seed{seed}"
            assert json.loads((run_dir / "result.json").read_text())["split"] == "test"
            scored = [Path(row["filename"]).name for row in _rows(run_dir / "eval" / "refined_dice_raw.csv")]
            assert sorted(scored) == sorted(f"label{c}.nii.gz" for c in SYNAPSE_TEST_CASES), (arm, seed)

    table = (runs_dir / "refinement_seeds.md").read_text()
    assert "Split: the 12 held-out test phantoms" in table
    for arm in ARMS:
        assert f"### {arm} (2 seeds)" in table
    assert table.count("Mean organ Dice: ") == len(ARMS)
    rows = _rows(runs_dir / "refinement_seeds.csv")
    assert {r["arm"] for r in rows} == ARMS and all(r["seeds"] == "2" for r in rows)
    for tag in ("val_mean_dice", "val_raw_mean_dice", "train_loss"):
        assert (runs_dir / f"curves_{tag}.png").stat().st_size > 0
