"""Every failure around checkpoints ends in one clear line: ``error: <path>: <what is wrong>; <what to do>``.

Loading (every bundle's inference, evaluation and resumed training, and every other checkpoint a config loads) goes
through :class:`common.engines.CheckpointLoader`; a missing file, an empty, truncated or random one, a pickle that
would run code and the weights of another network or width each stop the real entry point
(``python -m monai.bundle run`` in a subprocess) with the :class:`~common.engines.CheckpointError` line last on
stderr. Inference without trained weights says how to get them. A save that fails (a file size limit, as a full disk
would) names the folder and the cause and leaves the previous checkpoints intact, and a resumed training keeps only
the newest ``n_saved`` epoch files, the earlier process's included.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from common.engines import CheckpointError, CheckpointNotFoundError, load_checkpoint, read_checkpoint
from common.errors import bad_input_message
from tests.helpers import REPO_ROOT
from tests.zoo.test_bad_input import brats_case, nifti, photograph, png, volume
from tests.zoo.training_runs import CHECKPOINT, demo_training_settings, epochs_saved

BUNDLES = REPO_ROOT / "bundles"
ALL_BUNDLES = ["cohra_unet_brats", "mtcm_kd_t1ce_student", "fct_visible_korean", "refnet_synapse"]


class _RunsCode:
    """A pickle that would create ``marker`` when unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))


def write_bad_checkpoint(path: Path, kind: str) -> None:
    """``path`` spoiled as ``kind`` says (see BAD_KINDS); ``other_network`` is a state dict of an unrelated net."""
    path.parent.mkdir(parents=True, exist_ok=True)
    good = path.with_name("good.pt")
    torch.save({"model": _tiny_net().state_dict()}, good)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "runs_code":
        torch.save({"model": _RunsCode(path.with_name("PWNED"))}, path)
    elif kind == "other_network":
        torch.save({"model": torch.nn.Linear(3, 2).state_dict()}, path)
    else:
        raise ValueError(kind)
    good.unlink()


BAD_KINDS = {
    "empty": "the file is empty (0 bytes",
    "random_bytes": "the file is not a PyTorch checkpoint",
    "truncated": "the torch.save archive is truncated or damaged",
    "runs_code": "would import and run posix.system when loaded, so torch.load(weights_only=True) refuses it",
    "other_network": "weights do not fit the Sequential of this config (4 missing keys",
}


@pytest.mark.parametrize("kind", list(BAD_KINDS))
def test_each_kind_of_bad_checkpoint_is_one_line_naming_the_file(kind, tmp_path):
    """The loader itself: every kind of bad file is a BadInputError whose single-line message names the file."""
    path = tmp_path / "models" / "model.pt"
    write_bad_checkpoint(path, kind)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, {"model": _tiny_net()})
    message = bad_input_message(RuntimeError("Failed to evaluate"))
    assert message is None
    message = bad_input_message(caught.value)
    assert message and message.startswith(f"{path}: ") and BAD_KINDS[kind] in message, message
    assert "\n" not in message and "; " in message, "one line: what is wrong; what was expected or what to do"
    assert not path.with_name("PWNED").exists(), "the pickle's code ran"


def test_shape_mismatch_and_missing_items_are_named(tmp_path):
    net = _tiny_net()
    wide = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
    torch.save({"model": wide.state_dict()}, tmp_path / "wide.pt")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(CheckpointError, match=r"wide\.pt: lacks 'optimizer' \(it holds 'model'\)"):
        load_checkpoint(tmp_path / "wide.pt", {"model": net, "optimizer": optimizer})
    with pytest.raises(CheckpointError, match=r"3 shape mismatches \(e\.g\. '0\.weight': \[8, 1, 3, 3\] in the file"):
        load_checkpoint(tmp_path / "wide.pt", {"model": net})
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), "a failed load changed the network"
    with pytest.raises(CheckpointNotFoundError, match=r"nothing\.pt: no such file; expected a checkpoint"):
        read_checkpoint(tmp_path / "nothing.pt")


def test_every_config_loads_checkpoints_through_the_zoo_loader():
    """No bundle config uses MONAI's CheckpointLoader (whose failures end in MONAI's generic line) or raw torch.load."""
    offenders = []
    for config in sorted(BUNDLES.glob("*/configs/*.json")):
        text = config.read_text()
        if '"_target_": "CheckpointLoader"' in text or "torch.load(" in text or "refinement.load_weights" in text:
            offenders.append(str(config.relative_to(REPO_ROOT)))
    assert not offenders, offenders


# ---------------------------------------------------------------------------------------------------------------
# the real entry points, one subprocess per case, all at once
# ---------------------------------------------------------------------------------------------------------------


def _start(bundle: str, configs: list[str], overlay: dict[str, Any], work: Path, preexec=None) -> subprocess.Popen:
    from common.bundle_run import bundle_env

    overlay_file = work / "overlay.json"
    overlay_file.write_text(json.dumps({"bundle_root": str(BUNDLES / bundle), **overlay}))
    files = [str(BUNDLES / bundle / "configs" / c) for c in configs] + [str(overlay_file)]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "[" + ",".join(map(repr, files)) + "]"]
    return subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=bundle_env(),
        stdout=open(work / "stdout.txt", "w"),
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec,
    )


