"""Preparation of a Visible Korean dataset folder for the ``fct_visible_korean`` bundle: label maps and the
datalist, written by reading the folder (:mod:`.reader`) and converting its segmentations (:mod:`.transforms`).

Preparation (:func:`prepare`)::

    python -m common.data.visible_korean prepare --dataset-dir DIR --out OUT \\
        [--test-fraction 0.2] [--val-fraction 0.2] [--quality-check 4] [--block-size 50] [--seed 0]
        [--unknown-colours error]

It checks every slice pair (both files present, 8-bit RGB PNG, same H x W), converts every segmentation and
writes ``OUT/labels/<name>.png`` (uint8 label map, same H x W as the photograph, values in {0, 1, 2}), then
``OUT/datalist.json`` last. All problems of all files are gathered into one error raised after the scan; an old
``datalist.json`` is removed before the scan, so a failed run never leaves a datalist behind, and every file is
written atomically (temporary file, then rename). The datalist holds ``test``, ``training``, ``validation`` and
``quality_check`` lists of ``{"image": ..., "label": ...}`` with absolute paths
(``monai.data.load_decathlon_datalist`` accepts any ``base_dir``), plus ``labels`` (decathlon style
``{"0": "background", ...}``), the split arguments, ``dataset_dir``, ``colour_table_sha256`` and ``num_test`` /
``num_training`` / ``num_validation`` / ``num_quality_check``. The same inputs and arguments give byte-identical
outputs.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from common.io import atomic_write_bytes, atomic_write_json

from .reader import (
    COLOUR_TABLE_NAME,
    DATALIST_NAME,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_QUALITY_CHECK,
    DEFAULT_TEST_FRACTION,
    DEFAULT_VAL_FRACTION,
    RGB,
    SlicePaths,
    VKDataError,
    _check_pair,
    list_slices,
    read_rgb_png,
    split_slices,
)
from .transforms import VK_LABELS, ColourCoding, ColourCount, _check_policy, format_colour_counts

__all__ = ["prepare"]

logger = logging.getLogger(__name__)


def _colour_table_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _label_png(labels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(labels).save(buf, format="PNG")  # (H, W) uint8 -> 8-bit greyscale PNG
    return buf.getvalue()


def prepare(
    dataset_dir: str | os.PathLike,
    out: str | os.PathLike,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    quality_check: int = DEFAULT_QUALITY_CHECK,
    seed: int = 0,
    block_size: int = DEFAULT_BLOCK_SIZE,
    unknown: str = "error",
    verbose: bool = False,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> dict[str, Any]:
    """Write ``out/labels/<name>.png`` for every slice and then ``out/datalist.json`` (module docstring).

    Args:
        dataset_dir: a VK dataset folder (:mod:`common.data.visible_korean.reader`).
        out: output folder (created if missing); may be ``dataset_dir`` itself.
        val_fraction, quality_check, seed, block_size, test_fraction: see :func:`split_slices`.
        unknown: ``"error"`` stops when any segmentation holds a colour in no row of the table; ``"background"``
            maps such colours to 0, logs one warning and records the files in the datalist.
        verbose: print progress every 100 slices and a summary.

    Returns:
        The datalist that was written.

    Raises:
        VKFileNotFoundError, VKDataError: bad folder, colour table, arguments or slices. Slice problems (missing or
        non-RGB files, size mismatches, unknown colours) of all slices are gathered into one error raised after
        the scan; no ``datalist.json`` is left in ``out`` then.
    """
    _check_policy(unknown)
    root = Path(dataset_dir).expanduser().resolve()
    slices = list_slices(root)
    table_path = root / COLOUR_TABLE_NAME
    coding = ColourCoding.from_file(table_path)
    split = split_slices([s.number for s in slices], val_fraction, quality_check, seed, block_size, test_fraction)

    out_dir = Path(out).expanduser().resolve()
    label_dir = out_dir / "labels"
    (out_dir / DATALIST_NAME).unlink(missing_ok=True)
    problems: list[str] = []
    with_unknown: list[tuple[SlicePaths, list[ColourCount]]] = []
    for i, s in enumerate(slices):
        if verbose and i and i % 100 == 0:
            print(f"prepare: [{i}/{len(slices)}] {s.name}", flush=True)
        try:
            _check_pair(s.image, s.segmentation)
            labels, colours = coding.decode(read_rgb_png(s.segmentation, "Segmentation"), str(s.segmentation))
        except VKDataError as e:
            problems.append(str(e))
            continue
        if colours:
            with_unknown.append((s, colours))
        failing = problems or (with_unknown and unknown == "error")
        if not failing:  # after the first problem only scan, so that one error can name every bad file
            atomic_write_bytes(label_dir / f"{s.name}.png", _label_png(labels))

    unknown_lines = [f"'{s.segmentation}': {format_colour_counts(c, limit=3)}" for s, c in with_unknown]
    if with_unknown and unknown == "error":
        problems.append(
            f"{len(with_unknown)} of {len(slices)} segmentation(s) hold colours that are in no row of colour table "
            f"'{table_path}' (expected only its colours or (0, 0, 0) for unlabelled; fix the table or pass "
            f"--unknown-colours background):\n  {_overall_unknown(with_unknown)}\n  " + "\n  ".join(unknown_lines)
        )
    if problems:
        raise VKDataError(
            f"Visible Korean dataset folder '{root}': {len(problems)} problem(s); no datalist written to "
            f"'{out_dir / DATALIST_NAME}':\n" + "\n".join(problems)
        )
    if with_unknown:
        logger.warning(
            "%d of %d segmentation(s) hold colours in no row of colour table '%s'; set to background:\n  %s\n  %s",
            len(with_unknown),
            len(slices),
            table_path,
            _overall_unknown(with_unknown),
            "\n  ".join(unknown_lines),
        )

    by_number = {s.number: s for s in slices}

    def items(numbers: list[int]) -> list[dict[str, str]]:
        return [
            {"image": str(by_number[n].image), "label": str(label_dir / f"{by_number[n].name}.png")} for n in numbers
        ]

    datalist: dict[str, Any] = {
        "description": "Visible Korean bone and muscle label maps with a block-wise test/training/validation split "
        "and a held-out quality-check list; written by python -m common.data.visible_korean prepare.",
        "labels": {str(v): k for k, v in VK_LABELS.items()},
        "dataset_dir": str(root),
        "colour_table_sha256": _colour_table_sha256(table_path),
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "test_fraction": float(test_fraction),
        "block_size": int(block_size),
        "unknown_colours": unknown,
        "files_with_unknown_colours": [s.name for s, _ in with_unknown],
        "num_training": len(split["training"]),
        "num_validation": len(split["validation"]),
        "num_quality_check": len(split["quality_check"]),
        "num_test": len(split["test"]),
        "test": items(split["test"]),
        "training": items(split["training"]),
        "validation": items(split["validation"]),
        "quality_check": items(split["quality_check"]),
    }
    atomic_write_json(out_dir / DATALIST_NAME, datalist)
    if verbose:
        print(
            f"prepare: wrote {len(slices)} label maps to {label_dir} and {out_dir / DATALIST_NAME}: "
            f"{datalist['num_test']} test, {datalist['num_training']} training, "
            f"{datalist['num_validation']} validation, "
            f"{datalist['num_quality_check']} quality-check slices (seed {seed}, blocks of {block_size})",
            flush=True,
        )
    return datalist


def _overall_unknown(with_unknown: Sequence[tuple[SlicePaths, list[ColourCount]]]) -> str:
    total: dict[RGB, int] = {}
    for _, colours in with_unknown:
        for rgb, count in colours:
            total[rgb] = total.get(rgb, 0) + count
    ranked = sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))
    return f"all files together: {format_colour_counts(ranked)}"
