"""Visible Korean (VK) on disk: the dataset folder, its colour table and slice PNGs, the block-wise split, and
the datalists the ``fct_visible_korean`` bundle reads.

On-disk layout (the one :mod:`common.synthetic.visible_korean` writes its phantoms in)::

    DIR/colour_table.csv            one row per structure: structure,group,red,green,blue
    DIR/images/<name>.png           8-bit RGB photograph of one body slice, (H, W, 3)
    DIR/segmentations/<name>.png    8-bit RGB colour-coded segmentation of the same slice, same (H, W);
                                    every structure is filled with its colour, (0, 0, 0) = unlabelled

``<name>`` ends in the slice number (``VK_0000``, ``VK_0001``, ...); it orders the slices along the body, which the
block-wise split needs. The phantoms' ``synthetic_manifest.json`` is not part of the layout and is ignored.

Colour table (:func:`read_colour_table`): a UTF-8 CSV file (an Excel byte-order mark is accepted) whose header
holds the columns ``structure, group, red, green, blue`` (any order; extra columns such as a Korean name are
ignored). ``group`` is ``bone``, ``muscle`` or ``other``; colours are integers 0-255. Structure names and colours
must be unique (two structures sharing a colour cannot be told apart) and (0, 0, 0) is reserved for unlabelled
pixels. Every problem is reported with the file name and its row number (the header is row 1).

Bundle inputs: :func:`load_datalist` reads one list of the prepared ``datalist.json`` for training and evaluation,
:func:`image_datalist` builds the inference list from one photograph or a folder of photographs; both check that
the files exist and name what is missing.

Split (:func:`split_slices`): the seminar trains on 80 % of the slices and validates on 20 %; a validation score
chooses the model, so the bundle first holds out a test share (default 20 %) that no training run and no model
selection sees, and splits the rest 80/20. Adjacent 1 mm slices
are near-duplicates, so a random per-slice split puts a near-copy of almost every validation slice into training
and overstates the scores. Slices are therefore grouped into blocks of ``block_size`` consecutive slice numbers
(default 50, 5 cm of body), the blocks are put in a seed-dependent order (a SHA-256 hash of ``seed`` and block
index, the same on every platform), and the slices are taken in that order: the first ``round(test_fraction * n)``
are the test slices, the next ``quality_check + round(val_fraction * rest)`` are held out for validation and the
quality check, the rest are training. Only slices next
to a block boundary still have a near-duplicate on the other side. ``--block-size 1`` gives the random per-slice
split. The ``quality_check`` slices (default 4: one 2 x 2 figure for a visual check, 0.2 % of the 1702 slices of
the whole-body set) are spread evenly over the held-out slices, so they lie in different blocks, and are excluded
from both training and validation; their neighbours are validation slices, so the network never trained near them.
Use ``--quality-check 0`` to keep every slice for training and validation.

What the colour table's groups become in a label map is :mod:`.transforms`' business, writing the label maps
and the datalist :mod:`.preparation`'s. Nothing here imports MONAI or the phantom generator.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from common.errors import BadInputError

__all__ = [
    "GROUPS",
    "COLOUR_TABLE_NAME",
    "COLOUR_TABLE_COLUMNS",
    "DATALIST_NAME",
    "VKDataError",
    "VKFileNotFoundError",
    "ColourTableEntry",
    "SlicePaths",
    "read_colour_table",
    "read_rgb_png",
    "read_pair",
    "list_slices",
    "split_slices",
    "load_datalist",
    "image_datalist",
]

GROUPS: tuple[str, ...] = ("bone", "muscle", "other")
"""Allowed values of the colour table's ``group`` column."""

COLOUR_TABLE_NAME = "colour_table.csv"
COLOUR_TABLE_COLUMNS: tuple[str, ...] = ("structure", "group", "red", "green", "blue")
DATALIST_NAME = "datalist.json"

DEFAULT_VAL_FRACTION = 0.2
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_QUALITY_CHECK = 4
DEFAULT_BLOCK_SIZE = 50

RGB = tuple[int, int, int]

_SHOWN_PROBLEMS = 20  # colour-table problems listed per message
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale+alpha", 6: "RGBA"}
_LAYOUT = (
    "Expected layout:\n"
    f"  DIR/{COLOUR_TABLE_NAME}            columns {','.join(COLOUR_TABLE_COLUMNS)}\n"
    "  DIR/images/<name>.png           8-bit RGB slice photographs\n"
    "  DIR/segmentations/<name>.png    8-bit RGB colour-coded segmentations, same names and sizes"
)