def _demo(bundle: str, stage: str) -> dict[str, Any]:
    return json.loads((BUNDLES / bundle / "configs" / "demo.json").read_text())[stage]


def _inference_overlay(bundle: str, work: Path) -> dict[str, Any]:
    """The demo inference settings of ``bundle`` on one tiny input made here; ckpt_dir is ``work/models``."""
    overlay = {**_demo(bundle, "inference"), "ckpt_dir": str(work / "models"), "output_dir": str(work / "out")}
    if bundle == "cohra_unet_brats":
        brats_case(work / "data")
        overlay["dataset_dir"] = str(work / "data")
    elif bundle == "mtcm_kd_t1ce_student":
        overlay["input_image"] = str(brats_case(work / "data")["t1ce"])
    elif bundle == "fct_visible_korean":
        overlay["input_image"] = str(png(work / "VK_0000.png", photograph()))
    else:
        nifti(work / "ct" / "img0001.nii.gz", volume(0, (16, 16, 8)))
        overlay.update(dataset_dir=str(work / "ct"), datalist="$common.data.btcv.ct_datalist(@dataset_dir)")
    return overlay


def _wider_network_checkpoint(path: Path) -> None:
    """A checkpoint of the FCT network at twice the demo width (the inference config's own network_def)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "fct_visible_korean" / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLES / "fct_visible_korean"), **_demo("fct_visible_korean", "inference")})
    parser["network_def"]["filters"] = [2 * f for f in parser["network_def"]["filters"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": parser.get_parsed_content("network_def").state_dict()}, path)


# inference with a bad models/model.pt: one kind per bundle, so each kind meets a real entry point
BAD_MODEL_PT = {
    "cohra_unet_brats": ("random_bytes", BAD_KINDS["random_bytes"]),
    "mtcm_kd_t1ce_student": ("truncated", BAD_KINDS["truncated"]),
    "fct_visible_korean": ("wider", "weights do not fit the FCT of this config"),
    "refnet_synapse": ("runs_code", BAD_KINDS["runs_code"]),
}


@pytest.fixture(scope="module")
def entry_point_runs(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Start every failing run, wait for all; each entry: returncode, stderr, the file, the outputs folder."""
    root = tmp_path_factory.mktemp("checkpoint_errors")
    runs: dict[str, dict[str, Any]] = {}
    for bundle in ALL_BUNDLES:
        work = root / f"{bundle}_no_weights"
        work.mkdir()
        runs[f"{bundle} inference, no weights"] = {
            "proc": _start(bundle, ["inference.json"], _inference_overlay(bundle, work), work),
            "file": work / "models" / "model.pt",
            "work": work,
            "expected": [
                "no trained weights",
                f"--config_file {BUNDLES / bundle / 'configs' / 'train.json'}",
                "download_large_files",
                "large_files.yml",
                "--load_pretrain False",
            ],
        }
        work = root / f"{bundle}_bad_weights"
        work.mkdir()
        kind, expected = BAD_MODEL_PT[bundle]
        model_pt = work / "models" / "model.pt"
        if kind == "wider":
            _wider_network_checkpoint(model_pt)
        else:
            write_bad_checkpoint(model_pt, kind)
        runs[f"{bundle} inference, {kind} model.pt"] = {
            "proc": _start(bundle, ["inference.json"], _inference_overlay(bundle, work), work),
            "file": model_pt,
            "work": work,
            "expected": [expected],
        }
    for run in runs.values():
        proc = run.pop("proc")
        _, run["stderr"] = proc.communicate(timeout=300)
        run["returncode"] = proc.returncode
    return runs


ENTRY_POINTS = [f"{b} inference, no weights" for b in ALL_BUNDLES] + [
    f"{b} inference, {kind} model.pt" for b, (kind, _) in BAD_MODEL_PT.items()
]


def last_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def assert_error_line(stderr: str, returncode: int, file: Path, expected: list[str]) -> str:
    assert returncode != 0, "the run exited with 0"
    line = last_line(stderr)
    assert line.startswith(f"error: {file}: "), stderr[-3000:]
    for needle in expected:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert "Failed to evaluate" not in line
    return line


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_inference_with_missing_or_bad_weights_ends_in_one_error_line(entry_point, entry_point_runs):
    run = entry_point_runs[entry_point]
    assert_error_line(run["stderr"], run["returncode"], run["file"], run["expected"])
    out = run["work"] / "out"
    written = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".gz", ".nii", ".png")] if out.exists() else []
    assert not written, f"outputs written despite the failure: {written}"
    assert not (run["work"] / "models" / "PWNED").exists(), "the checkpoint's pickled code ran"


# ---------------------------------------------------------------------------------------------------------------
# evaluation, resume and saving: FCT's tiny demo training (slow tier)
# ---------------------------------------------------------------------------------------------------------------

