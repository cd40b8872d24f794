"""Constants of the BTCV abdomen dataset (MICCAI 2015 "Multi-Atlas Labeling Beyond the Cranial Vault") and its
Synapse 18/12 split.

On-disk layout of the labelled training set as distributed (``RawData.zip``)::

    RawData/Training/img/img00NN.nii.gz      CT in Hounsfield units
    RawData/Training/label/label00NN.nii.gz  organ labels 0..13 (:data:`BTCV_LABELS`)

Sources:

* Label ids and names: MONAI model zoo ``swin_unetr_btcv_segmentation/configs/metadata.json`` (14-channel output,
  identical to the BTCV raw label ids).
* The 30 labelled training cases are ``img0001``-``img0010`` and ``img0021``-``img0040``.
* Synapse split (18 training / 12 test volumes): TransUNet ``lists/lists_Synapse/train.txt`` (slices of 18 volumes)
  and ``lists/lists_Synapse/test_vol.txt``; the test order below is the published one.

The 12-organ ("Synapse12") convention
-------------------------------------

BTCV labels 13 organs; RefNet (seed paper 003) segments "background + 12 organs", 13 classes, and its Table 2 has
one row "Right and Left Adrenal Gland". That is the convention of SAM-adapter-style Synapse preprocessing (research
notes ``fct_refnet.md`` section 4): BTCV's ids 0..12 stay as they are and the left adrenal gland (13) joins the
right one (12) as class 12, "adrenal glands" (:data:`SYNAPSE12_LABELS`). :func:`btcv_to_synapse12` and the MONAI
transform :class:`BTCVToSynapse12d` do that mapping after loading and check the ids on the way, so a label map of
another dataset stops with its file name. A label map already in the 12-organ convention passes unchanged (the
mapping is idempotent), which is why a base model's prediction can go through the same transform. The merge cannot
be undone: outputs in this convention have one adrenal class.

Datalists and splits
--------------------

:func:`find_raw_data_dir` accepts the ``RawData`` folder, the folder holding it, or the folder holding
``Training/`` directly; :func:`synapse_split` lists the Synapse training and test ids present there,
:func:`kfold_cases` splits a case list into folds deterministically (for out-of-fold base predictions),
:func:`btcv_datalist` makes MONAI datalists of labelled cases and :func:`ct_datalist` of CT files for inference.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform

from common.errors import BadInputError

__all__ = [
    "BTCV_LABELS",
    "BTCV_TRAINING_CASES",
    "SYNAPSE_TRAIN_CASES",
    "SYNAPSE_TEST_CASES",
    "BTCVCasePaths",
    "normalize_case_id",
    "btcv_case_paths",
    "SYNAPSE12_LABELS",
    "BTCV_TO_SYNAPSE12",
    "BTCVDataError",
    "BTCVToSynapse12d",
    "btcv_to_synapse12",
    "find_raw_data_dir",
    "present_cases",
    "synapse_split",
    "kfold_cases",
    "btcv_datalist",
    "ct_datalist",
]

BTCV_LABELS: dict[int, str] = {
    0: "background",
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior vena cava",
    10: "portal and splenic veins",
    11: "pancreas",
    12: "right adrenal gland",
    13: "left adrenal gland",
}

BTCV_TRAINING_CASES: tuple[str, ...] = tuple(f"{i:04d}" for i in (*range(1, 11), *range(21, 41)))
"""The 30 labelled BTCV training case ids, sorted."""

SYNAPSE_TEST_CASES: tuple[str, ...] = (
    "0008", "0022", "0038", "0036", "0032", "0002", "0029", "0003", "0001", "0004", "0025", "0035",
)  # fmt: skip
"""Synapse test volumes in the order of TransUNet ``test_vol.txt``."""

SYNAPSE_TRAIN_CASES: tuple[str, ...] = (
    "0005", "0006", "0007", "0009", "0010", "0021", "0023", "0024", "0026",
    "0027", "0028", "0030", "0031", "0033", "0034", "0037", "0039", "0040",
)  # fmt: skip
"""Synapse training volumes (TransUNet ``train.txt``), sorted."""


class BTCVCasePaths(NamedTuple):
    """Image and label file of one BTCV training case."""

    image: Path
    label: Path


def normalize_case_id(case_id: str | int) -> str:
    """Four-digit BTCV case id from ``8``, ``"8"``, ``"0008"``, ``"case0008"``, ``"img0008"`` or ``"label0008"``.

    Raises:
        ValueError: if the id is not one of the 30 labelled training cases.
    """
    text = str(case_id).strip()
    for prefix in ("case", "img", "label"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    if not text.isdigit():
        raise ValueError(f"not a BTCV case id: {case_id!r}")
    cid = f"{int(text):04d}"
    if cid not in BTCV_TRAINING_CASES:
        raise ValueError(f"{case_id!r} is not one of the 30 labelled BTCV training cases {BTCV_TRAINING_CASES}")
    return cid


def btcv_case_paths(raw_data_dir: str | os.PathLike, case_id: str | int) -> BTCVCasePaths:
    """Paths of a case under a ``RawData`` folder (the one holding ``Training/``); existence is not checked.

    Example: ``btcv_case_paths("/data/BTCV/RawData", "0008")`` gives
    ``RawData/Training/img/img0008.nii.gz`` and ``RawData/Training/label/label0008.nii.gz``.
    """
    cid = normalize_case_id(case_id)
    training = Path(raw_data_dir) / "Training"
    return BTCVCasePaths(training / "img" / f"img{cid}.nii.gz", training / "label" / f"label{cid}.nii.gz")


# ---------------------------------------------------------------------------------------------------------------
# the 12-organ (Synapse12) label convention
# ---------------------------------------------------------------------------------------------------------------

SYNAPSE12_LABELS: dict[int, str] = {**{i: BTCV_LABELS[i] for i in range(12)}, 12: "adrenal glands"}
"""Class ids of the 12-organ convention: BTCV's 0..11, and 12 for both adrenal glands (module docstring)."""

