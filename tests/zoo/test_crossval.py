"""Cross-validation (``python -m common.crossval``): the run grid, mean ± SD tables, and a tiny study end to end."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys

import pytest

from ci import zoo
from common.crossval import crossval_runs, summarise, write_tables
from common.data.brats import write_split_file
from common.synthetic.brats import generate_brats
from tests.helpers import REPO_ROOT

COHRA = REPO_ROOT / "bundles" / "cohra_unet_brats"


def _record(fold: int, seed: int, status: str = "ok", **metrics) -> dict:
    return {"run": f"fold{fold}_seed{seed}", "settings": {"fold": str(fold), "seed": str(seed)}, "status": status,
            "metrics": metrics}  # fmt: skip


def test_runs_are_every_fold_and_seed_on_top_of_the_base():
    runs = crossval_runs(3, [0, 1], {"epochs": 5, "fold": 9})
    assert [r.name for r in runs] == [f"fold{k}_seed{s}" for k in range(3) for s in (0, 1)]
    assert runs[3].overlay == {"epochs": 5, "fold": 1, "seed": 1}  # the run's fold wins over the base's


def test_summary_is_mean_and_sample_sd_per_fold_and_pooled(tmp_path):
    results = [
        _record(0, 0, dice=0.5, hd95=None),
        _record(0, 1, dice=0.7, hd95=None),
        _record(1, 0, dice=0.9, hd95=None),
        _record(1, 1, "failed", dice=0.0),  # a failed run counts for nothing
    ]
    rows = {row["metric"]: row for row in summarise(results, folds=2)}
    fold0, fold1 = rows["dice"]["folds"]
    assert fold0[0] == pytest.approx(0.6) and fold0[1] == pytest.approx(statistics.stdev([0.5, 0.7])) and fold0[2] == 2
    assert fold1 == (0.9, None, 1)  # one run: no SD
    pooled = rows["dice"]["pooled"]
    assert pooled[0] == pytest.approx(0.7) and pooled[1] == pytest.approx(0.2) and pooled[2] == 3
    assert rows["hd95"]["pooled"] == (None, None, 0)

    csv_path, md_path = write_tables(results, 2, [0, 1], tmp_path, "test")
    table = md_path.read_text()
    assert "scored on the test split" in table
    assert "| dice | 0.6000 ± 0.1414 | 0.9000 | 0.7000 ± 0.2000 | 3 |" in table
    assert "| hd95 | n/a (0 of 2 runs) | n/a (0 of 2 runs) | n/a (0 of 3 runs) | 0 |" in table  # never 0.000
    assert "Failed runs (left out): fold1_seed1" in table
    with open(csv_path) as f:
        rows = {row["metric"]: row for row in csv.DictReader(f)}
    assert float(rows["dice"]["pooled_mean"]) == pytest.approx(0.7) and rows["hd95"]["pooled_mean"] == ""
    assert (tmp_path / "runs.csv").read_text().count("\n") == 1 + len(results)


def test_a_bundle_without_fold_and_seed_is_refused_before_any_run(tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "train.json").write_text(json.dumps({"fold": 0}))
    cmd = [sys.executable, "-m", "common.crossval", "--bundle-root", str(bundle), "--folds", "2"]
    result = subprocess.run([*cmd, "--out", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    train = bundle / "configs" / "train.json"
    assert result.stderr.strip().splitlines()[-1] == f"error: {train}: defines no 'seed'; cross-validation sets them"


def test_two_folds_of_cohra_unet_on_held_out_test_cases(tmp_path):
    """Every fold trains through monai.bundle run and is scored on the split file's testing cases; a second call
    reuses the finished runs."""
    data = tmp_path / "brats"
    generate_brats(data, cases=5, size=(48, 48, 32), seed=2, workers=1, verbose=False)
    write_split_file(data, tmp_path / "split.json", folds=2, seed=0)
    base = {
        "dataset_dir": str(data),
        "split_file": str(tmp_path / "split.json"),
        "roi_size": [32, 32, 32],
        "network_def#channels": [8, 16, 32, 64],
        "network_def#transformer_heads": 4,
        "epochs": 1,
        "val_interval": 1,
        "num_workers": 0,
    }
    (tmp_path / "base.json").write_text(json.dumps(base))
    out = tmp_path / "cv"
    cmd = [sys.executable, "-m", "common.crossval", "--bundle-root", str(COHRA), "--folds", "2", "--seeds", "1"]
    cmd += ["--base", str(tmp_path / "base.json"), "--out", str(out)]
    first = subprocess.run(cmd, cwd=tmp_path, env=zoo.bundle_env(), capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    testing = [e["case"] for e in json.loads((tmp_path / "split.json").read_text())["testing"]]
    for fold in (0, 1):
        summary = json.loads((out / f"fold{fold}_seed0" / "eval" / "metrics_summary.json").read_text())
        assert summary["split"] == "test" and summary["cases"] == len(testing) == 1
        overlay = json.loads((out / f"fold{fold}_seed0" / "overlay.json").read_text())
        assert (overlay["fold"], overlay["seed"]) == (fold, 0)
    table = (out / "crossval.md").read_text()
    assert "scored on the test split" in table and "| val_dice_wt |" in table
    assert table in first.stdout
    again = subprocess.run(cmd, cwd=tmp_path, env=zoo.bundle_env(), capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.count("done before, reusing") == 2

    # the same trained models scored again: with mirroring, and as each seed's fold ensemble
    (tmp_path / "variants.json").write_text(json.dumps({"tta": {"tta_mirroring": True}}))
    variants = subprocess.run(
        [*cmd, "--variants", str(tmp_path / "variants.json"), "--ensemble"],
        cwd=tmp_path, env=zoo.bundle_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert variants.returncode == 0, variants.stdout + variants.stderr
    assert "training ..." not in variants.stdout  # no run is trained again
    for fold in (0, 1):
        tta = json.loads((out / f"fold{fold}_seed0" / "eval_tta" / "result.json").read_text())
        assert tta["status"] == "ok" and tta["overlay"]["tta_mirroring"] is True
    ensemble = json.loads((out / "ensemble_seed0" / "result.json").read_text())
    assert ensemble["status"] == "ok"
    members = [str(out / f"fold{k}_seed0" / "models" / "model.pt") for k in (0, 1)]
    assert ensemble["overlay"]["ensemble_checkpoints"] == members
    restored = "Restored all variables from"  # MONAI's CheckpointLoader: models/model.pt of a single run only
    assert restored in (out / "fold0_seed0" / "evaluate.log").read_text()
    assert restored not in (out / "ensemble_seed0" / "evaluate.log").read_text()
    table = (out / "variants.md").read_text()
    assert "| metric | single model | tta | fold ensemble |" in table and "| brats_legacy_dice_wt |" in table