class VKDataError(BadInputError):
    """A Visible Korean dataset folder, colour table, image or segmentation is not what was expected."""


class VKFileNotFoundError(VKDataError, FileNotFoundError):
    """A Visible Korean dataset folder or file does not exist."""


# ---------------------------------------------------------------------------------------------------------------
# colour table
# ---------------------------------------------------------------------------------------------------------------


class ColourTableEntry(NamedTuple):
    """One structure of the colour table; unpacks as ``group, (r, g, b)``."""

    group: str
    rgb: RGB


_COLOUR_VALUE = re.compile(r"\d{1,3}")


def read_colour_table(path: str | os.PathLike) -> dict[str, ColourTableEntry]:
    """Read and validate a colour table (module docstring): structure name -> ``(group, (r, g, b))``, in file order.

    Raises:
        VKFileNotFoundError: the file does not exist.
        VKDataError: the file is not UTF-8, lacks a column, has no rows, or has rows with a wrong group, a colour
            outside 0-255, a repeated structure name, a colour used twice, or the reserved (0, 0, 0); the message
            names the file and lists every problem with its row number.
    """
    path = Path(path)
    expected = ",".join(COLOUR_TABLE_COLUMNS)
    if not path.is_file():
        raise VKFileNotFoundError(f"Colour table '{path}' does not exist; expected a CSV file with columns {expected}.")
    try:
        text = path.read_text(encoding="utf-8-sig")  # "-sig" drops the byte-order mark spreadsheet programs write
    except UnicodeDecodeError as e:
        raise VKDataError(
            f"Colour table '{path}' is not UTF-8 text ({e}); expected a CSV file with columns {expected}."
        ) from e
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next((row for row in reader if any(cell.strip() for cell in row)), None)
    if header is None:
        raise VKDataError(f"Colour table '{path}' is empty; expected a header row with columns {expected}.")
    header = [cell.strip() for cell in header]
    missing = [c for c in COLOUR_TABLE_COLUMNS if c not in header]
    repeated = sorted({c for c in header if c and header.count(c) > 1})
    if missing or repeated:
        found = ",".join(header)
        what = f"lacks column(s) {', '.join(missing)}" if missing else f"repeats column(s) {', '.join(repeated)}"
        raise VKDataError(
            f"Colour table '{path}' row {reader.line_num}: the header {what}; found '{found}', expected the columns "
            f"{expected} (any order, extra columns are ignored)."
        )
    column = {c: header.index(c) for c in COLOUR_TABLE_COLUMNS}

    table: dict[str, ColourTableEntry] = {}
    row_of_name: dict[str, int] = {}
    owner_of_colour: dict[RGB, tuple[str, int]] = {}
    problems: list[str] = []
    for row in reader:
        row_number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            problems.append(f"row {row_number}: {len(row)} value(s), expected {len(header)} ({','.join(header)})")
            continue
        name, group = row[column["structure"]].strip(), row[column["group"]].strip()
        row_problems = []
        if not name:
            row_problems.append("empty structure name")
        elif name in row_of_name:
            row_problems.append(f"duplicate structure '{name}' (first in row {row_of_name[name]})")
        if group not in GROUPS:
            row_problems.append(f"bad group '{group}', expected one of {', '.join(GROUPS)}")
        channels = []
        for channel in ("red", "green", "blue"):
            value = row[column[channel]].strip()
            if _COLOUR_VALUE.fullmatch(value) and int(value) <= 255:
                channels.append(int(value))
            else:
                row_problems.append(f"{channel} '{value}' is not an integer in 0-255")
        if len(channels) == 3:
            rgb: RGB = (channels[0], channels[1], channels[2])
            if rgb == (0, 0, 0):
                row_problems.append("colour (0, 0, 0) is reserved for unlabelled pixels")
            elif rgb in owner_of_colour:
                other, other_row = owner_of_colour[rgb]
                row_problems.append(
                    f"duplicate colour {rgb}, already used by '{other}' in row {other_row} "
                    "(two structures with one colour cannot be told apart)"
                )
        if row_problems:
            problems.append(f"row {row_number} ('{name}'): " + "; ".join(row_problems))
            continue
        table[name] = ColourTableEntry(group, rgb)
        row_of_name[name] = row_number
        owner_of_colour[rgb] = (name, row_number)
    if problems:
        shown = "\n  ".join(problems[:_SHOWN_PROBLEMS])
        more = f"\n  ... and {len(problems) - _SHOWN_PROBLEMS} more" if len(problems) > _SHOWN_PROBLEMS else ""
        raise VKDataError(f"Colour table '{path}' has {len(problems)} bad row(s):\n  {shown}{more}")
    if not table:
        raise VKDataError(f"Colour table '{path}' has a header but no rows; expected one row per structure.")
    return table


