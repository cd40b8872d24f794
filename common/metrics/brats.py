"""BraTS region metrics computed exactly as the official package ``brats-evaluation==0.0.10`` computes them.

The official flow for gliomas is ``panoptica.Panoptica_Evaluator`` (panoptica 2.1.7) with the package's
``configs/config_gli.yaml``, then ``metrics_parser.parse_seg_results``. For each region of BraTS 2023 labels
(1 NETC, 2 SNFH, 3 ET) -- ``tc`` = {1, 3}, ``wt`` = {1, 2, 3}, ``et`` = {3} -- this module gives the same seven
figures, to floating-point identity:

- ``legacy_dice``: Dice of the whole region masks (the package's ``global_bin_dsc``, column ``global_dsc_<r>``).
- ``legacy_hd95``: 95th percentile of the surface distances of the whole region masks (``global_bin_hd95``,
  column ``global_hd95_<r>``), **in voxels**: panoptica calls its global metrics without the voxel spacing.
  Infinity (see below) becomes the 373 mm penalty (the diagonal of the 240 x 240 x 155 mm SRI-24 volume), as the
  parser does.
- ``lesion_dice``, ``lesion_hd95``: panoptica's segmentation quality ``sq_dsc`` / ``sq_hd95`` (columns
  ``lesionwise_dsc_mean_<r>``, ``lesionwise_hd95_mean_<r>``). Lesions are the 26-connected components of each
  mask (panoptica's cc3d default; ``scipy.ndimage.label`` with a full 3x3x3 structure numbers them identically).
  Reference and predicted lesions are paired one-to-one by maximum bipartite matching
  (``scipy.optimize.linear_sum_assignment`` on cost ``1 - Dice``; a pair is eligible when its Dice is at least
  1e-6, every other entry costs ``1 + 1e-6`` and is never a match). The figure is the **mean over the matched
  pairs only** of each pair's Dice / HD95, HD95 here in mm (the spacing is honoured).
- ``tp``, ``fp``, ``fn``: matched pairs, unmatched predicted lesions, unmatched reference lesions.

HD95 (both kinds): a surface is the mask minus its erosion by the 6-neighbourhood (voxels on the array edge are
surface); each surface voxel's distance to the other surface comes from an exact Euclidean distance transform;
the two directed sets are pooled into one array and ``np.percentile(..., 95)`` (linear interpolation) is taken.
This is not MONAI's ``compute_hausdorff_distance(percentile=95)``, which takes the larger of the two directed
95th percentiles, typically a larger figure.

Empty regions (the package's zero-TP edge-case rules, reproduced as they are):

================================================  ===========  ===========  ===========  ===========
case                                              legacy_dice  legacy_hd95  lesion_dice  lesion_hd95
================================================  ===========  ===========  ===========  ===========
region absent from both                           NaN          NaN          NaN          NaN
missed (reference only), false positive only,     0            373          0            inf
or the two masks do not overlap at all
================================================  ===========  ===========  ===========  ===========

NaN is what MONAI's reductions leave out; the lesion-wise infinity is the package's own output (its parser puts
the 373 penalty on the global HD95 only). Missed and false-positive lesions in a region that also has a match
change only ``fn`` / ``fp``, never ``lesion_dice`` / ``lesion_hd95``.

This lesion-wise Dice is **not** the BraTS 2023 challenge's lesion-wise Dice (github.com/rachitsaluja/
BraTS-2023-Metrics), which dilates the reference before finding lesions, drops lesions under a volume threshold,
and divides the summed Dice of matched lesions by TP + FP + FN (each FP and FN scoring Dice 0 and HD95 374 mm,
an empty case scoring 1 / 0). The official package reports panoptica's mean over matched lesions instead.

Label maps of BraTS 2021 (ET = 4, no label 3) are read with ``convention="brats2021"``. Before a 2021 map goes to
the official package it must be converted to 2023 values (``common.data.brats.convert_brats_labels(label,
"brats2021", "brats2023")``, 4 -> 3): the package would score 4 as resection cavity and leave ET empty.

Two properties of the official package that matter only for anisotropic voxels (BraTS is 1 mm isotropic): the
legacy HD95 ignores the spacing (above), and a NIfTI file given by path is read with SimpleITK, whose arrays are
(z, y, x) while ``GetSpacing()`` is (x, y, z), so the lesion-wise HD95 of a file applies the spacing to reversed
axes. Here ``spacing`` is in the array's axis order, as MONAI's ``MetaTensor.pixdim`` is.

Why a reproduction rather than a dependency: panoptica pins ``numpy<2.3`` (this repository runs numpy 2.4) and
brings cc3d, SimpleITK, pandas, plotly and more. ``tests/unit/metrics/test_brats.py`` checks this module against the
real package, installed in ``.venv-brats-eval`` by ``make brats-eval-env``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction, look_up_option
from numpy.typing import NDArray
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from common.data.brats import BRATS_CONVENTIONS, check_brats_labels
from common.metrics.surface import label_spacing, pooled_hd95

__all__ = [
    "FIGURES",
    "HD95_PENALTY_MM",
    "METRICS",
    "REGIONS",
    "BratsMetric",
    "RegionFigures",
    "brats_figures",
    "brats_figures_from_regions",
    "brats_label_regions",
    "brats_metric_handlers",
    "brats_region_figures",
]

#: Region order of MONAI's ``ConvertToMultiChannelBasedOnBratsClasses`` and of the bundles' evaluators.
REGIONS: tuple[str, ...] = ("tc", "wt", "et")
#: The four per-case figures :class:`BratsMetric` reports.
METRICS: tuple[str, ...] = ("legacy_dice", "legacy_hd95", "lesion_dice", "lesion_hd95")
FIGURES: tuple[str, ...] = (*METRICS, "tp", "fp", "fn")
#: What ``metrics_parser.parse_seg_results`` puts in place of an infinite global HD95.
HD95_PENALTY_MM = 373.0

# panoptica's MaxBipartiteMatching: DSC threshold of config_gli.yaml and the cost of a non-eligible pair.
_MATCH_THRESHOLD = 1e-6
_NO_MATCH_COST = 1.0 + 1e-6
# Padding of panoptica's crops; cropping never changes a figure, it only saves time on full-size volumes.
_CROP_PAD = 2


@dataclasses.dataclass(frozen=True)
class RegionFigures:
    """The figures of one region of one case; see the module docstring for each definition."""

    legacy_dice: float
    legacy_hd95: float
    lesion_dice: float
    lesion_hd95: float
    tp: int
    fp: int
    fn: int

    def as_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _as_mask(x: Any, what: str) -> NDArray[np.bool_]:
    """A 0/1 (or boolean) array as booleans; anything else is refused rather than silently thresholded."""
    a = _to_numpy(x)
    if a.dtype == np.bool_:
        return a
    if not bool(np.all((a == 0) | (a == 1))):
        raise ValueError(f"{what} must be a binary mask (0/1); binarize first, e.g. AsDiscrete(threshold=0.5)")
    return a != 0


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    out = tuple(float(s) for s in spacing)
    if len(out) != ndim or not all(s > 0 and math.isfinite(s) for s in out):
        raise ValueError(f"spacing must be {ndim} positive numbers (one per spatial axis), got {spacing}")
    return out


def _check_pair(pred: np.ndarray, ref: np.ndarray) -> None:
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference shapes differ: {pred.shape} vs {ref.shape}")
    if pred.ndim not in (2, 3):
        raise ValueError(f"expected spatial arrays (H, W[, D]) without batch or channel axes, got shape {pred.shape}")


def _crop(*masks: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of the union of ``masks`` padded by ``_CROP_PAD`` and clipped to the array."""
    union = np.logical_or.reduce(masks)
    box = ndimage.find_objects(union.astype(np.uint8))[0]
    return tuple(
        slice(max(s.start - _CROP_PAD, 0), min(s.stop + _CROP_PAD, n)) for s, n in zip(box, union.shape, strict=True)
    )