FCT = "fct_visible_korean"


@pytest.fixture(scope="module")
def fct_settings(tmp_path_factory, phantom_root) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("fct_ckpt")
    settings = demo_training_settings(BUNDLES / FCT, phantom_root, work / "work", "train")
    settings.update(image_size=32, num_workers=0, val_interval=1)
    return settings


@pytest.fixture(scope="module")
def trained_two_epochs(fct_settings, tmp_path_factory) -> Path:
    """A ckpt_dir after two epochs of FCT's demo training (checkpoint_epoch=1.pt, =2.pt, model.pt)."""
    work = tmp_path_factory.mktemp("fct_two_epochs")
    overlay = {**fct_settings, "epochs": 2, "ckpt_dir": str(work / "models"), "output_dir": str(work / "out")}
    proc = _start(FCT, ["train.json"], overlay, work)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert epochs_saved(work / "models") == [1, 2]
    return work / "models"


@pytest.mark.slow
def test_evaluation_and_resume_with_bad_checkpoints_end_in_one_error_line(fct_settings, tmp_path):
    evaluation = tmp_path / "evaluate"
    evaluation.mkdir()
    write_bad_checkpoint(evaluation / "models" / "model.pt", "empty")
    overlay = {
        **fct_settings,
        **_demo(FCT, "evaluate"),
        "image_size": 32,
        "ckpt_dir": str(evaluation / "models"),
        "output_dir": str(evaluation / "eval"),
    }
    evaluate = _start(FCT, ["train.json", "evaluate.json"], overlay, evaluation)

    resumed = tmp_path / "resume"
    resumed.mkdir()
    write_bad_checkpoint(resumed / "models" / CHECKPOINT.format(1), "other_network")
    overlay = {**fct_settings, "epochs": 2, "resume": True, "ckpt_dir": str(resumed / "models")}
    resume = _start(FCT, ["train.json"], {**overlay, "output_dir": str(resumed / "out")}, resumed)

    missing = tmp_path / "missing"
    missing.mkdir()
    overlay = {**fct_settings, "epochs": 2, "resume": True, "ckpt_dir": str(missing / "models")}
    nothing = _start(FCT, ["train.json"], {**overlay, "output_dir": str(missing / "out")}, missing)

    _, stderr = evaluate.communicate(timeout=300)
    assert_error_line(stderr, evaluate.returncode, evaluation / "models" / "model.pt", ["the file is empty"])
    _, stderr = resume.communicate(timeout=300)
    assert_error_line(
        stderr, resume.returncode, resumed / "models" / CHECKPOINT.format(1), ["lacks 'optimizer'", "same config"]
    )
    _, stderr = nothing.communicate(timeout=300)
    assert_error_line(stderr, nothing.returncode, missing / "models", ["no checkpoint to resume from"])


def _file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_a_failed_save_keeps_the_previous_checkpoints_and_names_the_folder(trained_two_epochs, fct_settings, tmp_path):
    """Writes beyond RLIMIT_FSIZE fail with EFBIG, a real write failure like a full disk's ENOSPC."""
    ckpt_dir = tmp_path / "models"
    shutil.copytree(trained_two_epochs, ckpt_dir)
    before = {p.name: p.read_bytes() for p in ckpt_dir.iterdir()}
    limit = (ckpt_dir / CHECKPOINT.format(2)).stat().st_size // 2  # logs are far smaller; checkpoints cannot fit
    overlay = {**fct_settings, "epochs": 3, "resume": True, "ckpt_dir": str(ckpt_dir), "output_dir": str(tmp_path)}
    proc = _start(FCT, ["train.json"], overlay, tmp_path, preexec=_file_size_limit(limit))
    _, stderr = proc.communicate(timeout=600)
    line = assert_error_line(stderr, proc.returncode, ckpt_dir, ["cannot save", "File too large", "--resume true"])
    assert re.search(r"cannot save (checkpoint_epoch=3\.pt|model\.pt)", line), line
    after = {p.name: p.read_bytes() for p in ckpt_dir.iterdir()}
    assert after.keys() == before.keys(), f"files changed: {sorted(after)} (a temp file left behind?)"
    assert after == before, "a previous checkpoint was modified"
    for name in before:
        read_checkpoint(ckpt_dir / name)  # intact and loadable


@pytest.mark.slow
def test_retention_holds_across_resumes(trained_two_epochs, fct_settings, tmp_path):
    ckpt_dir = tmp_path / "models"
    shutil.copytree(trained_two_epochs, ckpt_dir)
    overlay = {**fct_settings, "epochs": 4, "resume": True, "ckpt_dir": str(ckpt_dir), "output_dir": str(tmp_path)}
    proc = _start(FCT, ["train.json"], overlay, tmp_path)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert epochs_saved(ckpt_dir) == [3, 4], "n_saved 2: only the newest two epoch checkpoints stay"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [CHECKPOINT.format(3), CHECKPOINT.format(4), "model.pt"]