# ---------------------------------------------------------------------------------------------------------------
# image files
# ---------------------------------------------------------------------------------------------------------------


def _png_size(path: Path, what: str) -> tuple[int, int]:
    """``(H, W)`` of an 8-bit RGB PNG, read from its header only.

    The header is checked directly because Pillow silently reads a 16-bit RGB PNG as 8-bit RGB, which would alter
    segmentation colours.
    """
    if not path.is_file():
        raise VKFileNotFoundError(f"{what} '{path}' does not exist; expected an 8-bit RGB PNG file.")
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise VKDataError(f"{what} '{path}' is not a PNG file; expected an 8-bit RGB PNG file.")
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", head[16:26])
    if colour_type != 2 or bit_depth != 8:
        found = f"{bit_depth}-bit {_PNG_COLOUR_TYPES.get(colour_type, f'colour type {colour_type}')}"
        raise VKDataError(f"{what} '{path}' has {found} pixels; expected 8-bit RGB (24-bit colour, no alpha).")
    return height, width


def read_rgb_png(path: str | os.PathLike, what: str = "Image") -> np.ndarray:
    """Read an 8-bit RGB PNG as an ``(H, W, 3)`` uint8 array; ``what`` names the file's role in messages."""
    path = Path(path)
    size = _png_size(path, what)
    try:
        with Image.open(path) as im:
            array = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's errors for truncated or corrupt files
        raise VKDataError(f"{what} '{path}' cannot be decoded ({e}); expected an 8-bit RGB PNG file.") from e
    if array.shape != (*size, 3):
        raise VKDataError(f"{what} '{path}' decodes to shape {array.shape}; its header says {(*size, 3)}.")
    return array


def _check_pair(image: Path, segmentation: Path) -> tuple[int, int]:
    """``(H, W)`` of a slice whose image and segmentation are 8-bit RGB PNGs of the same size (headers only)."""
    image_size, seg_size = _png_size(image, "Image"), _png_size(segmentation, "Segmentation")
    if image_size != seg_size:
        raise VKDataError(
            f"Segmentation '{segmentation}' is {seg_size[0]} x {seg_size[1]} (H x W) but its image '{image}' is "
            f"{image_size[0]} x {image_size[1]}; expected the same size."
        )
    return image_size


