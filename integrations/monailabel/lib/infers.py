"""Inference of one zoo bundle in MONAI Label: the right label names and dimension, four-file BraTS studies."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from monai.transforms import MapTransform
from monailabel.tasks.infer.bundle import BundleInferTask

import common.data.brats
from common.data.brats import BratsConvention
from common.transforms.validation import ValidateImageFilesd

logger = logging.getLogger(__name__)


def image_dimension(config: Any) -> int:
    """How many spatial axes the bundle's input image has: what its input check (``ValidateImageFilesd``, first in
    every zoo bundle's ``preprocessing``) was told. MONAI Label would take the length of the metadata's input
    ``spatial_shape``, which for RefNet is that of its 2D slices, not of the CT it segments."""
    for transform in config.get_parsed_content("preprocessing").transforms:
        if isinstance(transform, ValidateImageFilesd):
            return int(transform.spatial_dims)
    raise ValueError("preprocessing holds no ValidateImageFilesd to read the image dimension from")


def brats_modalities(config: Any) -> list[str] | None:
    """The BraTS modalities a BraTS bundle's network reads, in channel order, or ``None`` for other bundles."""
    if "et_label" not in config:
        return None
    if "student_modality" in config:  # mtcm_kd_t1ce_student reads the student's modality only
        return [config["student_modality"]]
    return list(config["modalities"])


def brats_case(image: str, modalities: list[str]) -> list[str] | None:
    """The files of ``modalities`` of the BraTS case that ``image`` is one modality of, in that order, or ``None``
    when ``image`` is not named like a BraTS modality (common.data.brats.case_files says which names are)."""
    try:
        return [str(f) for f in common.data.brats.case_files(image, modalities)]
    except common.data.brats.BratsFileNotFoundError:
        raise  # a BraTS case with a modality missing: the message names the file
    except common.data.brats.BratsDataError:
        return None


class BratsCaseFilesd(MapTransform):
    """Replace the path of one modality of a BraTS case with the paths of the modalities the bundle reads.

    Slicer opens, and MONAI Label lists, one file per image; a BraTS case is four. Any modality of a case stored as
    the BraTS archives store it (``BraTS2021_00000_flair.nii.gz`` next to ``..._t1.nii.gz`` and the others, or the
    2023 naming) stands for the case; ``LoadImaged`` then stacks the files as channels. An image that is not named
    like a BraTS modality (an already stacked 4-channel NIfTI, a T1ce file of any name) is left as it is.
    """

    def __init__(self, keys: str, modalities: list[str]) -> None:
        super().__init__(keys)
        self.modalities = modalities

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            files = brats_case(d[key], self.modalities) if isinstance(d[key], str) else None
            if files is not None:
                logger.info(f"{Path(d[key]).name}: reading {[Path(f).name for f in files]}")
                d[key] = files if len(files) > 1 else files[0]
        return d


class ZooInferTask(BundleInferTask):
    """MONAI Label's bundle inference task, with what it cannot know about the zoo's bundles.

    - ``/info/`` names the values of the label map the bundle returns: for the BraTS bundles those of the server's
      label convention (``--conf brats_labels``; the bundle writes its label maps in it), for the others the
      output channel names of the metadata, whose channel index is the label value.
    - The dimension is that of the image the bundle reads (3 for RefNet's CT, whose network sees 2D slices).
    - A BraTS bundle reads the four files of a BraTS case from any one of them (:class:`BratsCaseFilesd`).
    """

    def __init__(self, path: str, conf: dict[str, str], convention: BratsConvention) -> None:
        # MONAI Label's loader wraps LoadImaged to accept arrays, and that wrapper takes a list of files for one
        # array: the plain LoadImaged reads and stacks a BraTS case's files.
        super().__init__(path, conf, extend_load_image=False)
        if not self.valid:
            return
        self.modalities = brats_modalities(self.bundle_config)
        if self.modalities is not None:
            self.bundle_config["et_label"] = convention.et_label
            self.labels = dict(convention.labels)
        else:
            self.labels = {name: value for name, value in self.labels.items() if value != 0}
        self.dimension = image_dimension(self.bundle_config)

    def pre_transforms(self, data: Any = None) -> list:
        transforms = list(super().pre_transforms(data))
        if self.modalities is not None:
            transforms.insert(0, BratsCaseFilesd("image", self.modalities))
        return transforms