def _dice(ref: np.ndarray, pred: np.ndarray) -> float:
    # panoptica's _compute_dice_coefficient: integer counts, one true division
    return float(2 * np.count_nonzero(ref & pred) / (np.count_nonzero(ref) + np.count_nonzero(pred)))


def _legacy(pred: np.ndarray, ref: np.ndarray, *, with_hd95: bool = True) -> tuple[float, float]:
    """(legacy_dice, legacy_hd95) of two boolean masks, penalty applied."""
    if not pred.any() and not ref.any():
        return math.nan, math.nan
    if not (pred & ref).any():
        # empty prediction, empty reference or no overlap: panoptica's zero-TP results ZERO / INF
        return 0.0, HD95_PENALTY_MM
    box = _crop(pred, ref)
    pred, ref = pred[box], ref[box]
    # spacing None: panoptica computes global metrics without the voxel spacing
    return _dice(ref, pred), (pooled_hd95(pred, ref) if with_hd95 else math.nan)


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    # cc3d (26-connectivity) for 3D, scipy's default cross for 2D, as panoptica chooses
    structure = np.ones((3,) * mask.ndim, dtype=bool) if mask.ndim >= 3 else None
    labels, n = ndimage.label(mask, structure=structure)
    return labels, int(n)


def _lesion(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], *, with_hd95: bool = True
) -> tuple[float, float, int, int, int]:
    """(lesion_dice, lesion_hd95, tp, fp, fn) of two boolean masks."""
    if not pred.any() and not ref.any():
        return math.nan, math.nan, 0, 0, 0
    box = _crop(pred, ref)
    pred_lab, n_pred = _components(pred[box])
    ref_lab, n_ref = _components(ref[box])
    if n_pred == 0 or n_ref == 0:
        return 0.0, math.inf, 0, n_pred, n_ref

    # Dice of every overlapping (reference, prediction) pair from one table of intersection counts.
    both = (ref_lab > 0) & (pred_lab > 0)
    codes, inter = np.unique(ref_lab[both].astype(np.int64) * (n_pred + 1) + pred_lab[both], return_counts=True)
    pair_ref, pair_pred = codes // (n_pred + 1), codes % (n_pred + 1)
    ref_size = np.bincount(ref_lab.ravel(), minlength=n_ref + 1).astype(np.float64)
    pred_size = np.bincount(pred_lab.ravel(), minlength=n_pred + 1).astype(np.float64)
    pair_dice = 2.0 * inter.astype(np.float64) / (ref_size[pair_ref] + pred_size[pair_pred])

    cost = np.full((n_ref, n_pred), _NO_MATCH_COST)
    eligible = pair_dice >= _MATCH_THRESHOLD
    cost[pair_ref[eligible] - 1, pair_pred[eligible] - 1] = 1.0 - pair_dice[eligible]
    rows, cols = linear_sum_assignment(cost)
    matched = [(r + 1, c + 1) for r, c in zip(rows, cols, strict=True) if cost[r, c] < 1.0]
    tp = len(matched)
    if tp == 0:
        return 0.0, math.inf, 0, n_pred, n_ref

    ref_boxes, pred_boxes = ndimage.find_objects(ref_lab), ndimage.find_objects(pred_lab)
    dices, hd95s = [], []
    for r, p in matched:  # in reference-label order, as panoptica lists its instances
        sub = tuple(
            slice(max(min(a.start, b.start) - _CROP_PAD, 0), min(max(a.stop, b.stop) + _CROP_PAD, n))
            for a, b, n in zip(ref_boxes[r - 1], pred_boxes[p - 1], ref_lab.shape, strict=True)
        )
        ref_i, pred_i = ref_lab[sub] == r, pred_lab[sub] == p
        dices.append(_dice(ref_i, pred_i))
        if with_hd95:
            hd95s.append(pooled_hd95(pred_i, ref_i, spacing))
    lesion_hd95 = float(np.average(hd95s)) if with_hd95 else math.nan
    return float(np.average(dices)), lesion_hd95, tp, n_pred - tp, n_ref - tp


