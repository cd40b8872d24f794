"""BraTS on-disk layouts: naming conventions, datalists, k-fold split files and label conventions.

Two file-naming conventions are in use for the BraTS glioma training data:

======================  ===============================================  ==================================
convention              case folder / files                              labels
======================  ===============================================  ==================================
``brats2021``           ``BraTS2021_00000/BraTS2021_00000_<m>.nii.gz``   0, 1 NCR, 2 ED, **4 ET**
                        ``<m>`` in ``t1, t1ce, t2, flair, seg``
``brats2023``           ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-<m>``  0, 1 NCR, 2 ED, **3 ET**
                        ``.nii.gz``, ``<m>`` in ``t1n, t1c, t2w, t2f,``
                        ``seg``
======================  ===============================================  ==================================

Detection looks at the files inside each case folder (``<folder><sep><suffix>.nii[.gz]``), not at the folder
names, so the BraTS 2018-2020 training sets (``BraTS20_Training_001/BraTS20_Training_001_flair.nii.gz``, ET=4)
are read as ``brats2021`` too.

Modalities are always named in the 2021 vocabulary (``t1, t1ce, t2, flair``); the 2023 file suffixes
(``t1n, t1c, t2w, t2f``) are accepted as aliases and are what is looked up on disk for 2023 data.

Label helpers complement MONAI, which already has the forward direction
(:class:`monai.transforms.ConvertToMultiChannelBasedOnBratsClassesd`, label map -> TC/WT/ET with ``et_label`` 4 or 3):

- :class:`RegionsToBratsLabelsd`: TC/WT/ET channels -> one BraTS label map (the last post-processing step);
- :class:`ConvertBratsLabelsd`: ``brats2021`` {0,1,2,4} <-> ``brats2023`` {0,1,2,3} <-> ``index`` {0,1,2,3}
  (contiguous class indices for softmax networks);
- :class:`CheckBratsLabelsd`: stops with the file name when a label map holds values of another convention,
  which MONAI's converter would otherwise drop silently (ET=3 data read with ``et_label=4`` has no ET).

Split files follow MONAI research-contributions' SwinUNETR ``brats21_folds.json``
(``{"training": [{"fold": k, "image": [...], "label": ...}, ...]}``, paths relative to the dataset folder) and add
a ``testing`` list of held-out cases (20 % by default; never trained on, never used for model selection) and the
keys ``convention``, ``et_label``, ``modalities``, ``num_folds``, ``seed`` and ``test_fraction``. :func:`read_split`
reads both this format and the MTCM-KD authors' ``folds_data.json``. Command line::

    python -m common.data.brats make-split --dataset-dir /data/BraTS2021 --out /data/brats_folds.json --folds 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type

from common.errors import BadInputError
from common.io import atomic_write_json

__all__ = [
    "BRATS_2021",
    "BRATS_2023",
    "BRATS_CONVENTIONS",
    "DEFAULT_MODALITIES",
    "DEFAULT_TEST_FRACTION",
    "LABEL_CONVENTIONS",
    "BratsConvention",
    "BratsDataError",
    "BratsFileNotFoundError",
    "BratsLabelError",
    "CheckBratsLabels",
    "CheckBratsLabelsd",
    "ConvertBratsLabels",
    "ConvertBratsLabelsd",
    "RegionsToBratsLabels",
    "RegionsToBratsLabelsd",
    "brats_datalist",
    "case_name_formatter",
    "check_brats_labels",
    "convert_brats_labels",
    "detect_convention",
    "load_fold",
    "make_folds",
    "read_split",
    "regions_to_brats_labels",
    "write_split_file",
]

# ---------------------------------------------------------------------------------------------------------------
# naming conventions
# ---------------------------------------------------------------------------------------------------------------

#: Canonical modality names (BraTS 2021 vocabulary) in the channel order the COHRA-UNet bundle stacks.
DEFAULT_MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

# 2023 file suffixes accepted as modality names; they map onto the canonical (2021) names.
_MODALITY_ALIASES = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair"}

_IMAGE_EXTENSIONS = (".nii.gz", ".nii")  # BraTS ships .nii.gz; some users decompress the archive

#: Share of the cases a new split file holds out as its ``testing`` list (never trained on, never used for selection).
DEFAULT_TEST_FRACTION = 0.2


class BratsDataError(BadInputError):
    """A BraTS dataset folder, split file or label map is not what was expected."""


class BratsFileNotFoundError(BratsDataError, FileNotFoundError):
    """A BraTS dataset folder or case file does not exist."""


class BratsLabelError(BratsDataError):
    """A label map holds values outside its BraTS label convention."""


@dataclass(frozen=True)
class BratsConvention:
    """One BraTS file-naming and label convention.

    Args:
        name: short id used in split files and configs, ``"brats2021"`` or ``"brats2023"``.
        title: human-readable name for messages.
        case_example: an example case folder name.
        separator: the character between the case id and the file suffix.
        modality_suffixes: ``(canonical modality, file suffix)`` pairs, canonical names in the 2021 vocabulary.
        label_suffix: file suffix of the segmentation.
        et_label: label value of the enhancing tumour (4 up to BraTS 2022, 3 from BraTS 2023 on).
    """

    name: str
    title: str
    case_example: str
    separator: str
    modality_suffixes: tuple[tuple[str, str], ...]
    label_suffix: str
    et_label: int

    @property
    def suffixes(self) -> dict[str, str]:
        """Canonical modality name -> file suffix."""
        return dict(self.modality_suffixes)

    @property
    def label_values(self) -> tuple[int, ...]:
        """The values a label map of this convention may hold: background, NCR, ED, ET."""
        return (0, 1, 2, self.et_label)

    def file_name(self, case: str, suffix: str, ext: str = ".nii.gz") -> str:
        """File name of ``suffix`` (a file suffix such as ``"t2f"`` or ``"seg"``) in the folder of ``case``."""
        return f"{case}{self.separator}{suffix}{ext}"

    def pattern(self, case: str | None = None) -> str:
        """Expected file names, e.g. ``BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz``."""
        all_suffixes = ",".join([s for _, s in self.modality_suffixes] + [self.label_suffix])
        return f"{case or self.case_example}{self.separator}{{{all_suffixes}}}.nii.gz"

    def describe(self) -> str:
        """One line for error messages: case folder, file pattern and ET label."""
        return (
            f"{self.title}: case folders like '{self.case_example}' "
            f"holding '{self.pattern()}', ET label {self.et_label}"
        )


BRATS_2021 = BratsConvention(
    name="brats2021",
    title="BraTS 2021 (also 2018-2020 file naming)",
    case_example="BraTS2021_00000",
    separator="_",
    modality_suffixes=(("t1", "t1"), ("t1ce", "t1ce"), ("t2", "t2"), ("flair", "flair")),
    label_suffix="seg",
    et_label=4,
)
BRATS_2023 = BratsConvention(
    name="brats2023",
    title="BraTS 2023 glioma",
    case_example="BraTS-GLI-00000-000",
    separator="-",
    modality_suffixes=(("t1", "t1n"), ("t1ce", "t1c"), ("t2", "t2w"), ("flair", "t2f")),
    label_suffix="seg",
    et_label=3,
)
BRATS_CONVENTIONS: dict[str, BratsConvention] = {c.name: c for c in (BRATS_2021, BRATS_2023)}

#: Label values of each label convention; ``index`` is the contiguous class index of a 4-class softmax network.
LABEL_CONVENTIONS: dict[str, tuple[int, ...]] = {
    BRATS_2021.name: BRATS_2021.label_values,
    BRATS_2023.name: BRATS_2023.label_values,
    "index": (0, 1, 2, 3),
}


def _expected_layouts() -> str:
    return "Expected one of:\n" + "\n".join(f"  - {c.describe()}" for c in BRATS_CONVENTIONS.values())


def _as_convention(convention: str | BratsConvention) -> BratsConvention:
    if isinstance(convention, BratsConvention):
        return convention
    if convention not in BRATS_CONVENTIONS:
        raise BratsDataError(f"Unknown BraTS convention {convention!r}; expected one of {sorted(BRATS_CONVENTIONS)}.")
    return BRATS_CONVENTIONS[convention]


def _canonical_modalities(modalities: Sequence[str]) -> list[str]:
    if isinstance(modalities, str):  # a bare string would be iterated character by character
        modalities = [modalities]
    if len(modalities) == 0:
        raise BratsDataError("No modalities given; expected a subset of ('t1', 't1ce', 't2', 'flair').")
    canonical = []
    for m in modalities:
        key = str(m).lower()
        key = _MODALITY_ALIASES.get(key, key)
        if key not in DEFAULT_MODALITIES:
            raise BratsDataError(
                f"Unknown BraTS modality {m!r}; expected one of {DEFAULT_MODALITIES} "
                f"(or the BraTS 2023 names {tuple(_MODALITY_ALIASES)})."
            )
        canonical.append(key)
    return canonical


def _existing_dir(dataset_dir: str | os.PathLike) -> Path:
    root = Path(dataset_dir).expanduser()
    if not root.exists():
        raise BratsFileNotFoundError(f"BraTS dataset folder '{root}' does not exist. {_expected_layouts()}")
    if not root.is_dir():
        raise BratsFileNotFoundError(f"BraTS dataset path '{root}' is not a folder. {_expected_layouts()}")
    return root


def _case_dirs(root: Path) -> list[Path]:
    # hidden folders and archive debris such as __MACOSX are not cases
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def _find_case_file(case_dir: Path, convention: BratsConvention, suffix: str) -> Path | None:
    for ext in _IMAGE_EXTENSIONS:
        candidate = case_dir / convention.file_name(case_dir.name, suffix, ext)
        if candidate.is_file():
            return candidate
    return None


def _classify_case_dir(case_dir: Path) -> BratsConvention | None:
    """The convention whose file names appear in ``case_dir`` (any one modality or the seg suffices)."""
    names = set(os.listdir(case_dir))
    for conv in BRATS_CONVENTIONS.values():
        for suffix in [s for _, s in conv.modality_suffixes] + [conv.label_suffix]:
            if any(conv.file_name(case_dir.name, suffix, ext) in names for ext in _IMAGE_EXTENSIONS):
                return conv
    return None


def detect_convention(dataset_dir: str | os.PathLike) -> BratsConvention:
    """Detect the BraTS naming convention of a dataset folder that holds one sub-folder per case.

    Every non-hidden sub-folder must be a case folder of the same convention; a folder is recognised by its
    files being named ``<folder name><separator><suffix>.nii[.gz]``.

    Args:
        dataset_dir: the folder holding the case folders.

    Returns:
        :data:`BRATS_2021` or :data:`BRATS_2023`.

    Raises:
        BratsFileNotFoundError: the folder does not exist or holds no case folder.
        BratsDataError: a sub-folder follows no known naming, or the folder mixes both conventions.
    """
    root = _existing_dir(dataset_dir)
    case_dirs = _case_dirs(root)
    if not case_dirs:
        hint = ""
        if _classify_case_dir(root) is not None:
            hint = f" '{root}' looks like a single case folder; pass the folder that contains the case folders."
        raise BratsFileNotFoundError(
            f"BraTS dataset folder '{root}' holds no case folders.{hint} {_expected_layouts()}"
        )

    found: dict[str, list[Path]] = {name: [] for name in BRATS_CONVENTIONS}
    unknown: list[Path] = []
    for case_dir in case_dirs:
        conv = _classify_case_dir(case_dir)
        (found[conv.name] if conv is not None else unknown).append(case_dir)

    if unknown:
        first = unknown[0]
        held = sorted(os.listdir(first))[:5]
        hint = ""
        if not any(found.values()) and any(_classify_case_dir(p) for p in _case_dirs(first)):
            hint = f" '{first}' itself holds case folders: pass it as the dataset folder."
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise BratsDataError(
            f"Folder '{first}'{more} in BraTS dataset folder '{root}' follows no known BraTS naming "
            f"(it holds {held or 'nothing'}).{hint} For this folder the expected files are "
            f"'{BRATS_2021.pattern(first.name)}' or '{BRATS_2023.pattern(first.name)}'. {_expected_layouts()}"
        )
    present = [name for name, dirs in found.items() if dirs]
    if len(present) > 1:
        examples = ", ".join(f"{BRATS_CONVENTIONS[n].title}: '{found[n][0].name}'" for n in present)
        raise BratsDataError(
            f"BraTS dataset folder '{root}' mixes naming conventions ({examples}); keep one convention per "
            f"dataset folder. {_expected_layouts()}"
        )
    return BRATS_CONVENTIONS[present[0]]


def brats_datalist(
    dataset_dir: str | os.PathLike,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    with_label: bool = True,
    convention: str | BratsConvention | None = None,
) -> list[dict[str, Any]]:
    """List the cases of a BraTS dataset folder as MONAI dictionary items.

    Each item is ``{"image": [one path per modality, in the order of modalities], "label": seg path, "case": id}``
    (no ``"label"`` when ``with_label`` is False), sorted by case id. ``LoadImaged(keys="image")`` stacks the list
    into channels in that order, so ``modalities`` IS the channel order of the network input.

    The default order is (T1, T1ce, T2, FLAIR), the order the COHRA-UNet bundle stacks; the MTCM-KD bundle passes
    ``("flair", "t1ce", "t2", "t1")`` to match the lab's teacher/student channel indices.

    Args:
        dataset_dir: folder with one sub-folder per case.
        modalities: modality names in the 2021 vocabulary (``t1, t1ce, t2, flair``); on BraTS 2023 data they are
            looked up as ``t1n, t1c, t2w, t2f``. The 2023 names are accepted too.
        with_label: also require and list the ``seg`` file.
        convention: skip detection and use this convention (``"brats2021"``, ``"brats2023"`` or an instance).

    Raises:
        BratsFileNotFoundError: a case folder lacks a requested modality or its seg; the message names every
            missing file (up to ten) and the expected file names.
        BratsDataError: see :func:`detect_convention`.
    """
    canonical = _canonical_modalities(modalities)
    root = _existing_dir(dataset_dir)
    conv = detect_convention(root) if convention is None else _as_convention(convention)
    suffixes = conv.suffixes
    wanted = [suffixes[m] for m in canonical] + ([conv.label_suffix] if with_label else [])

    items: list[dict[str, Any]] = []
    missing: list[str] = []
    for case_dir in _case_dirs(root):
        case = case_dir.name
        paths = {}
        for suffix in wanted:
            path = _find_case_file(case_dir, conv, suffix)
            if path is None:
                missing.append(f"'{case_dir / conv.file_name(case, suffix)}'")
            else:
                paths[suffix] = str(path)
        if len(paths) == len(wanted):
            item: dict[str, Any] = {"image": [paths[suffixes[m]] for m in canonical]}
            if with_label:
                item["label"] = paths[conv.label_suffix]
            item["case"] = case
            items.append(item)

    if missing:
        shown = "\n  ".join(missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise BratsFileNotFoundError(
            f"BraTS dataset folder '{root}' ({conv.title}) is missing {len(missing)} file(s):\n  {shown}{more}\n"
            f"Each case folder <case> must hold '{conv.pattern('<case>')}' (requested: {', '.join(wanted)})."
        )
    if not items:
        raise BratsFileNotFoundError(f"BraTS dataset folder '{root}' holds no case folders. {_expected_layouts()}")
    return items


# ---------------------------------------------------------------------------------------------------------------
# k-fold split files
# ---------------------------------------------------------------------------------------------------------------


def _fold_order_key(seed: int, case: str) -> str:
    # A keyed hash gives an order that depends only on (seed, case id): the same on every platform and Python or
    # NumPy version, and adding or removing a case moves no other case to a different rank among the rest.
    return hashlib.sha256(f"{seed}:{case}".encode()).hexdigest()


def make_folds(
    dataset_dir: str | os.PathLike,
    folds: int = 5,
    seed: int = 0,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    with_label: bool = True,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> dict[str, Any]:
    """Hold out a test set of a BraTS dataset folder and assign every other case to one of ``folds`` folds.

    The shuffle is deterministic: cases are ordered by ``sha256(f"{seed}:{case_id}")``; the first
    ``round(test_fraction * cases)`` of that order (at least one when ``test_fraction > 0``) form the held-out
    ``testing`` list, which no training run and no model selection sees, and the i-th of the others goes to fold
    ``i % folds``, so fold sizes differ by at most one and the same seed gives the same split on any machine.

    Returns:
        the split dictionary written by :func:`write_split_file` (paths relative to ``dataset_dir``, POSIX
        separators)::

            {"convention": "brats2021", "et_label": 4, "modalities": ["t1", "t1ce", "t2", "flair"],
             "num_folds": 5, "seed": 0,
             "training": [{"fold": 0, "case": "BraTS2021_00000",
                           "image": ["BraTS2021_00000/BraTS2021_00000_t1.nii.gz", ...],
                           "label": "BraTS2021_00000/BraTS2021_00000_seg.nii.gz"}, ...]}

        ``training`` is sorted by fold, then case id; ``testing`` (MONAI's datalist key for test cases) by case id
        and has no ``fold``.
    """
    if int(folds) != folds or folds < 2:
        raise BratsDataError(f"folds must be an integer >= 2, got {folds!r}.")
    if not 0 <= test_fraction < 1:
        raise BratsDataError(f"test_fraction must be in [0, 1), got {test_fraction!r}.")
    root = _existing_dir(dataset_dir)
    conv = detect_convention(root)
    canonical = _canonical_modalities(modalities)
    items = brats_datalist(root, canonical, with_label=with_label, convention=conv)
    n_test = max(math.floor(test_fraction * len(items) + 0.5), 1) if test_fraction > 0 else 0
    if len(items) - n_test < folds:
        raise BratsDataError(
            f"BraTS dataset folder '{root}' holds {len(items)} case(s): after {n_test} held-out test case(s), fewer "
            f"than {folds} folds."
        )

    def entry(item: dict[str, Any]) -> dict[str, Any]:
        images = [Path(p).relative_to(root).as_posix() for p in item["image"]]
        out: dict[str, Any] = {"case": item["case"], "image": images}
        if with_label:
            out["label"] = Path(item["label"]).relative_to(root).as_posix()
        return out

    order = sorted(items, key=lambda it: _fold_order_key(seed, it["case"]))
    testing = sorted((entry(item) for item in order[:n_test]), key=lambda e: e["case"])
    training = [{"fold": rank % folds, **entry(item)} for rank, item in enumerate(order[n_test:])]
    training.sort(key=lambda e: (e["fold"], e["case"]))
    return {
        "description": f"{folds}-fold cross-validation split of a {conv.title} dataset folder with {n_test} held-out "
        "test case(s); paths are relative to the dataset folder.",
        "convention": conv.name,
        "et_label": conv.et_label,
        "modalities": canonical,
        "num_folds": int(folds),
        "seed": int(seed),
        "test_fraction": float(test_fraction),
        "training": training,
        "testing": testing,
    }


def write_split_file(
    dataset_dir: str | os.PathLike,
    out: str | os.PathLike,
    folds: int = 5,
    seed: int = 0,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    with_label: bool = True,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> dict[str, Any]:
    """Make a k-fold split of ``dataset_dir`` (see :func:`make_folds`) and write it atomically to ``out`` as JSON.

    Returns:
        the split dictionary that was written.
    """
    split = make_folds(dataset_dir, folds, seed, modalities, with_label, test_fraction)
    atomic_write_json(Path(out).expanduser(), split)
    return split


def _read_split_json(path: Path) -> Any:
    if not path.is_file():
        raise BratsFileNotFoundError(
            f"Split file '{path}' does not exist; make one with "
            "'python -m common.data.brats make-split --dataset-dir D --out F'."
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BratsDataError(f"Split file '{path}' is not valid JSON: {e}") from e


def _absolute_items(
    entries: Sequence[Mapping[str, Any]], root: Path, split_path: Path, check_files: bool
) -> list[dict[str, Any]]:
    """Split-file entries with absolute paths; with ``check_files``, one error naming up to ten missing files."""
    items, missing = [], []
    for entry in entries:
        item = dict(entry)
        images = [entry["image"]] if isinstance(entry["image"], str) else entry["image"]
        item["image"] = [os.path.abspath(os.path.join(root, p)) for p in images]
        if "label" in entry:
            item["label"] = os.path.abspath(os.path.join(root, entry["label"]))
        if check_files:
            missing += [p for p in item["image"] + [item.get("label")] if p is not None and not os.path.isfile(p)]
        items.append(item)
    if missing:
        shown = "\n  ".join(f"'{p}'" for p in missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise BratsFileNotFoundError(
            f"{len(missing)} file(s) listed in split file '{split_path}' are missing under dataset folder "
            f"'{root}':\n  {shown}{more}\nIs --dataset-dir the folder the split was made from?"
        )
    return items


def load_fold(
    split_file: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    fold: int,
    check_files: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Read a split file and return ``(train_items, val_items)`` for ``fold`` with absolute paths.

    Validation items are those of ``fold``; training items are all others of the ``training`` list (a ``testing``
    list is never among them). Items keep their ``fold`` and ``case`` keys. Any file written in the SwinUNETR
    ``brats21_folds.json`` format is accepted.

    Args:
        split_file: JSON split file (see :func:`make_folds`).
        dataset_dir: the folder the relative paths in the split file start from.
        fold: the validation fold.
        check_files: stop with one message listing missing files (up to ten) before any training starts.

    Raises:
        BratsFileNotFoundError: the split file, the dataset folder or (with ``check_files``) a listed file is
            missing.
        BratsDataError: the split file is not valid JSON of the expected format or has no fold ``fold``.
    """
    split_path = Path(split_file).expanduser()
    fold = int(fold)  # config and command-line values may arrive as strings
    split = _read_split_json(split_path)
    entries = split.get("training") if isinstance(split, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "fold" in e and "image" in e for e in entries):
        raise BratsDataError(
            f"Split file '{split_path}' is not a fold file: expected "
            '{"training": [{"fold": k, "image": [...], "label": ...}, ...]}.'
        )
    root = _existing_dir(dataset_dir)
    present = sorted({int(e["fold"]) for e in entries})
    if fold not in present:
        raise BratsDataError(f"Split file '{split_path}' has no fold {fold}; its folds are {present}.")
    items = _absolute_items(entries, root, split_path, check_files)
    return [i for i in items if int(i["fold"]) != fold], [i for i in items if int(i["fold"]) == fold]


_AUTHORS_KEYS = ("train_samples", "valid_samples")


def read_split(
    split_file: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    fold: int,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    test_fold: int | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train_items, val_items, test_items)`` of a split file in the repository's or the MTCM-KD authors' format.

    This is the one reader the BraTS bundles' configs call. ``fold`` is the validation fold (model selection). The
    held-out test cases are the file's ``testing`` list (:func:`make_folds` writes one); for a file without one
    (SwinUNETR's ``brats21_folds.json``, older split files) ``test_fold`` may name a fold to hold out instead: its
    cases are left out of training and returned as test items. Without either, ``test_items`` is ``[]``. Folds
    count from 0 in the file's fold order; negative values count from the last (``-1``: the last).

    - The repository's format (``python -m common.data.brats make-split``; an object with a ``training`` list) is
      read by :func:`load_fold`. Its ``modalities``, when recorded, must equal ``modalities``: they are the channel
      order the networks are trained on.
    - The authors' ``data_splits/folds_data.json`` (RhineLT/mtcm-kd) is a list with one
      ``{"train_samples": [case ids], "valid_samples": [case ids]}`` object per fold, without test cases. The cases
      are looked up in ``dataset_dir`` (:func:`brats_datalist`, either BraTS naming) and their images stacked in the
      order of ``modalities``.

    Items are ``{"image": [one path per modality], "label": path, "case": id, ...}``.

    Raises:
        BratsFileNotFoundError: the split file or a listed case is missing (up to ten are named).
        BratsDataError: the file is neither format, has no such fold, records other modalities, holds a ``testing``
            list and a ``test_fold`` is given too, or the test fold is the validation fold.
    """
    path = Path(split_file).expanduser()
    modalities = list(modalities)
    split = _read_split_json(path)
    testing: list[dict[str, Any]] = []
    if isinstance(split, dict):
        recorded = split.get("modalities")
        if recorded is not None and list(recorded) != modalities:
            raise BratsDataError(
                f"Split file '{path}' stacks the modalities {list(recorded)}, but this bundle's channels are "
                f"{modalities}; remake it with --modalities {' '.join(modalities)}."
            )
        entries = split.get("training")
        folds = sorted({int(e["fold"]) for e in entries if isinstance(e, dict) and "fold" in e}) if entries else []
        if split.get("testing"):
            if test_fold is not None:
                raise BratsDataError(
                    f"Split file '{path}' holds a 'testing' list of held-out cases; test_fold is only for files "
                    "without one. Leave test_fold unset (null)."
                )
            testing = _absolute_items(split["testing"], _existing_dir(dataset_dir), path, check_files=True)

        def fold_items(k: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            return load_fold(path, dataset_dir, k)

    else:
        authors_format = isinstance(split, list) and all(
            isinstance(entry, dict) and all(isinstance(entry.get(k), list) for k in _AUTHORS_KEYS) for entry in split
        )
        if not authors_format or not split:
            raise BratsDataError(
                f"Split file '{path}' is in neither known format: expected the repository's "
                '{"training": [{"fold": k, "image": [...], "label": ...}, ...]} or the MTCM-KD authors\' '
                '[{"train_samples": [case ids], "valid_samples": [case ids]}, ...] (one object per fold).'
            )
        folds = list(range(len(split)))
        cases = {item["case"]: item for item in brats_datalist(dataset_dir, modalities)}

        def fold_items(k: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            wanted = [split[k][key] for key in _AUTHORS_KEYS]
            missing = [case for ids in wanted for case in ids if case not in cases]
            if missing:
                shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
                raise BratsFileNotFoundError(
                    f"Split file '{path}' lists {len(missing)} case(s) of fold {k} that are not case folders of "
                    f"'{dataset_dir}': {shown}."
                )
            return [dict(cases[c]) for c in wanted[0]], [dict(cases[c]) for c in wanted[1]]

    def resolve(k: int, what: str) -> int:
        k = int(k)  # config and command-line values may arrive as strings
        if not folds or not -len(folds) <= k < len(folds):
            raise BratsDataError(f"Split file '{path}' has folds {folds}; got {what} {k}.")
        return folds[k]

    fold = resolve(fold, "fold")
    train, val = fold_items(fold)
    if test_fold is None:
        return train, val, testing
    test_fold = resolve(test_fold, "test_fold")
    if test_fold == fold:
        raise BratsDataError(
            f"test_fold {test_fold} is the validation fold of split file '{path}'; hold out another fold."
        )
    test = fold_items(test_fold)[1]
    held_out = {item["case"] for item in test}
    return [item for item in train if item["case"] not in held_out], val, test


# ---------------------------------------------------------------------------------------------------------------
# label conventions
# ---------------------------------------------------------------------------------------------------------------


def _label_values(convention: str | BratsConvention) -> tuple[int, ...]:
    if isinstance(convention, BratsConvention):
        return convention.label_values
    if convention not in LABEL_CONVENTIONS:
        raise BratsDataError(
            f"Unknown BraTS label convention {convention!r}; expected one of {sorted(LABEL_CONVENTIONS)}."
        )
    return LABEL_CONVENTIONS[convention]


def _convention_name(convention: str | BratsConvention) -> str:
    return convention.name if isinstance(convention, BratsConvention) else convention


def _source_name(label: Any, fallback: str | None) -> str:
    if isinstance(label, MetaTensor):
        name = label.meta.get("filename_or_obj")
        if name:
            return str(name)
    return fallback or "<label map without file name>"


def _unique_values(label: NdarrayOrTensor) -> list[float]:
    values = torch.unique(label.detach()) if isinstance(label, torch.Tensor) else np.unique(np.asarray(label))
    return [float(v) for v in values.tolist()]


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(str(int(v)) if float(v).is_integer() else repr(v) for v in values) + "]"


def check_brats_labels(
    label: NdarrayOrTensor, convention: str | BratsConvention = "brats2021", name: str | None = None
) -> None:
    """Raise :class:`BratsLabelError` unless every value of ``label`` belongs to ``convention``.

    Args:
        label: a label map of any shape (numpy array, tensor or MetaTensor).
        convention: ``"brats2021"`` {0,1,2,4}, ``"brats2023"`` {0,1,2,3} or ``"index"`` {0,1,2,3}.
        name: what to call the label map in the message when it carries no ``filename_or_obj`` meta data.
    """
    allowed = _label_values(convention)
    found = _unique_values(label)
    unexpected = [v for v in found if v not in allowed]
    if not unexpected:
        return
    matches = [
        c
        for c, vals in LABEL_CONVENTIONS.items()
        if c != "index" and c != _convention_name(convention) and all(v in vals for v in found)
    ]
    hint = f" The values fit the {matches[0]} convention: is the dataset or et_label set right?" if matches else ""
    raise BratsLabelError(
        f"Label map '{_source_name(label, name)}' holds values {_fmt(found)}, but the "
        f"{_convention_name(convention)} convention allows only {_fmt(allowed)} "
        f"(unexpected: {_fmt(unexpected)}).{hint}"
    )


def convert_brats_labels(
    label: NdarrayOrTensor,
    source: str | BratsConvention,
    target: str | BratsConvention,
    name: str | None = None,
) -> NdarrayOrTensor:
    """Map a label map between BraTS label conventions, keeping its type, dtype and meta data.

    ``brats2021`` {0, 1, 2, 4}, ``brats2023`` {0, 1, 2, 3} and ``index`` {0, 1, 2, 3} (the class index of a
    4-class softmax network: 0 background, 1 NCR, 2 ED, 3 ET) differ only in the ET value. The values are checked
    against ``source`` first (see :func:`check_brats_labels`), so a wrong source convention stops with a message
    instead of producing a label map without ET.
    """
    check_brats_labels(label, source, name)
    src_et, dst_et = _label_values(source)[3], _label_values(target)[3]
    if src_et == dst_et:
        return label
    if isinstance(label, torch.Tensor):
        return torch.where(label == src_et, torch.as_tensor(dst_et, dtype=label.dtype, device=label.device), label)
    out = np.where(np.asarray(label) == src_et, dst_et, label)
    return out.astype(np.asarray(label).dtype, copy=False)


def regions_to_brats_labels(
    regions: NdarrayOrTensor, et_label: int = 4, dtype: DtypeLike | torch.dtype = torch.float32
) -> NdarrayOrTensor:
    """Turn binary TC/WT/ET channels into one BraTS label map.

    ET -> ``et_label``, TC minus ET -> 1 (NCR), WT minus TC -> 2 (ED), elsewhere 0. ET wins where regions are
    inconsistent (an ET voxel outside TC still gets ``et_label``), as in MONAI's brats_mri_segmentation bundle.

    Args:
        regions: ``(3, *spatial)``, channels TC, WT, ET, as produced by
            ``ConvertToMultiChannelBasedOnBratsClasses`` or by thresholding sigmoid outputs; values > 0.5 count
            as inside a region (bool, 0/1 or probabilities).
        et_label: 4 for BraTS 2018-2022 (brats2021 convention), 3 for BraTS 2023.
        dtype: output dtype.

    Returns:
        ``(1, *spatial)`` label map of the input's type; a MetaTensor input keeps its meta data.
    """
    if et_label in (0, 1, 2):
        raise BratsDataError(f"et_label must not be 0, 1 or 2 (background, NCR and ED), got {et_label}.")
    if regions.ndim < 2 or regions.shape[0] != 3:
        raise BratsDataError(
            f"Expected TC/WT/ET regions of shape (3, *spatial), got {tuple(regions.shape)}; "
            "apply per item (after decollation), not to a batch."
        )
    x = regions.as_tensor() if isinstance(regions, MetaTensor) else torch.as_tensor(regions)
    if x.dtype == torch.bool:
        inside = x
    else:
        inside = x > 0.5
    out = torch.zeros(x.shape[1:], dtype=torch.float32, device=x.device)
    # paint from the outermost region inwards so inner regions override outer ones
    out[inside[1]] = 2
    out[inside[0]] = 1
    out[inside[2]] = et_label
    result, *_ = convert_to_dst_type(out[None], regions, dtype=dtype)
    return result


class CheckBratsLabels(Transform):
    """Stop with the file name when a label map holds values outside its BraTS label convention.

    Args:
        convention: ``"brats2021"``, ``"brats2023"`` or ``"index"``.
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, convention: str | BratsConvention = "brats2021") -> None:
        _label_values(convention)
        self.convention = convention

    def __call__(self, label: NdarrayOrTensor, name: str | None = None) -> NdarrayOrTensor:
        check_brats_labels(label, self.convention, name)
        return label


class ConvertBratsLabels(Transform):
    """Map a label map from one BraTS label convention to another (see :func:`convert_brats_labels`).

    Args:
        source: convention of the input, ``"brats2021"``, ``"brats2023"`` or ``"index"``.
        target: convention of the output.
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, source: str | BratsConvention = "brats2021", target: str | BratsConvention = "index") -> None:
        _label_values(source)
        _label_values(target)
        self.source = source
        self.target = target

    def __call__(self, label: NdarrayOrTensor, name: str | None = None) -> NdarrayOrTensor:
        return convert_brats_labels(label, self.source, self.target, name)


class RegionsToBratsLabels(Transform):
    """Array version of :class:`RegionsToBratsLabelsd` (see :func:`regions_to_brats_labels`)."""

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, et_label: int = 4, dtype: DtypeLike | torch.dtype = torch.float32) -> None:
        if et_label in (0, 1, 2):
            raise BratsDataError(f"et_label must not be 0, 1 or 2 (background, NCR and ED), got {et_label}.")
        self.et_label = et_label
        self.dtype = dtype

    def __call__(self, regions: NdarrayOrTensor) -> NdarrayOrTensor:
        return regions_to_brats_labels(regions, self.et_label, self.dtype)


def _name_in_dict(d: Mapping[Hashable, Any], key: Hashable) -> str:
    meta = d.get(f"{key}_meta_dict")
    if isinstance(meta, Mapping) and meta.get("filename_or_obj"):
        return str(meta["filename_or_obj"])
    return f"data[{key!r}]"


class CheckBratsLabelsd(MapTransform):
    """Dictionary version of :class:`CheckBratsLabels`; the data pass through unchanged.

    Put it right after ``LoadImaged`` so that a BraTS 2023 label (ET=3) given to a 2021 pipeline (ET=4) stops with
    the file name instead of training without ET.

    Args:
        keys: keys of the label maps.
        convention: ``"brats2021"``, ``"brats2023"`` or ``"index"``.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self, keys: KeysCollection, convention: str | BratsConvention = "brats2021", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.checker = CheckBratsLabels(convention)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.checker(d[key], _name_in_dict(d, key))
        return d


class ConvertBratsLabelsd(MapTransform):
    """Dictionary version of :class:`ConvertBratsLabels`.

    Typical uses: ``source="brats2021", target="index"`` before a 4-class softmax loss on BraTS 2021 labels, and
    ``source="index", target="brats2021"`` on the argmax of the prediction before saving.

    Args:
        keys: keys of the label maps.
        source: convention of the input, ``"brats2021"``, ``"brats2023"`` or ``"index"``.
        target: convention of the output.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        source: str | BratsConvention = "brats2021",
        target: str | BratsConvention = "index",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ConvertBratsLabels(source, target)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key], _name_in_dict(d, key))
        return d


class RegionsToBratsLabelsd(MapTransform):
    """Turn a 3-channel binary TC/WT/ET prediction into one single-channel BraTS label map.

    The inverse of MONAI's ``ConvertToMultiChannelBasedOnBratsClassesd`` and the last post-processing step of a
    region-based (sigmoid) BraTS bundle: ET -> ``et_label``, TC minus ET -> 1, WT minus TC -> 2, else 0.

    Args:
        keys: keys of the ``(3, *spatial)`` region maps (channels first, one item, not a batch).
        et_label: 4 for the BraTS 2018-2022 label convention, 3 for BraTS 2023.
        dtype: output dtype (``SaveImaged(output_dtype=...)`` decides the dtype on disk).
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        et_label: int = 4,
        dtype: DtypeLike | torch.dtype = torch.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = RegionsToBratsLabels(et_label, dtype)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


def case_name_formatter(metadict: dict, saver: Any) -> dict:
    """``SaveImage(d)`` ``output_name_formatter`` naming an output after its case folder.

    A stacked BraTS image carries its first modality file as ``filename_or_obj``, so MONAI's default would name
    the prediction ``BraTS2021_00000_t1_seg.nii.gz``; this gives ``BraTS2021_00000_seg.nii.gz``.
    """
    source = Path(str(metadict.get("filename_or_obj", "")))
    return {"subject": source.parent.name or source.name, "idx": metadict.get("patch_index")}


# ---------------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m common.data.brats make-split --dataset-dir D --out F [--folds 5] [--seed 0] [--test-fraction F]``."""
    parser = argparse.ArgumentParser(prog="python -m common.data.brats", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ms = sub.add_parser("make-split", help="write a k-fold cross-validation split file of a BraTS dataset folder")
    ms.add_argument("--dataset-dir", required=True, help="folder holding one sub-folder per BraTS case")
    ms.add_argument("--out", required=True, help="JSON file to write (atomically)")
    ms.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    ms.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    ms.add_argument(
        "--test-fraction",
        type=float,
        default=DEFAULT_TEST_FRACTION,
        help=f"share of the cases held out as test cases, never trained on (default {DEFAULT_TEST_FRACTION}; 0: none)",
    )
    ms.add_argument(
        "--modalities",
        nargs="+",
        default=list(DEFAULT_MODALITIES),
        help="channel order, 2021 names (default: t1 t1ce t2 flair)",
    )
    ms.add_argument("--no-label", action="store_true", help="do not require or list the seg files")
    args = parser.parse_args(argv)

    try:
        split = write_split_file(
            args.dataset_dir,
            args.out,
            folds=args.folds,
            seed=args.seed,
            modalities=args.modalities,
            with_label=not args.no_label,
            test_fraction=args.test_fraction,
        )
    except BratsDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sizes = [sum(1 for e in split["training"] if e["fold"] == k) for k in range(split["num_folds"])]
    print(
        f"wrote {args.out}: {len(split['testing'])} held-out test and {len(split['training'])} cross-validation "
        f"cases ({split['convention']}), {split['num_folds']} folds of sizes {sizes}, seed {split['seed']}, "
        f"modalities {split['modalities']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