def read_pair(image: str | os.PathLike, segmentation: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one slice: photograph and segmentation, both ``(H, W, 3)`` uint8, checked to be RGB and the same size."""
    image, segmentation = Path(image), Path(segmentation)
    _check_pair(image, segmentation)
    return read_rgb_png(image, "Image"), read_rgb_png(segmentation, "Segmentation")


# ---------------------------------------------------------------------------------------------------------------
# dataset folder and split
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlicePaths:
    """The files of one slice.

    Attributes:
        name: file stem shared by image and segmentation, e.g. ``VK_0042``.
        number: the slice number (the trailing digits of ``name``), which orders slices along the body.
        image: the photograph.
        segmentation: the colour-coded segmentation.
    """

    name: str
    number: int
    image: Path
    segmentation: Path


def _pngs(folder: Path) -> dict[str, Path]:
    # hidden files are editor or atomic-write debris, not slices
    return {p.stem: p for p in folder.iterdir() if p.suffix == ".png" and not p.name.startswith(".") and p.is_file()}


def _listing(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def list_slices(dataset_dir: str | os.PathLike) -> list[SlicePaths]:
    """The slices of a VK dataset folder, ordered by slice number.

    Raises:
        VKFileNotFoundError: the folder, its colour table, ``images/`` or ``segmentations/`` is missing (all missing
            parts are named at once), or it holds no PNG slice.
        VKDataError: image and segmentation names do not match, a name has no trailing slice number, or two names
            have the same number.
    """
    root = Path(dataset_dir).expanduser()
    if not root.is_dir():
        state = "is not a folder" if root.exists() else "does not exist"
        raise VKFileNotFoundError(f"Visible Korean dataset folder '{root}' {state}. {_LAYOUT}")
    missing = [
        f"{part}{'/' if part != COLOUR_TABLE_NAME else ''}"
        for part, is_there in (
            (COLOUR_TABLE_NAME, (root / COLOUR_TABLE_NAME).is_file()),
            ("images", (root / "images").is_dir()),
            ("segmentations", (root / "segmentations").is_dir()),
        )
        if not is_there
    ]
    if missing:
        hint = ""
        if any(p.suffix == ".png" for p in root.iterdir()):
            hint = " It holds PNG files itself: pass the folder that contains images/ and segmentations/."
        raise VKFileNotFoundError(
            f"Visible Korean dataset folder '{root}' has no {', '.join(missing)} (found: "
            f"{_listing(sorted(p.name for p in root.iterdir())) or 'nothing'}).{hint} {_LAYOUT}"
        )
    images, segmentations = _pngs(root / "images"), _pngs(root / "segmentations")
    if not images and not segmentations:
        raise VKFileNotFoundError(f"Visible Korean dataset folder '{root}' holds no PNG slices. {_LAYOUT}")
    only_images = sorted(set(images) - set(segmentations))
    only_segmentations = sorted(set(segmentations) - set(images))
    if only_images or only_segmentations:
        parts = []
        if only_images:
            parts.append(f"{len(only_images)} image(s) without a segmentation: {_listing(only_images)}")
        if only_segmentations:
            parts.append(f"{len(only_segmentations)} segmentation(s) without an image: {_listing(only_segmentations)}")
        raise VKDataError(
            f"Visible Korean dataset folder '{root}': images/ and segmentations/ must hold the same file names; "
            f"{'; '.join(parts)}."
        )
    numbers: dict[str, int] = {}
    unnumbered = []
    for name in images:
        match = re.search(r"(\d+)$", name)
        if match is None:
            unnumbered.append(name)
        else:
            numbers[name] = int(match.group(1))
    if unnumbered:
        raise VKDataError(
            f"Visible Korean dataset folder '{root}': slice name(s) {_listing(sorted(unnumbered))} do not end in a "
            "slice number; expected names like VK_0042.png (the number orders the slices along the body)."
        )
    by_number: dict[int, list[str]] = {}
    for name, number in numbers.items():
        by_number.setdefault(number, []).append(name)
    clashes = [" = ".join(sorted(names)) for _, names in sorted(by_number.items()) if len(names) > 1]
    if clashes:
        raise VKDataError(
            f"Visible Korean dataset folder '{root}': different names with the same slice number: {_listing(clashes)}."
        )
    return [
        SlicePaths(name, numbers[name], images[name], segmentations[name])
        for name in sorted(numbers, key=lambda n: numbers[n])
    ]


def _block_order_key(seed: int, block: int) -> str:
    # A keyed hash gives an order that depends only on (seed, block): the same on every platform and NumPy version.
    return hashlib.sha256(f"{seed}:{block}".encode()).hexdigest()


def split_slices(
    numbers: Sequence[int],
    val_fraction: float = DEFAULT_VAL_FRACTION,
    quality_check: int = DEFAULT_QUALITY_CHECK,
    seed: int = 0,
    block_size: int = DEFAULT_BLOCK_SIZE,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> dict[str, list[int]]:
    """Block-wise split of slice numbers into test, training, validation and quality-check slices (module docstring).

    Args:
        numbers: distinct slice numbers.
        val_fraction: fraction of the slices other than the test and quality-check ones that go to validation, in
            (0, 1); rounded half up, at least one slice each for training and validation.
        quality_check: number of held-out slices for visual checks, in neither training nor validation.
        seed: the block order.
        block_size: slices with ``number // block_size`` equal form a block; 1 gives a per-slice random split.
        test_fraction: fraction of all slices held out as test slices, in [0, 1); rounded half up, at least one
            when positive. They are never trained on and never used for model selection.

    Returns:
        ``{"test": [...], "training": [...], "validation": [...], "quality_check": [...]}``, each sorted by slice
        number.
    """
    numbers = sorted(int(n) for n in numbers)
    if len(set(numbers)) != len(numbers):
        raise VKDataError("Slice numbers must be distinct.")
    if not 0 < val_fraction < 1:
        raise VKDataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}.")
    if not 0 <= test_fraction < 1:
        raise VKDataError(f"test_fraction must be in [0, 1), got {test_fraction}.")
    if int(quality_check) != quality_check or quality_check < 0:
        raise VKDataError(f"quality_check must be an integer >= 0, got {quality_check}.")
    if int(block_size) != block_size or block_size < 1:
        raise VKDataError(f"block_size must be an integer >= 1, got {block_size}.")
    quality_check, block_size = int(quality_check), int(block_size)
    n_test = max(math.floor(test_fraction * len(numbers) + 0.5), 1) if test_fraction > 0 else 0
    rest = len(numbers) - n_test - quality_check
    if rest < 2:
        raise VKDataError(
            f"{len(numbers)} slice(s) cannot give {n_test} test and {quality_check} quality-check slice(s) plus at "
            "least one training and one validation slice."
        )
    n_val = min(max(math.floor(val_fraction * rest + 0.5), 1), rest - 1)

    blocks: dict[int, list[int]] = {}
    for n in numbers:
        blocks.setdefault(n // block_size, []).append(n)
    ordered = [n for b in sorted(blocks, key=lambda b: _block_order_key(seed, b)) for n in blocks[b]]
    test, ordered = ordered[:n_test], ordered[n_test:]
    held_out, training = ordered[: quality_check + n_val], ordered[quality_check + n_val :]
    # Evenly spaced over the held-out run, so the quality-check slices come from different blocks.
    qc_index = {int((i + 0.5) * len(held_out) / quality_check) for i in range(quality_check)}
    return {
        "test": sorted(test),
        "training": sorted(training),
        "validation": sorted(n for i, n in enumerate(held_out) if i not in qc_index),
        "quality_check": sorted(held_out[i] for i in qc_index),
    }


# ---------------------------------------------------------------------------------------------------------------
# datalists of the bundle
# ---------------------------------------------------------------------------------------------------------------

_PREPARE_HINT = "python -m common.data.visible_korean prepare --dataset-dir DIR --out DIR"


def load_datalist(path: str | os.PathLike, key: str = "training") -> list[dict[str, str]]:
    """The ``key`` list (``training``, ``validation``, ``test``, ``quality_check``) of a datalist from :func:`prepare`.

    Relative paths are resolved against the datalist's folder (``prepare`` writes absolute ones).

    Raises:
        VKFileNotFoundError: the datalist does not exist (the message gives the ``prepare`` command), or files
            it lists are missing (the first ones are named).
        VKDataError: it is not JSON, lacks ``key``, or ``key`` holds no ``{"image", "label"}`` items.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise VKFileNotFoundError(
            f"Datalist '{path}' does not exist; expected the {DATALIST_NAME} written by `{_PREPARE_HINT}` "
            "(point dataset_dir at its --out folder, or set datalist_file)."
        )
    try:
        datalist = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VKDataError(
            f"Datalist '{path}' is not valid JSON ({e}); expected the output of `{_PREPARE_HINT}`."
        ) from e
    items = datalist.get(key) if isinstance(datalist, dict) else None
    if not isinstance(items, list) or not items:
        found = sorted(k for k, v in datalist.items() if isinstance(v, list)) if isinstance(datalist, dict) else []
        hint = " Re-run prepare (its --test-fraction holds out test slices)." if key == "test" else ""
        raise VKDataError(
            f"Datalist '{path}' has no {key!r} items; expected a non-empty list of {{'image': ..., 'label': ...}} "
            f"under {key!r} (lists found: {', '.join(found) or 'none'}).{hint}"
        )
    resolved, missing = [], []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not {"image", "label"} <= item.keys():
            raise VKDataError(
                f"Datalist '{path}': item {i} of {key!r} is {item!r}; expected {{'image': ..., 'label': ...}}."
            )
        entry = {k: str(path.parent / v) if k in ("image", "label") else v for k, v in item.items()}
        missing += [entry[k] for k in ("image", "label") if not Path(entry[k]).is_file()]
        resolved.append(entry)
    if missing:
        raise VKFileNotFoundError(
            f"Datalist '{path}' lists {len(missing)} file(s) that do not exist: {_listing(missing, 5)}; "
            f"re-run `{_PREPARE_HINT}` if the data moved."
        )
    return resolved


def image_datalist(source: str | os.PathLike) -> list[dict[str, str]]:
    """Inference datalist ``[{"image": path}, ...]`` of one photograph or of every ``*.png`` in a folder (sorted).

    Every file is checked from its header to be an 8-bit RGB PNG, so a wrong input stops here with its name
    rather than deep inside the network.

    Raises:
        VKFileNotFoundError: ``source`` does not exist, or the folder holds no PNG file.
        VKDataError: a file is not an 8-bit RGB PNG.
    """
    source = Path(source).expanduser()
    if source.is_dir():
        images = sorted(_pngs(source).values())
        if not images:
            found = _listing(sorted(p.name for p in source.iterdir())) or "nothing"
            raise VKFileNotFoundError(
                f"Input folder '{source}' holds no PNG slice photographs (found: {found}); expected "
                "8-bit RGB <name>.png files, e.g. the images/ folder of a Visible Korean dataset."
            )
    elif source.is_file():
        images = [source]
    else:
        raise VKFileNotFoundError(
            f"Input '{source}' does not exist; expected an 8-bit RGB PNG photograph or a folder of them."
        )
    for image in images:
        _png_size(image, "Image")
    return [{"image": str(image)} for image in images]