def brats_region_figures(pred: Any, ref: Any, spacing: Sequence[float] | None = None) -> RegionFigures:
    """All figures of one region from its two binary masks.

    Args:
        pred: predicted region mask, shape (H, W, D) (or (H, W)), boolean or 0/1, numpy or torch.
        ref: reference region mask, same shape.
        spacing: voxel size in mm per array axis (default 1 mm); used by ``lesion_hd95`` only, as in the package.
    """
    pred_m, ref_m = _as_mask(pred, "pred"), _as_mask(ref, "ref")
    _check_pair(pred_m, ref_m)
    sp = _spacing(spacing, pred_m.ndim)
    legacy_dice, legacy_hd95 = _legacy(pred_m, ref_m)
    lesion_dice, lesion_hd95, tp, fp, fn = _lesion(pred_m, ref_m, sp)
    return RegionFigures(legacy_dice, legacy_hd95, lesion_dice, lesion_hd95, tp, fp, fn)


def brats_figures_from_regions(
    pred_regions: Any, ref_regions: Any, spacing: Sequence[float] | None = None
) -> dict[str, RegionFigures]:
    """Figures of every region from region masks, as the bundles' evaluators hold them.

    Args:
        pred_regions: binary masks (3, H, W, D) in the order of MONAI's ``ConvertToMultiChannelBasedOnBratsClasses``,
            (TC, WT, ET). Each channel defines its region exactly as the package's label groups do.
        ref_regions: reference masks, same shape and order.
        spacing: voxel size in mm per spatial axis (default 1 mm).

    Returns:
        ``{"tc": RegionFigures, "wt": ..., "et": ...}``.
    """
    pred_a, ref_a = _to_numpy(pred_regions), _to_numpy(ref_regions)
    if pred_a.shape[:1] != (len(REGIONS),) or ref_a.shape[:1] != (len(REGIONS),):
        raise ValueError(f"expected (3, *spatial) region masks (TC, WT, ET), got {pred_a.shape} and {ref_a.shape}")
    return {r: brats_region_figures(pred_a[i], ref_a[i], spacing) for i, r in enumerate(REGIONS)}