BTCV_TO_SYNAPSE12: dict[int, int] = {13: 12}
"""The only id that changes from BTCV to the 12-organ convention: left adrenal gland (13) -> adrenal glands (12)."""

_NUM_BTCV_IDS = len(BTCV_LABELS)  # 0..13


class BTCVDataError(BadInputError):
    """A BTCV dataset folder, case or label map is not what was expected."""


def _source_name(label: Any, name: str | None) -> str:
    if name:
        return name
    if isinstance(label, MetaTensor) and label.meta.get("filename_or_obj"):
        return str(label.meta["filename_or_obj"])
    return "<label map without file name>"


def btcv_to_synapse12(label: NdarrayOrTensor, name: str | None = None) -> NdarrayOrTensor:
    """Map a BTCV label map (ids 0..13) to the 12-organ convention (ids 0..12): 13 -> 12, the rest unchanged.

    Works on numpy arrays, tensors and ``MetaTensor`` of any shape and dtype (float as MONAI loads them) and returns
    the same type, dtype, device and meta data. Input already in the 12-organ convention passes unchanged.

    Args:
        label: the label map.
        name: what to call it in an error message (default: its ``filename_or_obj`` meta data).

    Raises:
        BTCVDataError: naming the label map, when it holds values that are not integer ids in ``0..13``.
    """
    values = torch.as_tensor(label.detach() if isinstance(label, torch.Tensor) else np.asarray(label))
    # Map by the rounded id: a value the check below accepts as 13 (within 1e-3) must become 12 like an exact 13.
    ids = torch.round(values.double())
    if values.numel():
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > _NUM_BTCV_IDS - 1 or bool(torch.any(torch.abs(values.double() - ids) > 1e-3)):
            found = torch.unique(values).tolist()
            shown = ", ".join(f"{v:g}" for v in found[:20]) + (", ..." if len(found) > 20 else "")
            raise BTCVDataError(
                f"Label map '{_source_name(label, name)}' holds values [{shown}], but a BTCV label map holds integer "
                f"organ ids 0..{_NUM_BTCV_IDS - 1} (common.data.btcv.BTCV_LABELS); was an image loaded as a label, "
                "or a label map resampled with linear interpolation?"
            )
    if isinstance(label, torch.Tensor):
        out = label.clone()
        for source, target in BTCV_TO_SYNAPSE12.items():
            out[ids == source] = target
        return out
    out_array = np.asarray(label).copy()
    for source, target in BTCV_TO_SYNAPSE12.items():
        out_array[(ids == source).numpy()] = target
    return out_array


