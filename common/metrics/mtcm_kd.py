"""The MTCM-KD authors' Dice: 2D Dice per slice along the first spatial axis, averaged, for their six BraTS regions.

Sourced from RhineLT/mtcm-kd ``metrics/eval.py`` @0d44741, ``dice_coeff`` and ``multiclass_dice_coeff``. Their labels
are ``(B, H, W, D)`` class indices (0 background, 1 N-NE, 2 ED, 3 ET after their ``4 -> 3``) and ``dice_coeff``
recurses over leading dimensions until it reaches a 2D tensor. Called on ``(B, H, W, D)`` masks, it therefore
computes, for each case and each ``h``, the Dice of the 2D slice ``(W, D)``, averages it over ``H`` and then over the
batch. A slice is scored::

    (2 |P n T| + eps) / (|P| + |T| + eps),   eps = 1e-6,   and exactly 1 when |P| + |T| = 0

(their ``sets_sum == 0`` rule; for non-negative masks the denominator is then ``0 + eps`` anyway, and the score
``eps / eps``). A slice with tumour in the truth only scores ``eps / (|T| + eps)``, about 0. A case is the mean over
all of its slices, empty ones included, so slices without tumour anywhere pull the score towards 1. Upstream then
averages per-batch figures over the batches; the mean over cases here is the same for a constant batch size (theirs
is 1).

The regions are theirs: ``N-NE`` (class 1), ``ED`` (2), ``ET`` (3) one-vs-rest on the argmax, ``whole_tumor``
(argmax in {1, 2, 3}), ``tumor_core`` (argmax in {1, 3}) and ``mean``, the mean of the three per-class scores (not
of the regions). Their training loop scores the teachers with ``whole_tumor`` (``training.py``,
``calculate_wt_dice_for_teacher_models``) and logs these figures for every validation (``validitation_loss``);
``Fit`` keeps a checkpoint when ``mean`` improves (or when the validation loss does).

This is neither MONAI's ``DiceMetric`` nor the BraTS Dice: both are one 3D Dice per case. A per-slice mean is
usually far from the volumetric Dice (higher when many slices are empty in both, lower when many tumour slices are
missed), so the figures here are only comparable with the authors' logs. :func:`slice_dice` is the score,
:func:`mtcm_kd_slice_dice` the six regions, and :class:`SliceDiceMetric` the MONAI metric for
``IgniteMetricHandler``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.data import MetaTensor
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

__all__ = [
    "MTCM_KD_REGIONS",
    "SLICE_DICE_EPSILON",
    "SliceDiceMetric",
    "brats_class_map",
    "mtcm_kd_slice_dice",
    "slice_dice",
]

#: The authors' epsilon in ``dice_coeff``.
SLICE_DICE_EPSILON = 1e-6

#: The keys of the authors' ``dice_dict``, in their order.
MTCM_KD_REGIONS = ("mean", "N-NE", "ED", "ET", "whole_tumor", "tumor_core")

# Class indices (0 background, 1 N-NE/NCR, 2 ED, 3 ET) whose union is each region; "mean" is derived.
_REGION_CLASSES = {"N-NE": (1,), "ED": (2,), "ET": (3,), "whole_tumor": (1, 2, 3), "tumor_core": (1, 3)}
_CLASSES = ("N-NE", "ED", "ET")


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def slice_dice(pred: torch.Tensor, truth: torch.Tensor, epsilon: float = SLICE_DICE_EPSILON) -> torch.Tensor:
    """Per-case mean of the 2D Dice of every slice of two binary masks, as the authors' ``dice_coeff``.

    Args:
        pred: ``(B, *S)`` binary mask with at least two spatial dimensions; a 2D slice is the last two axes, so a
            ``(B, H, W, D)`` volume gives ``H`` slices of ``(W, D)``.
        truth: same shape.
        epsilon: added to the numerator and the denominator (1e-6).

    Returns:
        ``(B,)`` float tensor: each case's mean over its slices, a slice empty in both scoring exactly 1.
    """
    pred, truth = _plain(pred), _plain(truth)
    if pred.shape != truth.shape or pred.ndim < 3:
        raise ValueError(
            f"slice_dice: prediction {tuple(pred.shape)} and truth {tuple(truth.shape)} must have the same "
            "(B, *spatial) shape with at least two spatial dimensions."
        )
    dtype = torch.float64 if torch.float64 in (pred.dtype, truth.dtype) else torch.float32
    p = pred.to(dtype).flatten(start_dim=pred.ndim - 2)
    t = truth.to(dtype).flatten(start_dim=truth.ndim - 2)
    intersection = (p * t).sum(dim=-1)
    sets_sum = p.sum(dim=-1) + t.sum(dim=-1)
    # their ``sets_sum == 0`` branch sets the sum to 2 * intersection, which is then 0 already: eps / eps = 1
    dice = (2 * intersection + epsilon) / (sets_sum + epsilon)
    return dice.flatten(start_dim=1).mean(dim=1)


def brats_class_map(x: torch.Tensor) -> torch.Tensor:
    """``(B, *S)`` class indices (0 background, 1 N-NE, 2 ED, 3 ET) from one of three BraTS layouts.

    - ``(B, 1, *S)``: class indices already (a label after ``ConvertBratsLabelsd(target="index")``, or an argmax);
    - ``(B, 3, *S)``: TC, WT, ET masks in that order, as MONAI's ``ConvertToMultiChannelBasedOnBratsClasses`` makes
      them from class indices (ET -> 3, TC without ET -> 1, WT without TC -> 2), which inverts that conversion;
    - ``(B, 4, *S)``: logits, probabilities or a one-hot over the four classes: the argmax, as the authors take it.
    """
    x = _plain(x)
    if x.ndim < 4:
        raise ValueError(
            f"brats_class_map: expected (B, 1 | 3 | 4, *spatial) with 2+ spatial dims, got {tuple(x.shape)}."
        )
    channels = x.shape[1]
    if channels == 1:
        return x[:, 0].round().long()
    if channels == 3:
        tc, wt, et = (x[:, i] > 0.5 for i in range(3))
        index = torch.zeros(x[:, 0].shape, dtype=torch.long, device=x.device)
        index[wt] = 2
        index[tc] = 1
        index[et] = 3
        return index
    if channels == 4:
        return x.argmax(dim=1)
    raise ValueError(
        f"brats_class_map: {channels} channels; expected 1 (class indices), 3 (TC/WT/ET masks) or 4 (class scores)."
    )


def mtcm_kd_slice_dice(
    pred: torch.Tensor,
    label: torch.Tensor,
    regions: Sequence[str] = MTCM_KD_REGIONS,
    epsilon: float = SLICE_DICE_EPSILON,
) -> dict[str, torch.Tensor]:
    """The authors' ``multiclass_dice_coeff`` per case: per-slice Dice of each of ``regions``.

    Args:
        pred: the prediction in a layout :func:`brats_class_map` reads (``(B, 4, *S)`` logits or probabilities: the
            argmax, as upstream).
        label: the truth, likewise (usually ``(B, 1, *S)`` class indices).
        regions: keys of :data:`MTCM_KD_REGIONS`.
        epsilon: the slice Dice epsilon (1e-6).

    Returns:
        ``{region: (B,) tensor}``; averaging over the cases gives the authors' batch figure.
    """
    unknown = [r for r in regions if r not in MTCM_KD_REGIONS]
    if unknown:
        raise ValueError(f"mtcm_kd_slice_dice: unknown regions {unknown}; expected some of {MTCM_KD_REGIONS}.")
    pred_index, label_index = brats_class_map(pred), brats_class_map(label)
    if pred_index.shape != label_index.shape:
        raise ValueError(
            f"mtcm_kd_slice_dice: prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in batch or "
            "spatial shape."
        )
    scores: dict[str, torch.Tensor] = {}

    def score(region: str) -> torch.Tensor:
        if region not in scores:
            if region == "mean":
                scores[region] = torch.stack([score(c) for c in _CLASSES]).mean(dim=0)
            else:
                classes = torch.as_tensor(_REGION_CLASSES[region], device=pred_index.device)
                scores[region] = slice_dice(torch.isin(pred_index, classes), torch.isin(label_index, classes), epsilon)
        return scores[region]

    return {region: score(region) for region in regions}


class SliceDiceMetric(CumulativeIterationMetric):
    """The MTCM-KD authors' per-slice Dice of one or more of their regions, as a MONAI metric.

    Each case gives one value per region (:func:`mtcm_kd_slice_dice`); ``aggregate`` reduces them over the cases
    (``reduction="mean"``: the mean over cases and regions, so use one region per metric to report it). With
    ``IgniteMetricHandler`` it takes the evaluator's ``pred``/``label`` as they come from this bundle's
    post-processing (TC/WT/ET masks), or class indices, or class scores (see :func:`brats_class_map`). No value is
    ever NaN: a region empty in a whole case scores 1, as upstream.

    Args:
        region: one key of :data:`MTCM_KD_REGIONS` (``"mean"``: the mean of the N-NE, ED and ET scores, the figure
            upstream selects checkpoints with) or a sequence of them.
        epsilon: the slice Dice epsilon (1e-6).
        reduction: a ``monai.utils.MetricReduction`` over the ``(cases, regions)`` buffer.
        get_not_nans: also return the count of values aggregated.
    """

    def __init__(
        self,
        region: str | Sequence[str] = "mean",
        epsilon: float = SLICE_DICE_EPSILON,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        self.regions = (region,) if isinstance(region, str) else tuple(region)
        unknown = [r for r in self.regions if r not in MTCM_KD_REGIONS]
        if not self.regions or unknown:
            raise ValueError(f"SliceDiceMetric: regions {list(self.regions)}; expected some of {MTCM_KD_REGIONS}.")
        self.epsilon = float(epsilon)
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if y is None:
            raise ValueError("SliceDiceMetric: a label is needed.")
        scores = mtcm_kd_slice_dice(y_pred, y, self.regions, self.epsilon)
        return torch.stack([scores[r] for r in self.regions], dim=1)

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"SliceDiceMetric: the buffer must be a tensor, got {type(data).__name__}.")
        value, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (value, not_nans) if self.get_not_nans else value
