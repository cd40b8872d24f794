"""Checkpoints that survive a kill at any moment, and finding the one to resume from.

MONAI's ``CheckpointSaver`` writes in place (``atomic=False``), and Ignite's ``Checkpoint`` deletes the file it
rotates out *before* it writes the new one; a training job killed at the wrong moment (pre-emption, OOM killer,
SIGKILL) is left with a truncated checkpoint or none at all. :class:`AtomicCheckpointSaver` is a drop-in
replacement for bundle configs: every file is written to a temporary file and renamed into place, and files rotated
out are deleted only after their successor is complete. :func:`latest_checkpoint` then resumes from the newest
*intact* epoch checkpoint, warning about any newer one that is damaged (keep ``n_saved`` >= 2 so that one exists).
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

__all__ = ["CHECKPOINT_GLOB", "AtomicCheckpointSaver", "AtomicDiskSaver", "latest_checkpoint", "with_best_metric"]

CHECKPOINT_GLOB = "checkpoint_epoch=*.pt"  # what MONAI's CheckpointSaver names its save_interval checkpoints

logger = logging.getLogger(__name__)


class AtomicDiskSaver(DiskSaver):
    """Ignite's ``DiskSaver`` with atomic writes (temp file + ``os.replace``) and removals deferred until after
    the next successful save; ``filename`` fixes the file name as MONAI's saver does (``model.pt``)."""

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename = filename
        self._superseded: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        filename = self.filename or filename
        super().__call__(checkpoint, filename, metadata)
        for old in self._superseded:
            if old != filename and (self.dirname / old).exists():
                super().remove(old)
        self._superseded.clear()

    def remove(self, filename: str) -> None:
        self._superseded.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments, same file names) whose files are never seen half-written."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(self.save_dir, checkpoint.save_handler.filename)

    def state_dict(self) -> dict:
        """Which best-model files exist and with what score, to store in the training checkpoint.

        MONAI's ``load_state_dict`` restores it on resume. Without it a resumed saver starts with no record, and the
        first validation after the resume overwrites the best model with whatever it scored.
        """
        if self._key_metric_checkpoint is None:
            raise ValueError("AtomicCheckpointSaver.state_dict: no best-model record to save (save_key_metric is off)")
        return dict(self._key_metric_checkpoint.state_dict())


def _intact(path: Path) -> bool:
    """A ``torch.save`` file is a zip archive; a truncated or overwritten one fails the CRC of some member."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def latest_checkpoint(ckpt_dir: str | os.PathLike, pattern: str = CHECKPOINT_GLOB) -> str:
    """The most recent intact epoch checkpoint in ``ckpt_dir``, by its epoch number.

    Newer checkpoints that are damaged (truncated, not a ``torch.save`` archive) are skipped with a warning.

    Raises:
        FileNotFoundError: naming the folder and the expected file pattern, when there is no intact checkpoint.
    """
    candidates = list(Path(ckpt_dir).glob(pattern))

    def epoch(path: Path) -> int:
        return int(path.stem.rsplit("=", 1)[-1])

    for path in sorted(candidates, key=epoch, reverse=True):
        if _intact(path):
            return str(path)
        logger.warning(f"{path}: damaged checkpoint (not a complete torch.save archive), trying the previous one")
    found = f"; found only damaged ones: {sorted(p.name for p in candidates)}" if candidates else ""
    raise FileNotFoundError(
        f"{ckpt_dir}: no checkpoint to resume from (expected files named {pattern}, written by a training run "
        f"of this bundle{found}); start without resume=true"
    )


def with_best_metric(evaluator: Any) -> Any:
    """``evaluator``, its best metric and the epoch of it added to what its ``state_dict`` saves.

    A training checkpoint holds the evaluator so that a resumed run compares new scores with the best one so far;
    MONAI's evaluators save neither by default.
    """
    for key in ("best_metric", "best_metric_epoch"):
        if key not in evaluator.state_dict_user_keys:
            evaluator.state_dict_user_keys.append(key)
    return evaluator
