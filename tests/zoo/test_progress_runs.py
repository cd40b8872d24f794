"""Progress of real bundle runs, as a user at a terminal sees it: ``monai.bundle run`` with stderr on a
pseudo-terminal (bars are drawn only on a terminal, :mod:`common.progress`).

- inference draws a bar over the cases and, nested, over each case's sliding windows;
- ``--progress false`` draws none;
- a run that fails on a damaged input still ends stderr with its ``error:`` line, the bar closed before it;
- training logs one line per epoch with the epoch's time and the ETA.

All runs start at once (one module fixture) on tiny phantoms of ``cohra_unet_brats``.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import tty
from pathlib import Path
from typing import Any

import pytest

from common.bundle_run import bundle_env
from common.data.brats import write_split_file
from common.synthetic.brats import generate_brats
from tests.helpers import REPO_ROOT

BUNDLE = REPO_ROOT / "bundles" / "cohra_unet_brats"
SMALL = {"roi_size": [32, 32, 32], "network_def#channels": [8, 16, 32, 64], "num_workers": 0}


class TerminalRun:
    """A subprocess whose stderr is a 120-column pseudo-terminal (raw: no newline translation), read as it runs."""

    def __init__(self, cmd: list[str], env: dict[str, str], stdout: Path) -> None:
        master, slave = pty.openpty()
        tty.setraw(slave)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        with open(stdout, "w") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=slave)
        os.close(slave)
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, args=(master,), daemon=True)
        self._reader.start()

    def _read(self, master: int) -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            self._chunks.append(data)
        os.close(master)

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        """Exit status and everything written to the terminal."""
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        return self.proc.returncode, b"".join(self._chunks).decode("utf-8", errors="replace")


def _run(configs: list[str], overlay: dict[str, Any], work: Path, *arguments: str) -> TerminalRun:
    work.mkdir(parents=True, exist_ok=True)
    overlay_file = work / "overlay.json"
    overlay_file.write_text(json.dumps({"bundle_root": str(BUNDLE), **overlay}))
    files = [str(BUNDLE / "configs" / c) for c in configs] + [str(overlay_file)]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr(files), *arguments]
    env = {**bundle_env(), "OMP_NUM_THREADS": "1"}  # four runs at once share the cores
    env.pop("CI", None)  # a user's terminal, also when the suite itself runs in CI
    return TerminalRun(cmd, env, work / "stdout.txt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("progress")
    data = root / "brats"
    generate_brats(data, cases=2, size=(48, 48, 32), seed=4, workers=1, verbose=False)
    damaged = root / "damaged"
    generate_brats(damaged, cases=2, size=(48, 48, 32), seed=4, workers=1, verbose=False)
    flair = damaged / "BraTS2021_00001" / "BraTS2021_00001_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[:3000])
    write_split_file(data, root / "split.json", folds=2, test_fraction=0)

    infer = {**SMALL, "load_pretrain": False, "dataloader#num_workers": 0}
    started = {
        "inference": _run(["inference.json"], {**infer, "dataset_dir": str(data), "output_dir": str(root / "a")},
                          root / "inference"),
        "quiet": _run(["inference.json"], {**infer, "dataset_dir": str(data), "output_dir": str(root / "b")},
                      root / "quiet", "--progress", "false"),
        "failure": _run(["inference.json"], {**infer, "dataset_dir": str(damaged), "output_dir": str(root / "c")},
                        root / "failure"),
        "training": _run(["train.json"], {
            **SMALL, "dataset_dir": str(data), "split_file": str(root / "split.json"), "ckpt_dir": str(root / "models"),
            "output_dir": str(root / "train_out"), "epochs": 2, "val_interval": 2, "batch_size": 1, "amp": False,
        }, root / "training"),
    }  # fmt: skip
    results = {}
    for name, run in started.items():
        returncode, terminal = run.finish()
        stdout = (root / name / "stdout.txt").read_text()
        results[name] = {"returncode": returncode, "stderr": terminal, "stdout": stdout, "outputs": root}
    return results


def _bars(text: str) -> set[str]:
    """The labels of the tqdm bars drawn in ``text`` (``cases:  33%|...``)."""
    return set(re.findall(r"(\w[\w ]*): +\d+%\|", text))


def test_inference_shows_cases_and_windows(runs):
    run = runs["inference"]
    assert run["returncode"] == 0, run["stderr"][-3000:]
    assert _bars(run["stderr"]) == {"cases", "windows"}
    assert "cases: 100%" in run["stderr"] and "2/2" in run["stderr"]
    assert "windows: 100%" in run["stderr"] and "4/4" in run["stderr"], "48x48x32 in 32^3 windows, overlap 0.5"
    assert len(list((run["outputs"] / "a").glob("*_seg.nii.gz"))) == 2


def test_progress_false_draws_no_bar(runs):
    run = runs["quiet"]
    assert run["returncode"] == 0, run["stderr"][-3000:]
    assert _bars(run["stderr"]) == set() and "\r" not in run["stderr"]
    assert len(list((run["outputs"] / "b").glob("*_seg.nii.gz"))) == 2


def test_a_failing_run_ends_with_its_error_line_after_the_bars(runs):
    run = runs["failure"]
    stderr = run["stderr"]
    assert run["returncode"] == 1
    assert "cases" in _bars(stderr), "the bar was on screen when the second case failed"
    assert "1/2" in stderr
    last = stderr.rstrip("\n").rsplit("\n", 1)[-1]
    assert last.startswith("error: ") and "BraTS2021_00001_flair.nii.gz' is truncated" in last, last
    after_error = stderr[stderr.rindex("\nerror: ") :]
    assert "\r" not in after_error and "\x1b" not in after_error, "nothing is drawn after the error line"


def test_training_logs_the_epoch_time_and_eta(runs):
    run = runs["training"]
    assert run["returncode"] == 0, run["stdout"][-3000:]
    duration = r"\d+ (s|min)"
    assert re.search(rf"epoch 1/2 took {duration}, ETA {duration}\n", run["stdout"]), run["stdout"][-3000:]
    assert re.search(rf"epoch 2/2 took {duration}, this run took {duration}\n", run["stdout"]), run["stdout"][-3000:]
    assert _bars(run["stderr"]) == set(), "training shows no bar"