def brats_label_regions(labels: Any, convention: str = "brats2023") -> NDArray[np.bool_]:
    """Region masks (TC, WT, ET), shape (3, *spatial), of a label map of ``convention``.

    Raises:
        BratsLabelError: for a value the convention does not have (the package refuses unknown labels too; a 4 in
            a BraTS 2023 map or a 3 in a 2021 map means the convention is wrong).
    """
    lab = _to_numpy(labels)
    check_brats_labels(lab, convention)
    et_label = BRATS_CONVENTIONS[convention].et_label
    et = lab == et_label
    tc = et | (lab == 1)
    return np.stack([tc, tc | (lab == 2), et])


def brats_figures(
    pred: Any, ref: Any, convention: str = "brats2023", spacing: Sequence[float] | None = None
) -> dict[str, RegionFigures]:
    """Figures of every region from two label maps.

    Args:
        pred: predicted label map (H, W, D), numpy or torch, integer labels of ``convention``.
        ref: reference label map, same shape and convention.
        convention: ``"brats2023"`` (ET = 3) or ``"brats2021"`` (ET = 4); the figures of a 2021 pair equal the
            package's on the pair converted to 2023 values (:func:`common.data.brats.convert_brats_labels`).
        spacing: voxel size in mm per array axis (default 1 mm).

    Returns:
        ``{"tc": RegionFigures, "wt": ..., "et": ...}``.
    """
    return brats_figures_from_regions(
        brats_label_regions(pred, convention), brats_label_regions(ref, convention), spacing
    )


def _case_spacings(y_pred: torch.Tensor, y: torch.Tensor, batch: int, ndim: int) -> list[tuple[float, ...]]:
    """Per-case voxel size from the label's (else the prediction's) affine, 1 mm for plain tensors."""
    for t in (y, y_pred):
        if isinstance(t, MetaTensor):
            # the affine, not the loader's "pixdim" entry, so that any resampling is followed
            return label_spacing(t)
    return [(1.0,) * ndim] * batch


