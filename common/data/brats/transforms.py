"""BraTS label conventions: MONAI transforms between label maps, and checks that stop on the wrong convention.

MONAI has the forward direction (:class:`monai.transforms.ConvertToMultiChannelBasedOnBratsClassesd`, label map
-> TC/WT/ET with ``et_label`` 4 or 3); these transforms add the rest:

- :class:`RegionsToBratsLabelsd`: TC/WT/ET channels -> one BraTS label map (the last post-processing step);
- :class:`ConvertBratsLabelsd`: ``brats2021`` {0,1,2,4} <-> ``brats2023`` {0,1,2,3} <-> ``index`` {0,1,2,3}
  (contiguous class indices for softmax networks);
- :class:`CheckBratsLabelsd`: stops with the file name when a label map holds values of another convention,
  which MONAI's converter would otherwise drop silently (ET=3 data read with ``et_label=4`` has no ET).

Each has an array version (no ``d``) and a function (:func:`regions_to_brats_labels`, :func:`convert_brats_labels`,
:func:`check_brats_labels`). Which convention a dataset or split file uses is the reader's business
(:mod:`common.data.brats.reader`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type

from .reader import BRATS_2021, BRATS_2023, BratsConvention, BratsDataError

__all__ = [
    "LABEL_CONVENTIONS",
    "BratsLabelError",
    "CheckBratsLabels",
    "CheckBratsLabelsd",
    "ConvertBratsLabels",
    "ConvertBratsLabelsd",
    "RegionsToBratsLabels",
    "RegionsToBratsLabelsd",
    "check_brats_labels",
    "convert_brats_labels",
    "regions_to_brats_labels",
]


class BratsLabelError(BratsDataError):
    """A label map holds values outside its BraTS label convention."""


#: Label values of each label convention; ``index`` is the contiguous class index of a 4-class softmax network.
LABEL_CONVENTIONS: dict[str, tuple[int, ...]] = {
    BRATS_2021.name: BRATS_2021.label_values,
    BRATS_2023.name: BRATS_2023.label_values,
    "index": (0, 1, 2, 3),
}


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
