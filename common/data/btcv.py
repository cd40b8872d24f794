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
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "BTCV_LABELS",
    "BTCV_TRAINING_CASES",
    "SYNAPSE_TRAIN_CASES",
    "SYNAPSE_TEST_CASES",
    "BTCVCasePaths",
    "normalize_case_id",
    "btcv_case_paths",
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
