"""Hausdorff distances in millimetres: MONAI's metric with the voxel spacing of each case, read from its label.

MONAI's ``HausdorffDistance`` handler calls ``HausdorffDistanceMetric`` without a spacing, so its distances are in
voxels of whatever grid the evaluation runs on. ``HausdorffDistanceMetric`` itself accepts ``spacing`` (MONAI
1.6.1, ``monai/metrics/hausdorff_distance.py``: ``_compute_tensor(..., spacing=...)`` passes it on to
``compute_hausdorff_distance``), but nothing in the handler path supplies it. :class:`HausdorffDistanceMetricMM`
fills it in per case from the label's ``MetaTensor`` affine, the one ``LoadImaged`` read and every spatial transform
since (resampling, resizing, reorientation) kept up to date, so the distance is in the units of that affine:
millimetres for NIfTI or DICOM. :class:`HausdorffDistanceMM` is the handler, a drop-in for MONAI's
``HausdorffDistance`` in a bundle config::

    "val_hd95_mm": {"_target_": "common.metrics.surface.HausdorffDistanceMM", "percentile": 95,
                    "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}

``affine_unit_mm`` is the length in mm of one unit of the affine: 1 for medical formats, whose affines are in mm;
for photographs (PNG), whose affine counts source pixels, it is the source pixel size in mm, one number for square
pixels or one per array axis. After a resize the affine holds source pixels per grid pixel, so the product is the
physical size of a grid pixel.

The definition is MONAI's, unchanged: the 95th percentile (``torch.quantile``, linear interpolation) of each
directed set of edge-to-edge distances, then the larger of the two. A class absent from the prediction, the
ground truth or both gives NaN (with a percentile, MONAI takes the quantile of infinite distances, which torch
returns as NaN; without one, a one-sided absence gives infinity), and NaN cases are left out of the mean.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.handlers import IgniteMetricHandler
from monai.metrics import HausdorffDistanceMetric
from monai.utils import MetricReduction
from scipy import ndimage

__all__ = ["HausdorffDistanceMM", "HausdorffDistanceMetricMM", "label_spacing", "pooled_hd95"]


def pooled_hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """The 95th percentile of both directed surface-distance sets pooled into one: medpy's ``hd95`` (the Synapse
    literature's) and panoptica's HD95 (the official BraTS package's), which compute the same thing.

    A surface is the mask minus its binary erosion with the face-connected structuring element (voxels on the array
    edge are surface); each surface voxel's distance to the other surface comes from an exact Euclidean distance
    transform (``sampling=spacing``; ``None``: in voxels); the percentile is ``numpy.percentile``'s linear one. MONAI
    takes the larger of the two directed 95th percentiles instead, which is never smaller.

    Args:
        pred, ref: boolean masks of one shape, both non-empty.
        spacing: voxel size per axis, or ``None``.
    """
    footprint = ndimage.generate_binary_structure(pred.ndim, 1)
    pred_surface = pred ^ ndimage.binary_erosion(pred, structure=footprint)
    ref_surface = ref ^ ndimage.binary_erosion(ref, structure=footprint)
    # the distance transform measures the distance to the nearest zero, hence the inverted surfaces
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=spacing)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[ref_surface]
    return float(np.percentile(np.hstack((to_ref, to_pred)), 95))


def label_spacing(y: torch.Tensor, affine_unit_mm: float | Sequence[float] = 1.0) -> list[tuple[float, ...]]:
    """The physical spacing of every spatial axis of a batch-first ``MetaTensor`` ``y`` (B, C, *spatial), per item.

    Each axis's spacing is the length of the affine's column for that axis (``monai.data.utils.affine_to_spacing``)
    times ``affine_unit_mm`` (a number, or one per spatial axis).

    Raises:
        TypeError: when ``y`` is not a ``MetaTensor`` (a plain tensor has no spacing to read).
        ValueError: when ``affine_unit_mm`` has the wrong length or the affine does not match the batch.
    """
    if not isinstance(y, MetaTensor):
        raise TypeError(
            f"the distance in mm needs the label's voxel spacing, but the label is a {type(y).__name__}, not a "
            "MetaTensor; load it with LoadImaged and keep its metadata through the transforms"
        )
    spatial_dims = y.ndim - 2
    unit = np.asarray(affine_unit_mm, dtype=np.float64).reshape(-1)
    if unit.size not in (1, spatial_dims):
        raise ValueError(
            f"affine_unit_mm must be one number or {spatial_dims} (one per spatial axis), got {affine_unit_mm!r}"
        )
    affine = y.affine.detach().cpu().to(torch.float64)
    affines = [affine] * y.shape[0] if affine.ndim == 2 else list(affine)
    if len(affines) != y.shape[0]:
        raise ValueError(f"the label holds {len(affines)} affines for a batch of {y.shape[0]}")
    return [tuple((affine_to_spacing(a, r=spatial_dims).numpy() * unit).tolist()) for a in affines]


class HausdorffDistanceMetricMM(HausdorffDistanceMetric):
    """MONAI's ``HausdorffDistanceMetric`` in physical units: the spacing comes from ``y``'s affine (see the module).

    Args:
        affine_unit_mm: length in mm of one unit of the label's affine: 1 (the default) for NIfTI/DICOM, the
            source pixel size in mm for photographs (a number, or one per spatial axis in array order).
        other arguments: as ``monai.metrics.HausdorffDistanceMetric``.

    A ``spacing`` passed explicitly to the call wins over the label's.
    """

    def __init__(
        self,
        include_background: bool = False,
        distance_metric: str = "euclidean",
        percentile: float | None = None,
        directed: bool = False,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
        affine_unit_mm: float | Sequence[float] = 1.0,
    ) -> None:
        super().__init__(
            include_background=include_background,
            distance_metric=distance_metric,
            percentile=percentile,
            directed=directed,
            reduction=reduction,
            get_not_nans=get_not_nans,
        )
        self.affine_unit_mm = affine_unit_mm

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        if kwargs.get("spacing") is None:
            kwargs["spacing"] = label_spacing(y, self.affine_unit_mm)
        return super()._compute_tensor(y_pred, y, **kwargs)


class HausdorffDistanceMM(IgniteMetricHandler):
    """The handler of :class:`HausdorffDistanceMetricMM`: MONAI's ``HausdorffDistance`` handler, in millimetres.

    Args:
        affine_unit_mm: see :class:`HausdorffDistanceMetricMM`.
        other arguments: as ``monai.handlers.HausdorffDistance``.
    """

    def __init__(
        self,
        include_background: bool = False,
        distance_metric: str = "euclidean",
        percentile: float | None = None,
        directed: bool = False,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        affine_unit_mm: float | Sequence[float] = 1.0,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = HausdorffDistanceMetricMM(
            include_background=include_background,
            distance_metric=distance_metric,
            percentile=percentile,
            directed=directed,
            reduction=reduction,
            affine_unit_mm=affine_unit_mm,
        )
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)
