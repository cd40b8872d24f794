"""`make study-fct`, the pre-registered FCT-vs-BasicUNet phantom study of fct_visible_korean, on a tiny budget.

The study itself (3 seeds, 57 epochs at 256 x 256) takes hours and is not part of any test tier. This test runs the
same command with 2 seeds and one epoch of tiny FCTs at 64 x 64: the phantoms, the held-out split, every arm, the
mean ± SD table scored on the test slices and the curves.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

ARMS = {"network=fct_paper", "network=basicunet", "network=fct_tf_main"}
DICE = ("val_dice_bone", "val_dice_muscle")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_study_fct_command_writes_its_table_and_curves_on_a_tiny_budget(tmp_path: Path):
    """Every arm finishes at both seeds, is scored on the held-out test slices only (never trained on, never used
    to select a model), and the table and the Dice curves name the split and the metric."""
    tiny = tmp_path / "tiny.json"
    tiny.write_text(
        json.dumps(
            {
                "image_size": 64,
                "epochs": 1,
                "warmup_epochs": 0,
                "val_interval": 1,
                "network_def#filters": [4, 8, 8, 16, 16, 16, 8, 8, 4],  # FCT arms only: BasicUNet replaces network_def
                "network_def#heads": [1] * 9,
            }
        )
    )
    study = tmp_path / "study"
    result = subprocess.run(
        [
            "make",
            "-s",
            "study-fct",
            f"FCT_STUDY={study}",
            "FCT_STUDY_SEEDS=2",
            f"FCT_STUDY_BASE=--base {tiny}",
            f"FCT_STUDY_RECORD={study / 'record'}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs_dir = study / "runs"

    # The design's split: 50 phantom slices, 32 training / 8 validation / 10 test, disjoint.
    datalist = json.loads((study / "prepared" / "datalist.json").read_text())
    splits = {k: {item["image"] for item in datalist[k]} for k in ("training", "validation", "test")}
    assert {k: len(v) for k, v in splits.items()} == {"training": 32, "validation": 8, "test": 10}
    assert not (splits["test"] & (splits["training"] | splits["validation"]))

    runs = _rows(runs_dir / "runs.csv")
    assert sorted((r["run"], r["seed"]) for r in runs) == sorted((arm, s) for arm in ARMS for s in ("0", "1"))
    assert all(r["status"] == "ok" for r in runs), runs
    for arm in ARMS:
        for seed in (0, 1):
            run_dir = runs_dir / arm / f"seed{seed}"
            assert json.loads((run_dir / "result.json").read_text())["split"] == "test"
            for metric in DICE:  # one row per scored slice: exactly the test slices
                scored = {row["filename"] for row in _rows(run_dir / "eval" / f"{metric}_raw.csv")}
                assert scored == splits["test"], (arm, seed, metric)

    table = _rows(runs_dir / "results.csv")
    assert {r["run"] for r in table} == ARMS
    for row in table:
        assert row["n"] == "2"
        for metric in DICE:
            assert row[f"{metric}_n"] == "2" and 0 <= float(row[f"{metric}_mean"]) <= 1, row
    markdown = (runs_dir / "results.md").read_text()
    assert "scored on the test split" in markdown and "mean ± sample SD" in markdown
    assert all(metric in markdown.splitlines()[2] for metric in DICE)  # the table's header

    for tag in (*DICE, "val_mean_dice", "train_loss"):
        assert (runs_dir / f"curves_{tag}.png").stat().st_size > 0
        curve = _rows(runs_dir / f"curves_{tag}.csv")
        assert {r["arm"] for r in curve} == ARMS and all(r["n"] == "2" for r in curve), tag
