"""cohra_unet_brats through ``python -m monai.bundle run``: resume, evaluation outputs, output label convention.

Tiny sizes: 48x48x32 phantoms, 32^3 patches, a narrower network (the demo overrides in configs/demo.json).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ci import zoo
from common.synthetic.brats import generate_brats
from tests.helpers import REPO_ROOT

BUNDLE = REPO_ROOT / "bundles" / "cohra_unet_brats"
CONFIGS = BUNDLE / "configs"
TINY = {"roi_size": [32, 32, 32], "network_def#channels": [8, 16, 32, 64], "network_def#transformer_heads": 4}


def _overlay(path: Path, content: dict) -> Path:
    path.write_text(json.dumps(content))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Phantoms, a split file and one epoch of training, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("cohra")
    data = root / "brats"
    generate_brats(data, cases=4, size=(48, 48, 32), seed=1, workers=1, verbose=False)
    from common.data.brats import write_split_file

    write_split_file(data, root / "datalist.json", folds=2, seed=0)
    settings = {
        **TINY,
        "bundle_root": str(BUNDLE),
        "dataset_dir": str(data),
        "split_file": str(root / "datalist.json"),
        "ckpt_dir": str(root / "models"),
        "num_workers": 0,
        "val_interval": 1,
    }
    train = _overlay(root / "train.json", {**settings, "epochs": 1, "output_dir": str(root / "train")})
    zoo.monai_bundle_run([CONFIGS / "train.json", train], log_file=root / "train1.log")
    return {"root": root, "data": data, "settings": settings}


def test_resume_continues_from_the_last_epoch(trained):
    root, settings = trained["root"], trained["settings"]
    assert (root / "models" / "checkpoint_epoch=1.pt").is_file()
    resume = _overlay(root / "resume.json", {**settings, "epochs": 2, "resume": True, "output_dir": str(root / "t2")})
    zoo.monai_bundle_run([CONFIGS / "train.json", resume], log_file=root / "train2.log")
    log = (root / "train2.log").read_text()
    assert "SupervisedTrainer - INFO - Epoch[2] Complete" in log
    assert "SupervisedTrainer - INFO - Epoch[1] Complete" not in log, "resumed training repeated epoch 1"
    assert (root / "models" / "checkpoint_epoch=2.pt").is_file()


def test_resume_without_checkpoint_says_what_is_missing(tmp_path, trained):
    settings = {**trained["settings"], "ckpt_dir": str(tmp_path / "empty"), "resume": True, "epochs": 1}
    overlay = _overlay(tmp_path / "o.json", {**settings, "output_dir": str(tmp_path / "out")})
    with pytest.raises(RuntimeError):
        zoo.monai_bundle_run([CONFIGS / "train.json", overlay], log_file=tmp_path / "log")
    # MONAI wraps the message in its own RuntimeError; the cause is in the log.
    assert f"{tmp_path / 'empty'}: no checkpoint to resume from" in (tmp_path / "log").read_text()


def test_evaluation_writes_per_case_dice_and_hd95(trained):
    root, settings = trained["root"], trained["settings"]
    overlay = _overlay(root / "eval.json", {**settings, "output_dir": str(root / "eval")})
    zoo.monai_bundle_run([CONFIGS / "train.json", CONFIGS / "evaluate.json", overlay], log_file=root / "eval.log")
    summary = json.loads((root / "eval" / "metrics_summary.json").read_text())
    held_out = [e["case"] for e in json.loads((root / "datalist.json").read_text())["testing"]]
    for region in ("tc", "wt", "et"):
        assert f"val_dice_{region}" in summary["metrics"] and f"val_hd95_{region}" in summary["metrics"]
        rows = (root / "eval" / f"val_hd95_{region}_raw.csv").read_text().splitlines()
        assert len(rows) == 1 + summary["cases"] == 1 + len(held_out)  # header + one row per held-out test case
        assert sorted(Path(row.split(",")[0]).parent.name for row in rows[1:]) == held_out
    assert summary["summary"]["val_dice_wt"]["mean"]["mean"] is not None

    # the model-selection fold only when asked for, and a split without cases is refused with its name
    validation = _overlay(root / "val.json", {**settings, "output_dir": str(root / "val"), "eval_split": "validation"})
    zoo.monai_bundle_run([CONFIGS / "train.json", CONFIGS / "evaluate.json", validation], log_file=root / "val.log")
    assert json.loads((root / "val" / "metrics_summary.json").read_text())["cases"] == 2  # fold 0 of 3 cases
    fit = _overlay(root / "fit.json", {**settings, "output_dir": str(root / "fit"), "eval_split": "training"})
    zoo.monai_bundle_run([CONFIGS / "train.json", CONFIGS / "evaluate.json", fit], log_file=root / "fit.log")
    fit_summary = json.loads((root / "fit" / "metrics_summary.json").read_text())
    scored = {Path(r.split(",")[0]).parent.name for r in (root / "fit" / "val_dice_wt_raw.csv").read_text().split()[1:]}
    assert fit_summary["split"] == "training" and fit_summary["cases"] == len(scored) > 0
    assert not scored & set(held_out)
    no_test = root / "no_test.json"
    no_test.write_text(json.dumps({**json.loads((root / "datalist.json").read_text()), "testing": []}))
    overlay = _overlay(
        root / "no_test_eval.json", {**settings, "split_file": str(no_test), "output_dir": str(root / "x")}
    )
    with pytest.raises(RuntimeError):
        zoo.monai_bundle_run([CONFIGS / "train.json", CONFIGS / "evaluate.json", overlay], log_file=root / "x.log")
    assert f"error: '{no_test}' holds no test cases" in (root / "x.log").read_text()


def test_inference_writes_the_inputs_label_convention_and_affine(tmp_path, trained):
    data = tmp_path / "brats2023"
    ids = generate_brats(data, cases=1, size=(48, 48, 32), seed=2, convention="2023", workers=1, verbose=False)
    settings = {**TINY, "bundle_root": str(BUNDLE), "ckpt_dir": trained["settings"]["ckpt_dir"]}
    overlay = _overlay(tmp_path / "infer.json", {**settings, "dataset_dir": str(data), "output_dir": str(tmp_path)})
    zoo.monai_bundle_run([CONFIGS / "inference.json", overlay], log_file=tmp_path / "infer.log")
    prediction = nib.load(tmp_path / f"{ids[0]}_seg.nii.gz")
    source = nib.load(data / ids[0] / f"{ids[0]}-t1n.nii.gz")
    assert prediction.shape == source.shape
    np.testing.assert_allclose(prediction.affine, source.affine)
    assert set(np.unique(np.asarray(prediction.dataobj)).tolist()) <= {0, 1, 2, 3}
    assert prediction.get_data_dtype() == np.uint8


def test_inference_on_a_wrong_folder_names_the_problem(tmp_path):
    (tmp_path / "not_brats").mkdir()
    (tmp_path / "not_brats" / "scan.nii.gz").write_bytes(b"")
    settings = {**TINY, "dataset_dir": str(tmp_path / "not_brats"), "load_pretrain": False}
    configs = [CONFIGS / "inference.json", _overlay(tmp_path / "o.json", settings)]
    with pytest.raises(RuntimeError):
        zoo.monai_bundle_run(configs, log_file=tmp_path / "log")
    log = (tmp_path / "log").read_text()
    assert f"'{tmp_path / 'not_brats'}' holds no case folders" in log
    assert "BraTS2021_00000" in log and "BraTS-GLI-00000-000" in log  # what was expected, in both conventions


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_phantom_quality_bar_next_to_segresnet(tmp_path):
    """A short CPU run reaches WT Dice >= 0.8 on held-out phantoms; SegResNet trains in the same run on equal terms.

    12 phantoms of 64x64x48: 2 test cases, the rest in 4 folds (fold 0, 3 cases, validates), 32^3 patches, 30 epochs,
    the same data, loss, optimiser and schedule for both networks (COHRA-UNet at widths 16-128). The table is
    printed (``pytest -m slow -s``) and kept in ``<tmp>/study/results.md``.
    """
    from common.ablation import expand_grid, load_grid, run_study, write_tables
    from common.data.brats import write_split_file

    data = tmp_path / "brats"
    generate_brats(data, cases=12, size=(64, 64, 48), seed=0, workers=2, verbose=False)
    write_split_file(data, tmp_path / "split.json", folds=4, seed=0)
    grid = load_grid(CONFIGS / "ablation.json")
    grid["base"] = {
        "dataset_dir": str(data),
        "split_file": str(tmp_path / "split.json"),
        "roi_size": [32, 32, 32],
        "network_def#channels": [16, 32, 64, 128],
        "epochs": 30,
        "val_interval": 10,
        "num_workers": 0,
        "learning_rate": 0.002,
        "amp": False,
    }
    results = run_study(BUNDLE, expand_grid(grid, axes=["network"]), tmp_path / "study")
    _, table = write_tables(results, ["network"], tmp_path / "study")
    print("\n" + table.read_text())
    by_run = {r["run"]: r for r in results}
    assert all(r["status"] == "ok" for r in results), results
    assert by_run["baseline"]["metrics"]["val_dice_wt"] >= 0.8
    assert 0.0 <= by_run["network=segresnet"]["metrics"]["val_dice_wt"] <= 1.0


def test_sigkill_mid_epoch_then_resume_continues_from_the_last_checkpoint(trained, tmp_path):
    """Training killed with SIGKILL resumes from its last complete checkpoint with one override, and finishes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    settings = {**trained["settings"], "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "tb")}
    long_run = _overlay(tmp_path / "long.json", {**settings, "epochs": 100, "val_interval": 100})
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str([str(CONFIGS / "train.json"), str(long_run)]),
    ]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=zoo.bundle_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not (tmp_path / "models" / "checkpoint_epoch=2.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = max(int(p.stem.split("=")[1]) for p in (tmp_path / "models").glob("checkpoint_epoch=*.pt"))
    assert killed_at < 100, "training finished before it was killed"

    resume = _overlay(tmp_path / "resume.json", {**settings, "epochs": killed_at + 2, "resume": True})
    zoo.monai_bundle_run([CONFIGS / "train.json", resume], log_file=tmp_path / "resumed.log")
    log = (tmp_path / "resumed.log").read_text()
    assert f"checkpoint_epoch={killed_at}.pt" in log and "Restored all variables" in log
    assert f"Epoch[{killed_at + 1}] Complete" in log and f"Epoch[{killed_at + 2}] Complete" in log
    assert f"Epoch[{killed_at}] Complete" not in log, "resumed training repeated a finished epoch"
    assert (tmp_path / "models" / f"checkpoint_epoch={killed_at + 2}.pt").is_file()
