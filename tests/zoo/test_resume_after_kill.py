"""Interrupted training loses nothing: every bundle's training, killed with SIGKILL mid-epoch, resumes with the one
override its README documents (``resume`` true) from its last checkpoint, with the same epoch counter, weights and
best metric, and completes; a damaged newest checkpoint is skipped with a warning and the previous one used.

cohra_unet_brats has its own kill test in tests/bundles/test_cohra_unet_brats.py (epoch counter and log); this file
checks the state inside the resumed process for the other bundles' training configs. Tiny demo settings
(configs/demo.json).
"""

from __future__ import annotations

import pytest
import torch

from ci import zoo
from tests.helpers import REPO_ROOT
from tests.zoo.training_runs import (
    CHECKPOINT,
    check_resumed_from,
    demo_training_settings,
    epochs_saved,
    resume_probe,
    train_until_killed,
    write_overlay,
)

BUNDLES = REPO_ROOT / "bundles"
# The refnet base stage has no demo.json section of its own: the Swin UNETR at the sizes its own tests use.
TINY_BASE = {
    "allow_partial_split": True,
    "feature_size": 12,
    "network_def#depths": [1, 1, 1, 1],
    "network_def#num_heads": [1, 1, 1, 1],
    "use_checkpoint": False,
    "roi_size": [64, 32, 32],  # Swin UNETR: sides divisible by 32, and more than one voxel at the bottleneck
    "spacing": [8.0, 8.0, 11.0],
    "samples_per_volume": 1,
    "amp": False,
    "validate#inferer#overlap": 0.0,
}
# name: (training config, demo.json section the settings start from, extra settings)
TRAINING_CONFIGS = {
    "fct_visible_korean": ("train.json", "train", {"image_size": 32}),
    "mtcm_kd_t1ce_student": ("train.json", "train", {}),
    "refnet_synapse": ("train.json", "train", {}),
    "refnet_synapse base": ("train_base.json", None, TINY_BASE),
}


def _kill_then_resume(name, tmp_path, phantom_root, kill_after: int, corrupt_newest: bool = False):
    bundle_name, _, _ = name.partition(" ")
    config, stage, extra = TRAINING_CONFIGS[name]
    configs = BUNDLES / bundle_name / "configs"
    settings = {**demo_training_settings(BUNDLES / bundle_name, phantom_root, tmp_path / "work", stage), **extra}
    settings.update(num_workers=0, val_interval=1)  # a best metric exists before the kill
    ckpt_dir = tmp_path / "work" / "models"
    killed = write_overlay(tmp_path / "long.json", {**settings, "epochs": 100})
    newest = train_until_killed([configs / config, killed], ckpt_dir, tmp_path / "killed.log", epochs=kill_after)
    assert not list(ckpt_dir.glob("*.tmp")) and not list(ckpt_dir.glob(".*")), "a temporary file was left behind"

    resumed_from = newest
    if corrupt_newest:
        data = (ckpt_dir / CHECKPOINT.format(newest)).read_bytes()
        (ckpt_dir / CHECKPOINT.format(newest)).write_bytes(data[: len(data) // 2])  # as a crash mid-write would
        resumed_from = newest - 1
    probe = tmp_path / "probe.pt"
    resume = write_overlay(
        tmp_path / "resume.json", {**settings, "epochs": resumed_from + 1, "resume": True, **resume_probe(probe)}
    )
    zoo.monai_bundle_run([configs / config, resume], log_file=tmp_path / "resumed.log")
    log = (tmp_path / "resumed.log").read_text()

    check_resumed_from(ckpt_dir / CHECKPOINT.format(resumed_from), probe)
    assert f"Epoch[{resumed_from + 1}] Complete" in log, log[-3000:]
    assert f"Epoch[{resumed_from}] Complete" not in log, "resumed training repeated a finished epoch"
    finished = torch.load(ckpt_dir / CHECKPOINT.format(resumed_from + 1), map_location="cpu", weights_only=False)
    assert finished["trainer"]["iteration"] == (resumed_from + 1) * finished["trainer"]["epoch_length"]
    # n_saved (2) holds across the resume: the killed run's older epoch files were rotated out too
    assert epochs_saved(ckpt_dir) == [max(1, resumed_from), resumed_from + 1], epochs_saved(ckpt_dir)
    return log


@pytest.mark.parametrize("name", list(TRAINING_CONFIGS))
def test_sigkill_mid_epoch_then_resume_restores_counters_weights_and_best_metric(name, tmp_path, phantom_root):
    _kill_then_resume(name, tmp_path, phantom_root, kill_after=1)


def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning(tmp_path, phantom_root):
    log = _kill_then_resume("fct_visible_korean", tmp_path, phantom_root, kill_after=2, corrupt_newest=True)
    assert "checkpoint_epoch=2.pt: damaged checkpoint" in log