class BTCVToSynapse12d(MapTransform):
    """Map BTCV label maps (ids 0..13) to the 12-organ convention (0..12) and check their ids on the way.

    Put it right after loading (and any nearest-neighbour resampling) of ground truth and of base-model
    predictions; see :func:`btcv_to_synapse12`. Not invertible (the two adrenal glands become one class).

    Args:
        keys: keys of the label maps.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = btcv_to_synapse12(d[key], None if isinstance(d[key], MetaTensor) else f"data[{key!r}]")
        return d


# ---------------------------------------------------------------------------------------------------------------
# dataset folders, splits and datalists
# ---------------------------------------------------------------------------------------------------------------

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def find_raw_data_dir(dataset_dir: str | os.PathLike) -> Path:
    """The folder holding ``Training/img`` and ``Training/label``: ``dataset_dir`` itself or its ``RawData``.

    Raises:
        BTCVDataError: (a ``FileNotFoundError`` too) naming the folder and the layout expected.
    """
    root = Path(dataset_dir).expanduser()
    for candidate in (root, root / "RawData"):
        if (candidate / "Training" / "img").is_dir() and (candidate / "Training" / "label").is_dir():
            return candidate
    raise _BTCVFileNotFoundError(
        f"'{root}' is not a BTCV dataset folder: expected RawData/Training/img/img0001.nii.gz and "
        "RawData/Training/label/label0001.nii.gz under it (the layout of the challenge's RawData.zip), or "
        "Training/img and Training/label directly."
    )


class _BTCVFileNotFoundError(BTCVDataError, FileNotFoundError):
    """A BTCV folder or file does not exist."""


def present_cases(dataset_dir: str | os.PathLike) -> list[str]:
    """Sorted ids of the labelled BTCV cases whose image and label files both exist under ``dataset_dir``."""
    raw = find_raw_data_dir(dataset_dir)
    return [cid for cid in BTCV_TRAINING_CASES if all(p.is_file() for p in btcv_case_paths(raw, cid))]


def synapse_split(dataset_dir: str | os.PathLike, allow_partial: bool = False) -> tuple[list[str], list[str]]:
    """``(training ids, test ids)`` of the Synapse 18/12 split, as present under ``dataset_dir``.

    Args:
        dataset_dir: see :func:`find_raw_data_dir`.
        allow_partial: accept a folder holding only some of the 30 cases (synthetic phantoms, a quick check) and
            use those present; by default every one of the 30 must be there, because the published split and its
            numbers depend on every case.

    Raises:
        BTCVDataError: listing the missing cases (or, with ``allow_partial``, when no training or no test case
            is present).
    """
    present = set(present_cases(dataset_dir))
    train = [c for c in SYNAPSE_TRAIN_CASES if c in present]
    test = [c for c in SYNAPSE_TEST_CASES if c in present]
    missing = [c for c in (*SYNAPSE_TRAIN_CASES, *SYNAPSE_TEST_CASES) if c not in present]
    raw = find_raw_data_dir(dataset_dir)
    if missing and not allow_partial:
        raise BTCVDataError(
            f"'{raw}' lacks {len(missing)} of the 30 Synapse cases (image and label): {', '.join(missing)}; the "
            "18/12 split needs all of them (allow_partial=True / --partial-split uses the cases present)."
        )
    if not train or not test:
        raise BTCVDataError(
            f"'{raw}' holds {len(train)} Synapse training and {len(test)} test case(s); at least one of each is "
            f"needed (training ids {', '.join(SYNAPSE_TRAIN_CASES)}; test ids {', '.join(SYNAPSE_TEST_CASES)})."
        )
    return train, test


def kfold_cases(cases: Sequence[str], num_folds: int, fold: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``(training ids, held-out ids)`` of fold ``fold`` of a deterministic ``num_folds``-fold split of ``cases``.

    Cases are ordered by ``sha256(f"{seed}:{case}")`` and the i-th goes to fold ``i % num_folds`` (fold sizes differ
    by at most one, the same on every machine); a different ``seed`` reshuffles the assignment. ``num_folds=1``
    holds nothing out: every case trains (the paper's in-sample base models). Both lists keep the order of ``cases``.

    Raises:
        BTCVDataError: for ``num_folds`` outside ``1..len(cases)`` or ``fold`` outside ``0..num_folds-1``.
    """
    cases = [str(c) for c in cases]
    if int(num_folds) != num_folds or not 1 <= num_folds <= len(cases):
        raise BTCVDataError(f"num_folds must be an integer in 1..{len(cases)} (the number of cases), got {num_folds}.")
    if int(fold) != fold or not 0 <= fold < num_folds:
        raise BTCVDataError(f"fold must be in 0..{int(num_folds) - 1}, got {fold}.")
    if num_folds == 1:
        return list(cases), []
    order = sorted(cases, key=lambda c: hashlib.sha256(f"{seed}:{c}".encode()).hexdigest())
    held_out = {c for rank, c in enumerate(order) if rank % num_folds == fold}
    return [c for c in cases if c not in held_out], [c for c in cases if c in held_out]