class BratsMetric(CumulativeIterationMetric):
    """One figure of one BraTS region per case, as the official ``brats-evaluation`` package computes it.

    Args:
        metric: ``"legacy_dice"``, ``"legacy_hd95"``, ``"lesion_dice"`` or ``"lesion_hd95"`` (module docstring).
        region: ``"tc"``, ``"wt"`` or ``"et"``; selects the channel when the input holds all three regions.
        spacing: voxel size in mm per spatial axis for every case; by default read from the label's
            ``MetaTensor`` affine (``pixdim``), else 1 mm. Only ``lesion_hd95`` depends on it.
        reduction: MONAI reduction of :meth:`aggregate`; the default averages the cases that are not NaN (a region
            absent from prediction and reference), and gives 0 when every case is NaN, as MONAI's metrics do. One
            case with an infinite ``lesion_hd95`` (a missed or false-positive-only region) makes that mean infinite,
            as it makes the package's own mean.
        get_not_nans: :meth:`aggregate` also returns the number of cases it averaged.

    Inputs ``y_pred`` and ``y`` are batch-first binary masks (B, 1, H, W, D) of the region (MONAI's ``SplitDimd``
    on region channels, keys such as ``pred_wt`` / ``label_wt``) or (B, 3, H, W, D) region channels in the order
    TC, WT, ET. Values per case come back shaped (B, 1), float64.

    Example::

        IgniteMetricHandler(
            metric_fn=BratsMetric("lesion_dice", "wt"),
            output_transform=from_engine(["pred_wt", "label_wt"]),
            save_details=True,
        )
    """

    def __init__(
        self,
        metric: str,
        region: str,
        spacing: Sequence[float] | None = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        self.metric = look_up_option(metric, METRICS)
        self.region = look_up_option(region, REGIONS)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _value(self, pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> float:
        if self.metric.startswith("legacy"):
            dice, hd95 = _legacy(pred, ref, with_hd95=self.metric == "legacy_hd95")
            return dice if self.metric == "legacy_dice" else hd95
        dice, hd95, _, _, _ = _lesion(pred, ref, spacing, with_hd95=self.metric == "lesion_hd95")
        return dice if self.metric == "lesion_dice" else hd95

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """Values (B, 1) of ``y_pred`` and ``y`` (B, C, H, W[, D]) with C = 1 or 3; ``spacing=`` overrides."""
        if y is None:
            raise ValueError("BratsMetric needs the reference y")
        if y_pred.shape != y.shape or y_pred.ndim not in (4, 5):
            raise ValueError(f"expected y_pred and y of one shape (B, C, H, W[, D]), got {y_pred.shape}, {y.shape}")
        channels = y_pred.shape[1]
        if channels not in (1, len(REGIONS)):
            raise ValueError(f"expected 1 channel (the region) or 3 (TC, WT, ET), got {channels}")
        channel = 0 if channels == 1 else REGIONS.index(self.region)
        batch, ndim = y_pred.shape[0], y_pred.ndim - 2
        spacing = kwargs.get("spacing", self.spacing)
        if spacing is not None:
            spacings = [_spacing(spacing, ndim)] * batch
        elif self.metric == "lesion_hd95":
            spacings = _case_spacings(y_pred, y, batch, ndim)
        else:  # the other figures do not depend on the spacing
            spacings = [(1.0,) * ndim] * batch
        preds, refs = _as_mask(y_pred[:, channel], "y_pred"), _as_mask(y[:, channel], "y")
        values = [self._value(preds[b], refs[b], spacings[b]) for b in range(batch)]
        # float64 keeps the values identical to the package's; on the input's device for distributed gathering
        return torch.tensor(values, dtype=torch.float64, device=y_pred.device).reshape(batch, 1)

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduction of the per-case values gathered so far (NaN cases left out)."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"the data to aggregate must be a PyTorch Tensor, got {type(data)}")
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f


def brats_metric_handlers(pred: str = "pred", label: str = "label", prefix: str = "brats") -> dict[str, Any]:
    """The twelve BraTS figures as ``additional_metrics`` of a MONAI evaluator: ``{"<prefix>_<metric>_<region>":
    IgniteMetricHandler}``, each reading the region masks ``<pred>_<region>`` and ``<label>_<region>`` that
    ``SplitDimd`` leaves in the engine output, with per-case details for ``MetricsSaver``.
    """
    from monai.handlers import IgniteMetricHandler, from_engine

    return {
        f"{prefix}_{metric}_{region}": IgniteMetricHandler(
            metric_fn=BratsMetric(metric, region),
            output_transform=from_engine([f"{pred}_{region}", f"{label}_{region}"]),
            save_details=True,
        )
        for metric in METRICS
        for region in REGIONS
    }
