"""Finding the checkpoint to resume from."""

from __future__ import annotations

import os
from pathlib import Path

CHECKPOINT_GLOB = "checkpoint_epoch=*.pt"  # what MONAI's CheckpointSaver names its save_interval checkpoints


def latest_checkpoint(ckpt_dir: str | os.PathLike, pattern: str = CHECKPOINT_GLOB) -> str:
    """The most recent epoch checkpoint in ``ckpt_dir``, by its epoch number.

    Raises:
        FileNotFoundError: naming the folder and the expected file pattern, when there is nothing to resume from.
    """
    candidates = list(Path(ckpt_dir).glob(pattern))
    if not candidates:
        raise FileNotFoundError(
            f"{ckpt_dir}: no checkpoint to resume from (expected files named {pattern}, written by a training run "
            "of this bundle); start without resume=true"
        )

    def epoch(path: Path) -> int:
        return int(path.stem.rsplit("=", 1)[-1])

    return str(max(candidates, key=epoch))
