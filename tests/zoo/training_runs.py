"""Helpers for tests that kill a bundle's training and resume it: the tiny demo settings, the kill, the probe.

A resumed run is checked from the inside by a *probe*: an overlay that adds one handler to the bundle's trainer,
which at the first epoch start of the process (after ``CheckpointLoader`` ran, before any training step) saves the
epoch and iteration counters, the network's weights, the evaluator's best metric and the best-model saver's record
for the test to compare with the checkpoint it resumed from.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from ci import zoo
from tests.helpers import prepare_demo_data

CHECKPOINT = "checkpoint_epoch={}.pt"


def write_overlay(path: Path, content: dict) -> Path:
    path.write_text(json.dumps(content))
    return path


def demo_training_settings(bundle: Path, phantom_root: Path, work_dir: Path, stage: str | None = "train") -> dict:
    """The bundle's ``configs/demo.json`` overlay for ``stage`` (none: only the standard ids), phantoms prepared."""
    work_dir.mkdir(parents=True, exist_ok=True)
    spec, dataset_dir = prepare_demo_data(bundle, phantom_root, work_dir)
    return {
        "bundle_root": str(bundle),
        "dataset_dir": str(dataset_dir),
        "demo_work_dir": str(work_dir.resolve()),
        "ckpt_dir": str(work_dir / "models"),
        "output_dir": str(work_dir / "out"),
        **(spec[stage] if stage else {}),
    }


def epochs_saved(ckpt_dir: Path) -> list[int]:
    return sorted(int(p.stem.rsplit("=", 1)[1]) for p in ckpt_dir.glob(CHECKPOINT.format("*")))


def train_until_killed(config_files: list[Path], ckpt_dir: Path, log_file: Path, epochs: int, timeout: float = 300):
    """Start ``monai.bundle run`` on ``config_files`` and SIGKILL it once ``epochs`` epoch checkpoints exist.

    The kill lands right after a checkpoint was renamed into place, i.e. in the next epoch's iterations (or its
    validation). Returns the epoch of the newest checkpoint left behind.
    """
    files = "[" + ",".join(repr(str(f)) for f in config_files) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files]
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, cwd=zoo.REPO_ROOT, env=zoo.bundle_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while len(epochs_saved(ckpt_dir)) < epochs:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"training ended or stalled before it was killed:\n{_tail(log_file)}")
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"training exited by itself ({proc.returncode}):\n{_tail(log_file)}"
    return epochs_saved(ckpt_dir)[-1]


def resume_probe(probe_file: Path) -> dict:
    """Overlay entries (merged into the bundle's lists) that save the trainer's state at its first epoch start.

    Default arguments bind the referenced objects: a lambda built by ``eval`` cannot see MONAI's local references.
    """
    handler = (
        "lambda engine, net=@network, evaluator=@validate#evaluator, contents=@checkpoint_contents: "
        "os.path.exists(PROBE) or torch.save({'epoch': engine.state.epoch, 'iteration': engine.state.iteration, "
        "'weights': getattr(net, 'module', net).state_dict(), 'best_metric': evaluator.state.best_metric, "
        "'best_files': contents['best_model_saver'].state_dict()}, PROBE)"
    ).replace("PROBE", repr(str(probe_file)))
    return {
        "+imports": ["$import os", "$from ignite.engine import Events"],
        "+initialize": [f"$@train#trainer.add_event_handler(Events.EPOCH_STARTED, {handler})"],
    }


def check_resumed_from(checkpoint_file: Path, probe_file: Path) -> None:
    """The resumed run started where ``checkpoint_file`` left off: counters, weights and best metric."""
    saved = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    assert probe_file.is_file(), "the resumed run never started an epoch"
    probe = torch.load(probe_file, map_location="cpu", weights_only=False)
    trainer = saved["trainer"]
    assert probe["iteration"] == trainer["iteration"], (probe["iteration"], trainer)
    assert probe["epoch"] == trainer["iteration"] // trainer["epoch_length"] + 1
    weights = saved["model"] if "model" in saved else saved["network"]
    assert probe["weights"].keys() == weights.keys()
    for name, value in weights.items():
        assert torch.equal(probe["weights"][name], value), f"{name} differs from the checkpoint's"
    assert probe["best_metric"] == saved["evaluator"]["best_metric"], (probe["best_metric"], saved["evaluator"])
    # the best-model saver knows which file holds which score, so a worse model cannot replace the best one
    assert probe["best_files"]["_saved"], "the checkpoint holds no best-model record"
    assert probe["best_files"] == saved["best_model_saver"], (probe["best_files"], saved["best_model_saver"])


def _tail(log_file: Path, lines: int = 40) -> str:
    return "\n".join(Path(log_file).read_text().splitlines()[-lines:])
