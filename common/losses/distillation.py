"""Knowledge-distillation pieces of MTCM-KD: the temperature KD loss and the performance-aware teacher weights.

Sourced from RhineLT/mtcm-kd ``training.py`` and ``metrics/eval.py`` @0d44741 (research notes ``brats_methods.md``
sections 1.4 and 1.8):

- :func:`kd_loss`: KL divergence between temperature-softened class distributions, in the authors' reduction
  (``"batchmean"``, scaled by T) or the per-voxel mean scaled by T^2 (Hinton et al. 2015, ``"voxel_mean"``);
- :func:`whole_tumor_dice`: the per-case hard-argmax whole-tumour Dice each teacher is scored by, 3D or the
  authors' per-slice mean (``metrics/eval.py``);
- :func:`performance_weights` and :class:`PerformanceTeacherWeights`: per-teacher KD weights proportional to the
  teachers' mean whole-tumour Dice over the previous epoch, with a resumable state.

For the comparison method of Choi et al. 2023 (single-stage KD with a Barlow Twins loss on latent features, research
notes section 3), :class:`BarlowTwinsLoss`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.metrics import compute_dice
from torch.nn.modules.loss import _Loss

from common.metrics.mtcm_kd import slice_dice

__all__ = [
    "BARLOW_TWINS_SAMPLES",
    "KD_REDUCTIONS",
    "BarlowTwinsLoss",
    "PerformanceTeacherWeights",
    "kd_loss",
    "performance_weights",
    "whole_tumor_dice",
]

#: ``"batchmean"``: the authors' KD (voxel sum / batch size, times T); ``"voxel_mean"``: per-voxel mean times T^2.
KD_REDUCTIONS = ("batchmean", "voxel_mean")


def _plain(x: torch.Tensor) -> torch.Tensor:
    # MetaTensor meta data has no meaning for a loss or a score; as_tensor() keeps the autograd graph
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 20.0,
    reduction: str = "voxel_mean",
) -> torch.Tensor:
    """Temperature knowledge-distillation loss between two ``(B, C, *spatial)`` logit maps; the teacher is detached.

    With ``p = softmax(teacher / T)`` and ``log q = log_softmax(student / T)`` over the class axis ``C``, and the
    per-voxel divergence ``KL_v = sum_c p_c (log p_c - log q_c)``:

    - ``"batchmean"`` (the MTCM-KD authors' ``kd_loss``, faithful mode)::

          T * sum_{b, v} KL_v / B

      i.e. ``T * torch.nn.KLDivLoss(reduction="batchmean")``: summed over every voxel and divided by the batch size
      only, and scaled by ``T``, not ``T^2``. Its size grows with the number of voxels (about 2.1 M at 128^3),
      which the authors' small KD weights offset.
    - ``"voxel_mean"`` (corrected mode)::

          T^2 * sum_{b, v} KL_v / (B * V)

      the mean divergence per voxel with Hinton's ``T^2``, which keeps the gradient scale independent of ``T`` and of
      the patch size. It equals ``"batchmean"`` times ``T / V`` for ``V`` voxels per case.

    Args:
        student_logits: ``(B, C, *spatial)``, the distribution being trained.
        teacher_logits: ``(B, C, *spatial)``, the target; detached here, so no gradient reaches the teacher.
        temperature: ``T`` > 0 (20 in MTCM-KD).
        reduction: ``"batchmean"`` or ``"voxel_mean"``, see above.

    Returns:
        scalar loss.
    """
    if reduction not in KD_REDUCTIONS:
        raise ValueError(f"kd_loss: unknown reduction {reduction!r}; expected one of {KD_REDUCTIONS}.")
    if temperature <= 0:
        raise ValueError(f"kd_loss: temperature must be > 0, got {temperature}.")
    student_logits, teacher_logits = _plain(student_logits), _plain(teacher_logits)
    if student_logits.ndim < 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"kd_loss: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same (B, C, *spatial) shape."
        )
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    p = F.softmax(teacher_logits.detach() / temperature, dim=1)
    divergence = F.kl_div(log_q, p, reduction="sum")
    batch = student_logits.shape[0]
    if reduction == "batchmean":
        return temperature * divergence / batch
    voxels = student_logits[0, 0].numel()
    return temperature**2 * divergence / (batch * voxels)


def whole_tumor_dice(
    logits: torch.Tensor, labels: torch.Tensor, tumor_classes: Sequence[int] = (1, 2, 3), per_slice: bool = False
) -> torch.Tensor:
    """Per-case hard whole-tumour Dice of a softmax segmentation: the score the MTCM-KD teachers are weighted by.

    The prediction is ``argmax(logits)`` in ``tumor_classes``; the truth is the label in ``tumor_classes`` (class
    indices 1 NCR, 2 ED, 3 ET after ``ConvertBratsLabelsd(target="index")``), the authors' ``whole_tumor`` region.

    - ``per_slice=False`` (corrected): one 3D Dice per case. A case with no tumour in either scores 1, no tumour in the
      truth only 0 (MONAI ``compute_dice(ignore_empty=False)``).
    - ``per_slice=True`` (faithful): the authors' score (``training.py`` ``calculate_wt_dice_for_teacher_models`` ->
      ``metrics/eval.py`` ``multiclass_dice_coeff(...)["whole_tumor"]``), the 2D Dice of every slice along the first
      spatial axis with epsilon 1e-6, a slice empty in both scoring 1, averaged over the slices
      (:func:`common.metrics.mtcm_kd.slice_dice`). It is not the 3D Dice: empty slices raise it, missed tumour
      slices lower it, so the two can rank teachers differently.

    Args:
        logits: ``(B, C, *spatial)``.
        labels: class indices ``(B, 1, *spatial)`` or a one-hot ``(B, C, *spatial)``.
        tumor_classes: class indices whose union is the whole tumour.
        per_slice: the authors' per-slice Dice instead of the 3D one.

    Returns:
        ``(B,)`` Dice per case, no gradient.
    """
    logits, labels = _plain(logits).detach(), _plain(labels).detach()
    if labels.ndim != logits.ndim or labels.shape[0] != logits.shape[0] or labels.shape[2:] != logits.shape[2:]:
        raise ValueError(
            f"whole_tumor_dice: labels {tuple(labels.shape)} do not fit logits {tuple(logits.shape)}; expected "
            "(B, 1, *spatial) class indices or a (B, C, *spatial) one-hot."
        )
    if labels.shape[1] == 1:
        index = labels.long()
    elif labels.shape[1] == logits.shape[1]:
        index = labels.argmax(dim=1, keepdim=True)
    else:
        raise ValueError(
            f"whole_tumor_dice: labels have {labels.shape[1]} channels; expected 1 (class indices) or "
            f"{logits.shape[1]} (one-hot)."
        )
    classes = torch.as_tensor(tuple(tumor_classes), device=logits.device)
    predicted = torch.isin(logits.argmax(dim=1, keepdim=True), classes).float()
    truth = torch.isin(index, classes).float()
    if per_slice:
        return slice_dice(predicted[:, 0], truth[:, 0])
    return compute_dice(predicted, truth, include_background=True, ignore_empty=False)[:, 0]


def performance_weights(mean_dice: Sequence[float] | torch.Tensor, total_weight: float = 0.15) -> list[float]:
    """KD weight per teacher from its score: ``w_i = total_weight * D_i / sum_j D_j`` (MTCM-KD, lambda = 0.15).

    When every score is 0 (no teacher has found any tumour yet, which happens early in online training) no teacher
    is better than another, so each gets ``total_weight / N`` instead of a division by zero.

    Raises:
        ValueError: for no scores, or a negative or non-finite score.
    """
    dice = torch.as_tensor(mean_dice, dtype=torch.float64).flatten()
    if dice.numel() == 0:
        raise ValueError("performance_weights: got no teacher scores.")
    if not torch.isfinite(dice).all() or (dice < 0).any():
        raise ValueError(f"performance_weights: teacher scores must be finite and >= 0, got {dice.tolist()}.")
    total = dice.sum()
    if total == 0:
        return [float(total_weight) / dice.numel()] * dice.numel()
    return (total_weight * dice / total).tolist()


class PerformanceTeacherWeights:
    """The performance-aware teacher weights of MTCM-KD: current weights plus this epoch's running Dice sums.

    During an epoch the trainer adds every teacher's per-case whole-tumour Dice (:meth:`accumulate`); at the end of
    the epoch :meth:`update` turns the mean Dice into the weights for the next epoch with :func:`performance_weights`
    and clears the sums. Before the first update the weights are ``initial_weight`` each (0.1 in the authors' code;
    their KD is off in the first epoch, so those are never used there).

    The lab averages per-batch Dice over the batches of an epoch; this averages per-case Dice over the cases, which is
    the same for a constant batch size (the authors' was 1) and weighs a short last batch correctly. Under
    ``torch.distributed`` the sums and counts are all-reduced before the update, so every rank gets the same weights.

    ``state_dict()`` / ``load_state_dict()`` make the object a checkpoint item of MONAI's ``CheckpointSaver`` /
    ``CheckpointLoader`` (``save_dict={"teacher_weights": ...}``): weights, sums and counts are restored exactly.

    Args:
        num_teachers: number of teachers (3).
        total_weight: lambda, the sum of the weights after an update (0.15).
        initial_weight: each weight before the first update (0.1).
    """

    def __init__(self, num_teachers: int = 3, total_weight: float = 0.15, initial_weight: float = 0.1) -> None:
        if num_teachers < 1:
            raise ValueError(f"PerformanceTeacherWeights: num_teachers must be >= 1, got {num_teachers}.")
        if total_weight < 0 or initial_weight < 0:
            raise ValueError(
                f"PerformanceTeacherWeights: total_weight and initial_weight must be >= 0, got {total_weight} "
                f"and {initial_weight}."
            )
        self.num_teachers = int(num_teachers)
        self.total_weight = float(total_weight)
        self.initial_weight = float(initial_weight)
        self._weights = torch.full((self.num_teachers,), self.initial_weight, dtype=torch.float64)
        self._dice_sums = torch.zeros(self.num_teachers, dtype=torch.float64)
        self._counts = torch.zeros(self.num_teachers, dtype=torch.float64)

    @property
    def weights(self) -> list[float]:
        """The current weight of each teacher."""
        return self._weights.tolist()

    def accumulate(self, dice: torch.Tensor | Sequence[float]) -> None:
        """Add per-case Dice scores: ``(num_teachers,)`` (one case each) or ``(num_teachers, B)``."""
        scores = torch.as_tensor(dice, dtype=torch.float64).detach().cpu()
        if scores.ndim == 1:
            scores = scores[:, None]
        if scores.ndim != 2 or scores.shape[0] != self.num_teachers:
            raise ValueError(
                f"PerformanceTeacherWeights.accumulate: expected ({self.num_teachers},) or ({self.num_teachers}, B) "
                f"Dice scores, got shape {tuple(scores.shape)}."
            )
        if not torch.isfinite(scores).all():
            raise ValueError(f"PerformanceTeacherWeights.accumulate: non-finite Dice {scores.tolist()}.")
        self._dice_sums += scores.sum(dim=1)
        self._counts += scores.shape[1]

    def mean_dice(self) -> list[float] | None:
        """Each teacher's mean Dice over what was accumulated since the last update; None when nothing was."""
        if not (self._counts > 0).all():
            return None
        return (self._dice_sums / self._counts).tolist()

    def update(self) -> list[float]:
        """Set the weights from the accumulated mean Dice, clear the sums and return the new weights.

        With nothing accumulated (an empty epoch) the weights stay as they are.
        """
        sums, counts = self._dice_sums.clone(), self._counts.clone()
        if dist.is_available() and dist.is_initialized():
            # every rank scored its own shard of the epoch; weigh the teachers by all of it, identically on all ranks
            backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            reduced = torch.cat([sums, counts]).to(backend_device)
            dist.all_reduce(reduced)
            sums, counts = reduced[: self.num_teachers].cpu(), reduced[self.num_teachers :].cpu()
        if (counts > 0).all():
            self._weights = torch.as_tensor(performance_weights(sums / counts, self.total_weight), dtype=torch.float64)
        self._dice_sums.zero_()
        self._counts.zero_()
        return self.weights

    def state_dict(self) -> dict[str, Any]:
        return {
            "weights": self._weights.clone(),
            "dice_sums": self._dice_sums.clone(),
            "counts": self._counts.clone(),
            "total_weight": self.total_weight,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        missing = {"weights", "dice_sums", "counts"} - set(state_dict)
        if missing:
            raise KeyError(f"PerformanceTeacherWeights.load_state_dict: missing {sorted(missing)}.")
        tensors = {
            key: torch.as_tensor(state_dict[key], dtype=torch.float64).cpu().clone()
            for key in ("weights", "dice_sums", "counts")
        }
        for key, value in tensors.items():
            if value.shape != (self.num_teachers,):
                raise ValueError(
                    f"PerformanceTeacherWeights.load_state_dict: {key} has shape {tuple(value.shape)}; this object "
                    f"has {self.num_teachers} teachers."
                )
        self._weights, self._dice_sums, self._counts = tensors["weights"], tensors["dice_sums"], tensors["counts"]
        self.total_weight = float(state_dict.get("total_weight", self.total_weight))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_teachers={self.num_teachers}, total_weight={self.total_weight}, "
            f"weights={[round(w, 6) for w in self.weights]})"
        )


#: What a row of the Barlow Twins cross-correlation averages over: every voxel of every case, or every case.
BARLOW_TWINS_SAMPLES = ("voxels", "batch")


class BarlowTwinsLoss(_Loss):
    """Barlow Twins redundancy-reduction loss (Zbontar et al. 2021) between two feature maps of the same shape.

    Used by Choi et al. 2023 (CMPB, doi 10.1016/j.cmpb.2023.107644) between the latent features of a multimodal
    teacher and a limited-modality student trained together. Each input becomes a sample x feature matrix ``(N, D)``,
    every feature standardised over the samples (mean 0, variance 1, as the original's affine-free BatchNorm:
    ``(z - mean) / sqrt(var + eps)``, biased variance); with the cross-correlation ``C = z_a^T z_b / N`` (``D x D``)::

        L = sum_i (1 - C_ii)^2 + off_diagonal_weight * sum_{i != j} C_ij^2

    How Choi et al. turn a feature map into samples is not public here (research notes section 3; their code is not
    available), so both readings are offered:

    - ``"voxels"`` (default): every voxel of every case is a sample, ``D`` = channels: ``(B, C, *S) -> (B*V, C)``.
      Works for any batch size, including the batch size 1 or 2 of 3D segmentation;
    - ``"batch"``: the original's image-level samples: each map is averaged over space, ``(B, C, *S) -> (B, C)``;
      needs ``B >= 2``.

    Neither side is detached: in a single-stage setting both networks learn from the loss. Detach one input to
    distil in one direction only.

    Args:
        off_diagonal_weight: lambda of the redundancy term (5e-3 in Zbontar et al.).
        samples: ``"voxels"`` or ``"batch"``, see above.
        eps: added to the variance in the standardisation.
    """

    def __init__(self, off_diagonal_weight: float = 5e-3, samples: str = "voxels", eps: float = 1e-5) -> None:
        super().__init__()
        if samples not in BARLOW_TWINS_SAMPLES:
            raise ValueError(f"BarlowTwinsLoss: unknown samples={samples!r}; expected one of {BARLOW_TWINS_SAMPLES}.")
        if off_diagonal_weight < 0:
            raise ValueError(f"BarlowTwinsLoss: off_diagonal_weight must be >= 0, got {off_diagonal_weight}.")
        self.off_diagonal_weight = float(off_diagonal_weight)
        self.samples = samples
        self.eps = float(eps)

    def _matrix(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2 or self.samples == "batch":
            z = x.flatten(2).mean(dim=2) if x.ndim > 2 else x
        else:
            z = x.flatten(2).transpose(1, 2).reshape(-1, x.shape[1])
        if z.shape[0] < 2:
            raise ValueError(
                f"BarlowTwinsLoss: features of shape {tuple(x.shape)} give {z.shape[0]} sample(s) with "
                f"samples={self.samples!r}; the standardisation needs at least 2 (use samples='voxels' for B = 1)."
            )
        return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + self.eps)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: ``(B, C, *S)`` feature map (or an ``(N, D)`` matrix of N samples).
            target: the other branch's features, same shape.

        Returns:
            scalar loss.
        """
        input, target = _plain(input), _plain(target)
        if input.shape != target.shape or input.ndim < 2:
            raise ValueError(
                f"BarlowTwinsLoss: the two feature maps must have the same (B, C, *S) or (N, D) shape, got "
                f"{tuple(input.shape)} and {tuple(target.shape)}."
            )
        za, zb = self._matrix(input), self._matrix(target)
        correlation = za.T @ zb / za.shape[0]
        diagonal = torch.diagonal(correlation)
        on_diagonal = (1.0 - diagonal).pow(2).sum()
        off_diagonal = correlation.pow(2).sum() - diagonal.pow(2).sum()
        return on_diagonal + self.off_diagonal_weight * off_diagonal
