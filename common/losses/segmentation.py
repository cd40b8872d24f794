"""Segmentation losses for the BraTS bundles, and how each loss option is written in a bundle config.

MONAI covers most options; this module adds only :class:`DiceJaccardCELoss`, the MTCM-KD lab's
``combination_loss``. The options, as ``train.json`` entries:

**Dice + CE** (4-class softmax; labels mapped to class indices first with
``common.data.brats.ConvertBratsLabelsd(keys="label", source="brats2021", target="index")``)::

    "loss": {"_target_": "DiceCELoss", "to_onehot_y": true, "softmax": true, "batch": true}

**Dice + Focal** (same targets)::

    "loss": {"_target_": "DiceFocalLoss", "to_onehot_y": true, "softmax": true, "gamma": 2.0}

**Dice + Jaccard + CE** (MTCM-KD, ⅓ each, background included)::

    "loss": {"_target_": "common.losses.segmentation.DiceJaccardCELoss"}

**Region-based sigmoid losses on TC/WT/ET** (3 output channels). The label pipeline is
``ConvertToMultiChannelBasedOnBratsClassesd(keys="label", et_label=4)`` (3 for BraTS 2023) followed by
``{"_target_": "EnsureTyped", "keys": "label", "dtype": "$torch.float32"}``: MONAI's converter returns a BOOL
stack, and since MONAI 1.5 ``DiceLoss(squared_pred=true)`` crashes on bool targets
(``linalg.vector_norm: Expected a floating point or complex tensor``). Then one of::

    "loss": {"_target_": "DiceLoss", "sigmoid": true, "squared_pred": true, "smooth_nr": 0, "smooth_dr": 1e-05}
    "loss": {"_target_": "DiceFocalLoss", "sigmoid": true, "gamma": 0.0}        (Dice + per-channel BCE)
    "loss": {"_target_": "common.losses.segmentation.DiceJaccardCELoss", "sigmoid": true}
    "loss": {"_target_": "DiceCELoss", "sigmoid": true}                          (see the caveat below)

Caveat, verified on MONAI 1.6.1: ``DiceCELoss(sigmoid=True)`` applies the sigmoid only to its Dice term; with more
than one channel its cross-entropy term is ``torch.nn.CrossEntropyLoss`` with the multi-hot target used as class
probabilities, i.e. a *softmax* across TC/WT/ET, which couples the overlapping regions. It runs, but it is not
Dice + BCE; ``DiceFocalLoss(sigmoid=True, gamma=0.0)`` is (a focal loss with gamma 0 is BCE).

**Deep supervision**: wrap any of the above in MONAI's ``DeepSupervisionLoss``, which takes the list of outputs a
network returns in training mode (full resolution first), resizes the target to each output by nearest-neighbour
interpolation and sums the weighted losses (``weight_mode`` ``"exp"``: 1, 1/2, 1/4, ...; ``"same"``; ``"two"``:
1, 1/2, 1/2, ...; or explicit ``weights``)::

    "loss_base": {"_target_": "common.losses.segmentation.DiceJaccardCELoss"},
    "loss": {"_target_": "DeepSupervisionLoss", "loss": "@loss_base", "weight_mode": "exp"}

The target must be a float tensor there (``F.interpolate`` rejects integer tensors). MONAI's ``DynUNet`` returns
its deep-supervision heads stacked in one tensor ``(B, heads, C, *spatial)``, so unbind it into a list first;
``SegResNetDS`` returns a list. The MTCM-KD lab weights (one 64³ level at 0.10 · 0.7) are explicit ``weights``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.losses import DiceLoss
from monai.networks.utils import one_hot
from torch.nn.modules.loss import _Loss

__all__ = ["DiceJaccardCELoss"]


def _plain(x: torch.Tensor) -> torch.Tensor:
    # MetaTensor meta data has no meaning for a scalar loss; as_tensor() keeps the autograd graph
    return x.as_tensor() if isinstance(x, MetaTensor) else x


class DiceJaccardCELoss(_Loss):
    """Weighted sum of soft Dice loss, soft Jaccard loss and cross entropy: the MTCM-KD ``combination_loss``.

    .. math::

        L = \\lambda_D (1 - \\mathrm{Dice}) + \\lambda_J (1 - \\mathrm{Jaccard}) + \\lambda_{CE}\\,\\mathrm{CE},
        \\quad \\lambda_D = \\lambda_J = \\lambda_{CE} = 1/3

    with, per class ``c``, sums running over the batch and all voxels (MONAI ``DiceLoss(batch=True)``)::

        I_c = sum(p_c * g_c),  S_c = sum(p_c) + sum(g_c)
        Dice = mean_c (2 I_c + smooth_nr) / (S_c + smooth_dr)
        Jaccard = mean_c (I_c + smooth_nr) / (S_c - I_c + smooth_dr)

    ``p = softmax(logits)`` and ``g = one_hot(target)`` over all classes, background included, and CE is plain
    ``F.cross_entropy`` (mean over voxels, no class weights). With ``sigmoid=True`` (region-based multi-label
    targets such as TC/WT/ET) ``p = sigmoid(logits)``, ``g`` is the multi-channel target itself and CE is
    ``F.binary_cross_entropy_with_logits``.

    Smoothing: the lab's ``dice_loss``/``jaccard_loss`` use ``2I / (S + eps)`` and ``I / (S - I + eps)`` with
    ``eps = 1e-7`` and nothing in the numerator; the defaults ``smooth_nr=0, smooth_dr=1e-7`` reproduce them
    exactly. (MONAI's Jaccard is ``(2I + nr) / (2(S - I) + dr)``, so the Jaccard term is built with doubled
    constants.) A consequence kept for fidelity: a class absent from both target and prediction of the whole batch
    scores Dice 0, not 1; set ``smooth_nr`` > 0 (e.g. 1e-5 with ``smooth_dr=1e-5``, MONAI's default) to score it 1.

    Where the sums run (``reduction_dims``): by default over the batch and every voxel, one Dice and one Jaccard
    per class (volumetric). The authors' ``combination_loss`` (RhineLT/mtcm-kd ``loss_functions/losses.py``
    @0d44741) sums over ``dims = (0,) + tuple(range(2, true.ndimension()))`` of the ``(B, C, H, W, D)``
    probabilities, where ``true`` is their ``(B, H, W, D)`` label: one dimension fewer than the probabilities, so
    ``dims = (0, 2, 3)`` and the last spatial axis is never summed. Their Dice and Jaccard are therefore one term per
    class and per slice along ``D``, then ``.mean()`` over all of them; a slice without the class in the truth has
    ``I = 0`` and scores 0 (Dice and Jaccard), as a class absent from the whole batch does in the volumetric form.
    ``reduction_dims=(0, 2, 3)`` reproduces that: I, S are summed over the given dimensions of the ``(B, C, *S)``
    probability tensor and each Dice/Jaccard term is averaged over every dimension left (classes included).

    Args:
        sigmoid: region-based mode, see above. The target must then have the same shape as the input.
        include_background: include channel 0 in the Dice and Jaccard terms (the lab does); CE always uses all.
        lambda_dice: weight of ``1 - Dice``.
        lambda_jaccard: weight of ``1 - Jaccard``.
        lambda_ce: weight of the (binary) cross entropy.
        smooth_nr: added to the Dice and Jaccard numerators (``2I`` and ``I``).
        smooth_dr: added to the Dice and Jaccard denominators (``S`` and ``S - I``).
        reduction_dims: dimensions of the ``(B, C, *spatial)`` input summed into each Dice and Jaccard term, the
            others averaged; must include 0 (the batch) and not 1 (the classes). None (default): 0 and every spatial
            dimension, the volumetric form; ``(0, 2, 3)`` on 3D input: the authors' per-slice form, see above.
    """

    def __init__(
        self,
        sigmoid: bool = False,
        include_background: bool = True,
        lambda_dice: float = 1.0 / 3.0,
        lambda_jaccard: float = 1.0 / 3.0,
        lambda_ce: float = 1.0 / 3.0,
        smooth_nr: float = 0.0,
        smooth_dr: float = 1e-7,
        reduction_dims: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if reduction_dims is not None:
            reduction_dims = tuple(sorted({int(d) for d in reduction_dims}))
            if 0 not in reduction_dims or 1 in reduction_dims or min(reduction_dims) < 0:
                raise ValueError(
                    f"reduction_dims must hold the batch dimension 0, not the class dimension 1, and no negative "
                    f"index; got {list(reduction_dims)}."
                )
        self.reduction_dims = reduction_dims
        self.include_background = include_background
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)
        for name, value in (("lambda_dice", lambda_dice), ("lambda_jaccard", lambda_jaccard), ("lambda_ce", lambda_ce)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        self.sigmoid = sigmoid
        self.lambda_dice = float(lambda_dice)
        self.lambda_jaccard = float(lambda_jaccard)
        self.lambda_ce = float(lambda_ce)
        # both terms get probabilities and a one-hot/multi-hot target prepared once in forward()
        self.dice = DiceLoss(
            include_background=include_background, batch=True, smooth_nr=smooth_nr, smooth_dr=smooth_dr
        )
        self.jaccard = DiceLoss(
            include_background=include_background,
            batch=True,
            jaccard=True,
            smooth_nr=2.0 * smooth_nr,
            smooth_dr=2.0 * smooth_dr,
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: logits ``(B, C, *spatial)``.
            target: softmax mode: class indices ``(B, 1, *spatial)`` (any numeric dtype, values in ``[0, C)``) or a
                one-hot ``(B, C, *spatial)``; sigmoid mode: binary/float ``(B, C, *spatial)``.

        Returns:
            scalar loss.
        """
        input, target = _plain(input), _plain(target)
        if input.ndim < 3:
            raise ValueError(f"input must be (B, C, *spatial), got shape {tuple(input.shape)}.")
        if target.ndim != input.ndim or target.shape[0] != input.shape[0] or target.shape[2:] != input.shape[2:]:
            raise ValueError(
                f"target shape {tuple(target.shape)} does not fit input shape {tuple(input.shape)}: expected "
                f"(B, 1, *spatial) class indices or (B, C, *spatial)."
            )
        n_classes = input.shape[1]

        if self.sigmoid:
            if target.shape[1] != n_classes:
                raise ValueError(
                    f"sigmoid=True needs a multi-channel target like the input {tuple(input.shape)}, got "
                    f"{tuple(target.shape)}; e.g. ConvertToMultiChannelBasedOnBratsClassesd then a float cast."
                )
            truth = target.to(input.dtype)  # bool targets from MONAI's BraTS converter
            probs = torch.sigmoid(input)
            ce = F.binary_cross_entropy_with_logits(input, truth)
        else:
            if n_classes < 2:
                raise ValueError("softmax mode needs at least 2 channels; use sigmoid=True for one channel.")
            if target.shape[1] == 1:
                index = target.long()
                lo, hi = int(index.min()), int(index.max())
                if lo < 0 or hi >= n_classes:
                    raise ValueError(
                        f"target holds class index {hi if hi >= n_classes else lo} outside [0, {n_classes}); "
                        "BraTS labels {0,1,2,4} must first be mapped to class indices, e.g. with "
                        "common.data.brats.ConvertBratsLabelsd(source='brats2021', target='index')."
                    )
                truth = one_hot(index, num_classes=n_classes, dtype=input.dtype)
                index = index[:, 0]
            elif target.shape[1] == n_classes:
                truth = target.to(input.dtype)
                index = target.argmax(dim=1)
            else:
                raise ValueError(
                    f"target has {target.shape[1]} channels; expected 1 (class indices) or {n_classes} (one-hot)."
                )
            probs = torch.softmax(input, dim=1)
            ce = F.cross_entropy(input, index)

        if self.reduction_dims is None:
            dice = self.dice(probs, truth)
            jaccard = self.jaccard(probs, truth)
        else:
            dice, jaccard = self._partial_sum_terms(probs, truth)
        return self.lambda_dice * dice + self.lambda_jaccard * jaccard + self.lambda_ce * ce

    def _partial_sum_terms(self, probs: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``1 - Dice`` and ``1 - Jaccard`` with the sums over ``reduction_dims`` only, averaged over the rest."""
        dims = self.reduction_dims
        if max(dims) >= probs.ndim:
            raise ValueError(f"reduction_dims {list(dims)} do not fit an input of {probs.ndim} dimensions.")
        if not self.include_background:
            probs, truth = probs[:, 1:], truth[:, 1:]
        intersection = torch.sum(probs * truth, dim=dims)
        cardinality = torch.sum(probs + truth, dim=dims)
        dice = (2.0 * intersection + self.smooth_nr) / (cardinality + self.smooth_dr)
        jaccard = (intersection + self.smooth_nr) / (cardinality - intersection + self.smooth_dr)
        return 1.0 - dice.mean(), 1.0 - jaccard.mean()
