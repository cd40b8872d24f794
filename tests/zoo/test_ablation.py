"""The ablation runner (``python -m common.ablation``): grid files, run expansion, and a tiny study end to end."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ci import zoo
from common.ablation import count_parameters, expand_grid, load_grid, results_table
from common.data.brats import write_split_file
from common.synthetic.brats import generate_brats
from tests.helpers import REPO_ROOT

COHRA = REPO_ROOT / "bundles" / "cohra_unet_brats"


def _grid(tmp_path: Path, grid: dict) -> Path:
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(grid))
    return path


def test_one_at_a_time_is_the_baseline_plus_every_other_setting(tmp_path):
    grid = load_grid(
        _grid(
            tmp_path,
            {
                "base": {"epochs": 2},
                "axes": {
                    "act": {"id": "network_def#act", "values": ["relu", "gelu", "mish"], "default": "relu"},
                    "loss": {"settings": {"a": {}, "b": {"loss#loss#gamma": 2.0}}, "default": "a"},
                },
            },
        )
    )
    runs = expand_grid(grid)
    assert [r.name for r in runs] == ["baseline", "act=gelu", "act=mish", "loss=b"]
    assert runs[0].overlay == {"epochs": 2}
    assert runs[2].overlay == {"epochs": 2, "network_def#act": "mish"}
    assert runs[3].settings == {"loss": "b"}
    assert [r.name for r in expand_grid(grid, axes=["loss"])] == ["baseline", "loss=b"]
    with pytest.raises(ValueError, match="unknown axes"):
        expand_grid(grid, axes=["depth"])


def test_full_mode_is_the_cartesian_product(tmp_path):
    grid = load_grid(
        _grid(
            tmp_path,
            {
                "mode": "full",
                "axes": {"a": {"id": "x", "values": [1, 2]}, "b": {"id": "y", "values": [True, False, None]}},
            },
        )
    )
    runs = expand_grid(grid)
    assert len(runs) == 6
    assert runs[0].name == "a=1,b=true" and runs[0].overlay == {"x": 1, "y": True}
    assert runs[-1].name == "a=2,b=null" and runs[-1].overlay == {"x": 2, "y": None}


@pytest.mark.parametrize(
    "grid, message",
    [
        ({}, "non-empty 'axes'"),
        ({"axes": {"a": {"id": "x", "values": [1]}}, "mode": "random"}, "'mode' must be one of"),
        ({"axes": {"a": {"id": "x", "values": [1, 2]}}}, "needs a 'default'"),
        ({"axes": {"a": {"id": "x", "values": [1, 2], "default": 3}}}, "default '3' is not one of"),
        ({"axes": {"a": {"settings": {"s": 1}, "default": "s"}}}, "map setting names to config overlay objects"),
        ({"axes": {"a": {"values": [1]}}}, "expected 'settings' or 'id'"),
    ],
)
def test_malformed_grids_name_the_file_and_the_problem(tmp_path, grid, message):
    path = _grid(tmp_path, grid)
    with pytest.raises(ValueError, match=message) as error:
        load_grid(path)
    assert str(path) in str(error.value)


def test_the_bundle_grid_covers_every_studied_axis():
    grid = load_grid(COHRA / "configs" / "ablation.json")
    assert set(grid["axes"]) >= {
        "activation",
        "normalization",
        "upsampling",
        "block",
        "channel_attention",
        "spatial_attention",
        "hybridization",
        "loss",
        "deep_supervision",
        "network",
    }
    assert set(grid["axes"]["activation"]["settings"]) == {"relu", "leakyrelu", "prelu", "gelu", "mish", "silu"}


def test_results_table_prints_n_a_for_a_metric_without_any_finite_case():
    results = [
        {
            "run": "baseline",
            "settings": {},
            "parameters": 10,
            "status": "ok",
            "metrics": {"val_dice_et": None, "val_dice_wt": 0.8},
            "metric_counts": {"val_dice_et": 0, "val_dice_wt": 3},
            "cases": 3,
        },
        {"run": "act=tanhh", "settings": {"act": "tanhh"}, "status": "failed"},
    ]
    header, rows = results_table(results, ["act"])
    assert header[-2:] == ["val_dice_et", "val_dice_wt"]
    assert rows[0][-2:] == ["n/a (0 of 3 cases)", "0.8000"]
    assert rows[1][-2:] == ["n/a", "n/a"], "a failed run has no metrics, and no 0 either"


def test_segresnet_baseline_is_the_model_zoo_network():
    """One stacked file swaps in MONAI's SegResNet with the brats_mri_segmentation widths (4,702,227 parameters)."""
    configs = COHRA / "configs"
    cohra = count_parameters([configs / "train.json"], cwd=COHRA)
    segresnet = count_parameters([configs / "train.json", configs / "segresnet.json"], cwd=COHRA)
    assert cohra == 13_806_214
    assert segresnet == 4_702_227


def test_tiny_study_end_to_end(tmp_path):
    """COHRA-UNet and the SegResNet baseline through the command, a table, and a second call that reuses the runs."""
    data = tmp_path / "brats"
    generate_brats(data, cases=4, size=(48, 48, 32), seed=2, workers=1, verbose=False)
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
    out = tmp_path / "study"
    cmd = [
        sys.executable,
        "-m",
        "common.ablation",
        "--bundle-root",
        str(COHRA),
        "--grid",
        str(COHRA / "configs" / "ablation.json"),
        "--axes",
        "network",
        "--base",
        str(tmp_path / "base.json"),
        "--out",
        str(out),
    ]
    first = subprocess.run(cmd, cwd=tmp_path, env=zoo.bundle_env(), capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    with open(out / "results.csv") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"baseline", "network=segresnet"}
    assert rows["network=segresnet"]["network"] == "segresnet"
    assert int(rows["network=segresnet"]["parameters"]) == 4_702_227
    for row in rows.values():
        assert row["status"] == "ok"
        assert 0.0 <= float(row["val_dice_wt"]) <= 1.0
    assert (out / "network=segresnet" / "models" / "model.pt").is_file()
    assert "| network=segresnet | segresnet |" in (out / "results.md").read_text()

    again = subprocess.run(cmd, cwd=tmp_path, env=zoo.bundle_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("done before, reusing") == 2

    # A configuration that cannot run is recorded as failed, the others stand, and the command exits non-zero.
    bad = _grid(
        tmp_path, {"axes": {"act": {"id": "network_def#act", "values": ["leakyrelu", "tanhh"], "default": "leakyrelu"}}}
    )
    cmd[cmd.index("--grid") + 1] = str(bad)
    cmd.remove("--axes")
    cmd.remove("network")
    failed = subprocess.run(cmd, cwd=tmp_path, env=zoo.bundle_env(), capture_output=True, text=True)
    assert failed.returncode == 1
    assert "failed runs: ['act=tanhh']" in failed.stderr
    assert "baseline: done before, reusing" in failed.stdout
    record = json.loads((out / "act=tanhh" / "result.json").read_text())
    assert record["status"] == "failed" and record["error"]
