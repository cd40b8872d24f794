"""The RefNet training loss: CE + Dice against the ground truth, plus CE against the base model's prediction.

RefNet (seed paper 003, eq. 4 and Algorithm 1) trains with

.. math::

    L(T, S, P) = L_{CE}(P, T) + L_{Dice}(P, T) + w \\, L_{CE}(P, S)

where ``P`` is RefNet's softmax output, ``T`` the ground truth and ``S`` the base model's (Swin UNETR's) label map;
the paper uses ``w = 1``. The third term keeps the refined output close to the base prediction, i.e. pulls RefNet
toward the identity; the research notes (``fct_refnet.md`` section 5) suggest down-weighting it, hence ``base_weight``.

As a bundle's ``train.json`` loss, with the two label maps concatenated into one 2-channel ``label``
(``ConcatItemsd(keys=["label", "base"], name="label")``, ground truth first), so that MONAI's ``SupervisedTrainer``
can call ``loss(pred, label)`` unchanged::

    "loss": {"_target_": "common.losses.refinement.RefinementLoss", "base_weight": 1.0}
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.losses import DiceCELoss
from torch.nn.modules.loss import _Loss

__all__ = ["RefinementLoss"]


def _plain(x: torch.Tensor) -> torch.Tensor:
    # MetaTensor meta data has no meaning for a scalar loss; as_tensor() keeps the autograd graph
    return x.as_tensor() if isinstance(x, MetaTensor) else x


class RefinementLoss(_Loss):
    """RefNet's three-term loss: ``CE(P, GT) + Dice(P, GT) + base_weight * CE(P, S_base)``.

    ``forward(input, target)``:

    - ``input``: ``(B, C, *spatial)`` logits (no softmax), ``C`` classes background included;
    - ``target``: ``(B, 2, *spatial)`` class-id maps (float or integer): channel 0 the ground truth, channel 1 the
      base model's label map.

    The first two terms are MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)`` on channel 0, the third is
    ``F.cross_entropy(input, base)``. How they read the paper's equations:

    - **CE** (eq. 1 and 3) is written as a sum over pixels; Algorithm 1 calls PyTorch's ``crossEntropyLoss``,
      whose default is the *mean* over pixels. The mean is used (a sum would scale with the slice size and swamp
      the Dice term).
    - **Dice** (eq. 2) is ``1 - (1/C) sum_c (2 sum_i P_ic T_ic + eps) / (sum_i P_ic + sum_i T_ic + eps)`` with ``C``
      all classes (the paper scores background as one of its 13 classes) and ``i`` over all pixels. Hence
      ``include_background=True`` (MONAI's default) and ``batch=True``: the sums run over every pixel of the batch,
      not per slice. Per slice (MONAI's default ``batch=False``), an organ absent from a 2D slice's ground truth
      scores ``eps / (sum P + eps)``, about 0, for any stray probability mass, which makes the loss noisy on the many
      slices that hold few organs. ``eps`` is MONAI's ``smooth_nr = smooth_dr = 1e-5``.

    Args:
        base_weight: weight ``w`` of ``CE(P, S_base)`` (paper: 1; 0 gives plain DiceCE against the ground truth).
        include_background: include class 0 in the Dice term (the CE terms always use every class).
        batch: sum Dice intersections and unions over the whole batch (True) or per item (False).
        lambda_dice: weight of the Dice term against the ground truth (1).
        lambda_ce: weight of the CE term against the ground truth (1).
        smooth_nr: added to the Dice numerator.
        smooth_dr: added to the Dice denominator.

    Raises:
        ValueError: for a negative weight, or in ``forward`` for a target without exactly 2 channels, mismatched
            shapes, or class ids that are not integers in ``[0, C)``.
    """

    def __init__(
        self,
        base_weight: float = 1.0,
        include_background: bool = True,
        batch: bool = True,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
    ) -> None:
        super().__init__()
        if base_weight < 0:
            raise ValueError(f"RefinementLoss: base_weight must be >= 0, got {base_weight}.")
        self.base_weight = float(base_weight)
        self.dice_ce = DiceCELoss(
            include_background=include_background,
            to_onehot_y=True,
            softmax=True,
            batch=batch,
            lambda_dice=lambda_dice,
            lambda_ce=lambda_ce,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` logits and ``(B, 2, *S)`` [ground truth, base label map] -> scalar loss."""
        input, target = _plain(input), _plain(target)
        if target.dim() != input.dim() or target.shape[1] != 2 or target.shape[2:] != input.shape[2:]:
            raise ValueError(
                "RefinementLoss expects a target of shape (B, 2, *spatial) holding the ground truth (channel 0) and "
                f"the base model's label map (channel 1), matching the input {list(input.shape)}; got "
                f"{list(target.shape)}. Build it with ConcatItemsd(keys=['label', 'base'], name='label')."
            )
        num_classes = input.shape[1]
        ids = torch.round(target)
        if bool(torch.any(torch.abs(target - ids) > 1e-3)) or bool(torch.any((ids < 0) | (ids >= num_classes))):
            raise ValueError(
                f"RefinementLoss: target channels must hold integer class ids in [0, {num_classes}); found values "
                f"from {float(target.min())} to {float(target.max())}."
            )
        ground_truth, base = ids[:, :1], ids[:, 1].long()
        loss = self.dice_ce(input, ground_truth)
        if self.base_weight > 0:
            loss = loss + self.base_weight * F.cross_entropy(input, base)
        return loss
