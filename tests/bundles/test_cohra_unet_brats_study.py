"""`make study-cohra`, the pre-registered phantom study of COHRA-UNet next to SegResNet and the MTCM-KD backbone.

The study itself (3 seeds, 200 epochs) takes hours and is not part of any test tier. This test runs the same command
with 2 seeds and one epoch, COHRA-UNet at tiny widths: the phantoms, the held-out split, every arm, the mean ± SD
table scored on the test cases and the curves.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

ARMS = {"network=cohra_unet", "network=segresnet", "network=mtcm_kd_backbone"}
REGION_DICE = tuple(f"{kind}_dice_{region}" for kind in ("val", "brats_legacy") for region in ("tc", "wt", "et"))
CURVES = ("val_dice_tc", "val_dice_wt", "val_dice_et", "val_mean_dice", "train_loss")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_study_cohra_command_writes_its_table_and_curves_on_a_tiny_budget(tmp_path: Path):
    """Every arm finishes at both seeds, is scored on the held-out test cases only (never trained on, never used to
    select a model), and the table and the Dice curves name the split and the regions."""
    tiny = tmp_path / "tiny.json"
    tiny.write_text(
        json.dumps(
            {
                "epochs": 1,
                "val_interval": 1,
                # COHRA-UNet only: SegResNet and the MTCM-KD backbone replace network_def
                "network_def#channels": [8, 16, 32, 64],
                "network_def#transformer_heads": 4,
            }
        )
    )
    study = tmp_path / "study"
    command = ["make", "-s", "study-cohra", f"COHRA_STUDY={study}", "COHRA_STUDY_SEEDS=2",
               f"COHRA_STUDY_BASE=--base {tiny}", f"COHRA_STUDY_RECORD={study / 'record'}"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs_dir = study / "runs"

    # The design's split: 24 phantoms, 5 held-out test cases, the rest in 3 folds (fold 0 selects the model).
    split = json.loads((study / "split.json").read_text())
    test_cases = {item["case"] for item in split["testing"]}
    fold_cases = {item["case"] for item in split["training"]}
    assert len(test_cases) == 5 and len(fold_cases) == 19 and not test_cases & fold_cases

    runs = _rows(runs_dir / "runs.csv")
    assert sorted((r["run"], r["seed"]) for r in runs) == sorted((arm, s) for arm in ARMS for s in ("0", "1"))
    assert all(r["status"] == "ok" for r in runs), runs
    for arm in ARMS:
        for seed in (0, 1):
            run_dir = runs_dir / arm / f"seed{seed}"
            assert json.loads((run_dir / "result.json").read_text())["split"] == "test"
            for metric in REGION_DICE:  # one row per scored case: exactly the test cases
                scored = {Path(row["filename"]).parent.name for row in _rows(run_dir / "eval" / f"{metric}_raw.csv")}
                assert scored == test_cases, (arm, seed, metric)

    table = _rows(runs_dir / "results.csv")
    assert {r["run"] for r in table} == ARMS
    for row in table:
        assert row["n"] == "2"
        for metric in REGION_DICE:
            assert row[f"{metric}_n"] == "2" and 0 <= float(row[f"{metric}_mean"]) <= 1, row
    markdown = (runs_dir / "results.md").read_text()
    assert "scored on the test split" in markdown and "mean ± sample SD" in markdown
    assert all(metric in markdown.splitlines()[2] for metric in REGION_DICE)  # the table's header

    for tag in CURVES:
        assert (runs_dir / f"curves_{tag}.png").stat().st_size > 0
        curve = _rows(runs_dir / f"curves_{tag}.csv")
        assert {r["arm"] for r in curve} == ARMS and all(r["n"] == "2" for r in curve), tag

    # A fresh machine (no runs folder) with the record rebuilds the same table without training anything.
    table_before = (runs_dir / "results.csv").read_text()
    shutil.rmtree(runs_dir)
    again = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("restored from the record") == 6 and "training ..." not in again.stdout
    assert (runs_dir / "results.csv").read_text() == table_before
    assert all((runs_dir / f"curves_{tag}.png").is_file() for tag in CURVES)