def btcv_datalist(dataset_dir: str | os.PathLike, cases: Sequence[str | int]) -> list[dict[str, str]]:
    """MONAI datalist ``[{"case": "0005", "image": ".../img0005.nii.gz", "label": ".../label0005.nii.gz"}, ...]``.

    Paths are absolute; ``cases`` keep their order.

    Raises:
        BTCVDataError: (a ``FileNotFoundError`` too) naming the first missing file.
    """
    raw = find_raw_data_dir(dataset_dir).resolve()
    items = []
    for case in cases:
        paths = btcv_case_paths(raw, case)
        for path in paths:
            if not path.is_file():
                raise _BTCVFileNotFoundError(f"BTCV case {normalize_case_id(case)}: '{path}' does not exist.")
        items.append({"case": normalize_case_id(case), "image": str(paths.image), "label": str(paths.label)})
    return items


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_NIFTI_SUFFIXES))


def ct_datalist(path: str | os.PathLike, cases: Sequence[str | int] | None = None) -> list[dict[str, str]]:
    """Datalist ``[{"image": ...}, ...]`` of CT volumes to segment.

    ``path`` may be one NIfTI file; a BTCV dataset folder (see :func:`find_raw_data_dir`), whose
    ``Training/img`` and, when present, ``Testing/img`` images are taken (only those of ``cases``, e.g.
    ``["0008", 22]``, if given); or any other folder, whose ``.nii``/``.nii.gz`` files are taken.

    Raises:
        BTCVDataError: (a ``FileNotFoundError`` too) when the path does not exist or yields no image.
    """
    source = Path(path).expanduser()
    if source.is_file():
        return [{"image": str(source.resolve())}]
    if not source.is_dir():
        raise _BTCVFileNotFoundError(f"'{source}' does not exist; expected a CT NIfTI file or a folder of them.")
    try:
        raw = find_raw_data_dir(source)
    except BTCVDataError:
        raw = None
    if raw is None:
        files = _nifti_files(source)
        problem = "holds no .nii or .nii.gz file"
    else:
        files = [
            f
            for sub in ("Training", "Testing")
            if (raw / sub / "img").is_dir()
            for f in _nifti_files(raw / sub / "img")
        ]
        problem = "holds no image under Training/img or Testing/img"
        if cases is not None:
            wanted = {f"img{int(str(c).strip().removeprefix('img').removeprefix('case')):04d}" for c in cases}
            files = [f for f in files if f.name.split(".")[0] in wanted]
            problem = f"holds none of the images of cases {list(cases)} under Training/img or Testing/img"
    if not files:
        raise _BTCVFileNotFoundError(f"'{source}' {problem}; nothing to segment.")
    return [{"image": str(f.resolve())} for f in files]
