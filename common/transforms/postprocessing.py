"""Connected-component postprocessing of label maps: small enhancing-tumour blobs, stray organ islands.

- :class:`RelabelSmallComponentsd`: connected components of one label smaller than ``min_size`` voxels get another
  label. BraTS use: enhancing tumour (ET, 4 in BraTS 2021, 3 in BraTS 2023) components below a threshold become
  necrosis (1), a common postprocessing of BraTS challenge entries because a false-positive ET blob in a case
  without ET costs a whole case's ET Dice (the challenge scores an empty-vs-nonempty ET as 0).
- :class:`KeepLargestComponentPerLabeld`: of each listed label (Synapse organ ids) only the largest connected
  component stays; the other components become background. This is what MONAI's
  ``KeepLargestConnectedComponentd(applied_labels=..., independent=True)`` does on a label map, written on
  ``scipy.ndimage`` because MONAI's needs scikit-image, which no bundle otherwise requires.

Connectivity is full by default (26 neighbours in 3D, 8 in 2D), as in MONAI and the BraTS tooling. All transforms
take channel-first ``(C, *spatial)`` items (not batches) as ``numpy`` arrays, tensors or ``MetaTensor`` (meta data
kept) and return the input's type; ``scipy`` is imported only when a transform runs.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_data_type, convert_to_dst_type, ensure_tuple, optional_import

__all__ = [
    "KeepLargestComponentPerLabel",
    "KeepLargestComponentPerLabeld",
    "RelabelSmallComponents",
    "RelabelSmallComponentsd",
    "component_sizes",
]


def component_sizes(mask: np.ndarray, connectivity: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of a boolean ``mask`` (``*spatial``): ``(labels, sizes)``.

    ``labels`` numbers the components 1..n (0: outside the mask); ``sizes[k]`` is the voxel count of component k
    (``sizes[0]`` counts the voxels outside). ``connectivity``: 1 (faces) to ``mask.ndim`` (full; ``None``).
    """
    ndimage, _ = optional_import("scipy.ndimage")
    rank = mask.ndim
    structure = ndimage.generate_binary_structure(rank, rank if connectivity is None else int(connectivity))
    labels, _ = ndimage.label(mask, structure=structure)
    return labels, np.bincount(labels.ravel())


def _small(mask: np.ndarray, min_size: int, connectivity: int | None) -> np.ndarray:
    """Voxels of ``mask`` that lie in components of fewer than ``min_size`` voxels."""
    labels, sizes = component_sizes(mask, connectivity)
    small = sizes < min_size
    small[0] = False
    return small[labels]


def _check_label_map(img: np.ndarray, name: str) -> None:
    if img.ndim < 2 or img.shape[0] != 1:
        raise ValueError(f"{name}: expected a single-channel label map (1, *spatial), got shape {list(img.shape)}.")


class RelabelSmallComponents(Transform):
    """Give connected components of ``label`` with fewer than ``min_size`` voxels the value ``new_label``.

    Args:
        label: the label whose small components change (BraTS enhancing tumour: 4, or 3 in BraTS 2023).
        new_label: what they become (BraTS necrosis: 1).
        min_size: components of ``min_size`` voxels or more stay; 0 or less: the transform changes nothing.
        connectivity: 1 (faces) up to the number of spatial dims (full, 26 neighbours in 3D; ``None``).

    ``__call__`` takes a label map ``(1, *spatial)`` and returns it with the same type, dtype and meta data.
    """

    def __init__(self, label: int, new_label: int, min_size: int, connectivity: int | None = None) -> None:
        self.label = label
        self.new_label = new_label
        self.min_size = int(min_size)
        self.connectivity = connectivity

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        if self.min_size <= 0:
            return img
        array = convert_data_type(img, np.ndarray)[0]
        _check_label_map(array, type(self).__name__)
        small = _small(array[0] == self.label, self.min_size, self.connectivity)
        if not small.any():
            return img
        out = array.copy()
        out[0][small] = self.new_label
        return convert_to_dst_type(out, dst=img)[0]


class KeepLargestComponentPerLabel(Transform):
    """Keep only the largest connected component of each of ``labels`` in a label map; the rest becomes ``background``.

    Args:
        labels: the labels to clean (Synapse organs: 1..12 or 1..13); other labels are left alone.
        connectivity: 1 (faces) up to the number of spatial dims (full, 26 neighbours in 3D; ``None``).
        background: the value removed components get.

    ``__call__`` takes a label map ``(1, *spatial)`` and returns it with the same type, dtype and meta data. Ties
    between equally large components keep the first in scan order.
    """

    def __init__(self, labels: Sequence[int], connectivity: int | None = None, background: int = 0) -> None:
        self.labels = [int(v) for v in ensure_tuple(labels)]
        self.connectivity = connectivity
        self.background = background

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        array = convert_data_type(img, np.ndarray)[0]
        _check_label_map(array, type(self).__name__)
        out = None
        for value in self.labels:
            mask = array[0] == value
            if not mask.any():
                continue
            labels, sizes = component_sizes(mask, self.connectivity)
            if len(sizes) <= 2:  # one component: nothing to remove
                continue
            sizes[0] = 0
            stray = mask & (labels != int(np.argmax(sizes)))
            out = array.copy() if out is None else out
            out[0][stray] = self.background
        return img if out is None else convert_to_dst_type(out, dst=img)[0]


class _Dictionary(MapTransform):
    """Apply ``self.transform`` to every key."""

    transform: Transform

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class RelabelSmallComponentsd(_Dictionary):
    """Dictionary version of :class:`RelabelSmallComponents` (label maps ``(1, *spatial)`` under ``keys``)."""

    def __init__(
        self,
        keys: KeysCollection,
        label: int,
        new_label: int,
        min_size: int,
        connectivity: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = RelabelSmallComponents(label, new_label, min_size, connectivity)


class KeepLargestComponentPerLabeld(_Dictionary):
    """Dictionary version of :class:`KeepLargestComponentPerLabel` (label maps ``(1, *spatial)`` under ``keys``)."""

    def __init__(
        self,
        keys: KeysCollection,
        labels: Sequence[int],
        connectivity: int | None = None,
        background: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = KeepLargestComponentPerLabel(labels, connectivity, background)
