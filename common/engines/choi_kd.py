"""Single-stage knowledge distillation with a Barlow Twins loss on latent features (Choi et al., CMPB 2023).

Y. Choi, M. A. Al-masni, K.-J. Jung, R.-E. Yoo, S.-Y. Lee, D.-H. Kim, "A single stage knowledge distillation network
for brain tumor segmentation on limited MR image modalities", Computer Methods and Programs in Biomedicine 2023,
doi 10.1016/j.cmpb.2023.107644. The closest published rival of MTCM-KD, offered by the ``mtcm_kd_t1ce_student``
bundle as a comparison method (``configs/variant_choi2023.json``).

What is known (the abstract; research notes ``brats_methods.md`` section 3): a teacher on all modalities and a
student on a limited set are trained **at the same time**; knowledge passes from the teacher to the student through a
**Barlow Twins** loss on latent-space features; and **deep supervision** trains the backbones of both paths with
**cross-entropy**. The full text and code were not available, so the following are our choices, written down where
they are made and in the bundle's README:

- the backbone is the bundle's (:func:`common.networks.cohra_unet.mtcm_kd_backbone`), not nnU-Net, so the comparison
  with MTCM-KD changes the method only; the teacher takes every image channel, the student the channels of its
  modalities: T1ce alone against MTCM-KD (``configs/variant_choi2023.json``), FLAIR + T1ce as in the paper
  (``configs/variant_choi2023_paper.json`` stacked on it);
- the latent features are the bottleneck output (module ``bottleneck`` of the backbone, ``channels[-1]`` wide at
  1/2^depth resolution), every voxel a Barlow Twins sample (:class:`common.losses.distillation.BarlowTwinsLoss`);
- the Barlow Twins term transfers teacher -> student: the teacher's features are detached in the student's loss
  unless ``barlow_twins_updates_teacher`` (then the term also trains the teacher, as in the symmetric original);
- deep supervision is cross-entropy against the ground truth on the deep-supervision heads of both networks, beside
  the bundle's segmentation loss on the full-resolution output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch.optim.optimizer import Optimizer
from torch.utils.data import DataLoader

from common.engines.distillation import DistillationTrainer, downsample_labels, plain, unwrap
from common.losses.distillation import BarlowTwinsLoss

__all__ = ["ChoiKDTrainer", "ChoiLosses", "forward_with_latent"]


def forward_with_latent(network: nn.Module, x: torch.Tensor, latent_module: str) -> tuple[Any, torch.Tensor]:
    """``network(x)`` and the output of its submodule ``latent_module``, captured by a forward hook.

    A hook rather than a second forward path keeps the network's own ``forward`` (and a DistributedDataParallel
    wrapper around it, which only synchronises what runs through its ``forward``) untouched.

    Raises:
        AttributeError: the (unwrapped) network has no submodule ``latent_module``.
        RuntimeError: the submodule ran other than exactly once.
    """
    try:
        target = unwrap(network).get_submodule(latent_module)
    except AttributeError as e:
        raise AttributeError(
            f"ChoiKDTrainer: {type(unwrap(network)).__name__} has no submodule {latent_module!r} to take latent "
            "features from; expected e.g. 'bottleneck' of common.networks.cohra_unet.COHRAUNet."
        ) from e
    captured: list[torch.Tensor] = []
    handle = target.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        out = network(x)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"ChoiKDTrainer: submodule {latent_module!r} ran {len(captured)} times in one forward.")
    return out, captured[0]


class ChoiLosses(NamedTuple):
    """The losses of one iteration; ``teacher_loss`` holds no student parameter and ``student_loss`` no teacher one
    (unless the Barlow Twins term is set to train the teacher)."""

    teacher_loss: torch.Tensor  # L_T
    student_loss: torch.Tensor  # L_S
    pred: torch.Tensor  # the student's full-resolution logits
    terms: dict[str, torch.Tensor]  # detached parts, for logging


class ChoiKDTrainer(DistillationTrainer):
    """Single-stage multimodal-teacher -> limited-modality-student KD with Barlow Twins on latent features (Choi et al.
    2023).

    Each iteration, on a batch whose image stacks every modality as channels and whose label holds class indices
    ``(B, 1, *S)`` (``ConvertBratsLabelsd(target="index")``), with ``y_k`` the label resized by nearest-neighbour
    interpolation to deep-supervision head ``k``:

    - the **teacher** sees ``teacher_channels`` (all by default) and, in training mode, returns
      ``[t, t_ds_1, t_ds_2, ...]``; the **student** sees ``student_channel`` (one channel, or several in the order
      given: FLAIR + T1ce in the paper) and returns ``[s, s_ds_1, ...]``;
      ``z_t``, ``z_s`` are the outputs of their submodule ``latent_module`` (:func:`forward_with_latent`);
    - ``L_T = L_seg(y, t) + sum_k w_k CE(t_ds_k, y_k)``
    - ``L_S = L_seg(y, s) + sum_k w_k CE(s_ds_k, y_k) + barlow_twins_weight * BT(z_s, sg(z_t))``,
      ``sg`` the stop-gradient, dropped when ``barlow_twins_updates_teacher``;
    - one backward of ``L_T + L_S`` and one step of each optimizer. ``L_T`` holds no student parameter and, with the
      stop-gradient, ``L_S`` no teacher one, so each network gets exactly the gradient of its own loss.

    ``engine.state.output`` holds ``image``, ``label``, ``pred`` (the student's logits), ``loss`` (``L_S``) and, as
    0-d tensors, ``student_seg_loss``, ``deep_supervision_loss`` (the student's CE terms), ``barlow_twins_loss``,
    ``teacher_loss`` (``L_T``) and ``teacher_seg_loss``. Checkpoints: :meth:`checkpoint_items`.

    Args:
        device: device of the batches (the networks must already be on it).
        max_epochs: epochs to train.
        train_data_loader: batches of ``{"image": (B, M, *S), "label": (B, 1, *S)}``.
        network: the student, e.g. ``mtcm_kd_backbone(in_channels=len(student channels))``; returns
            ``[logits, ds_1/2, ...]`` in training.
        optimizer: the student's optimizer; must hold no teacher parameter.
        teacher: the multimodal teacher, e.g. ``mtcm_kd_backbone(in_channels=4)``, same output form.
        teacher_optimizer: optimizer over every teacher parameter.
        student_channel: index of the student's modality in the image channels, or the indices of its modalities in
            the order it reads them (the bundle passes ``student_channels``, from ``student_modalities``).
        teacher_channels: the teacher's image channels; None for all of them.
        seg_loss: ``L_seg(logits, labels)``; default :class:`common.losses.segmentation.DiceJaccardCELoss`.
        deep_supervision_weights: ``w_k`` of the CE on deep-supervision heads 1, 2, ... (0.5, 0.25: nnU-Net's
            halving); fewer weights than heads use the first heads only.
        barlow_twins: the feature loss; default ``BarlowTwinsLoss()`` (lambda 5e-3, voxels as samples).
        barlow_twins_weight: weight of the Barlow Twins term in ``L_S`` (0.005: about 1 / channels of the
            full-width bottleneck, so the term starts near 1 like the segmentation loss; not published).
        barlow_twins_updates_teacher: let the Barlow Twins gradient reach the teacher too (False).
        latent_module: name of the submodule whose output is the latent feature map (``"bottleneck"``).
        train_handlers: as in :class:`monai.engines.SupervisedTrainer`.
        trainer_kwargs: the rest of :class:`~common.engines.distillation.DistillationTrainer`'s arguments, i.e. of
            :class:`monai.engines.SupervisedTrainer` (``epoch_length``, ``amp``, ``decollate``, ...).

    Raises:
        ValueError: for shared parameters, a teacher parameter missing from ``teacher_optimizer``, an optimizer
            holding the other network's parameters, negative weights, a student whose ``in_channels`` is not the
            number of student channels; in an iteration, an image with too few channels, a missing label or fewer
            deep-supervision heads than weights.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: nn.Module,
        optimizer: Optimizer,
        teacher: nn.Module,
        teacher_optimizer: Optimizer,
        student_channel: int | Sequence[int],
        teacher_channels: Sequence[int] | None = None,
        seg_loss: Callable | None = None,
        deep_supervision_weights: Sequence[float] = (0.5, 0.25),
        barlow_twins: Callable | None = None,
        barlow_twins_weight: float = 0.005,
        barlow_twins_updates_teacher: bool = False,
        latent_module: str = "bottleneck",
        train_handlers: Sequence | None = None,
        **trainer_kwargs: Any,
    ) -> None:
        teacher_channels = None if teacher_channels is None else [int(c) for c in teacher_channels]
        super().__init__(
            device, max_epochs, train_data_loader, network, optimizer, student_channel, teacher_channels, seg_loss,
            **trainer_kwargs,
        )  # fmt: skip
        self._check_separate([teacher], teacher_optimizer, "teacher", "the teacher")
        weights = [float(w) for w in deep_supervision_weights]
        if any(w < 0 for w in [*weights, barlow_twins_weight]):
            raise ValueError(
                f"ChoiKDTrainer: weights must be >= 0, got deep_supervision_weights={weights} and "
                f"barlow_twins_weight={barlow_twins_weight}."
            )
        self.teacher = teacher
        self.teacher_optimizer = teacher_optimizer
        self.deep_supervision_weights = weights
        self.barlow_twins = BarlowTwinsLoss() if barlow_twins is None else barlow_twins
        self.barlow_twins_weight = float(barlow_twins_weight)
        self.barlow_twins_updates_teacher = bool(barlow_twins_updates_teacher)
        self.latent_module = latent_module
        if train_handlers is not None:
            self._register_handlers(train_handlers)

    def _teacher_items(self) -> dict[str, Any]:
        """``teacher_0`` (the multimodal teacher) and ``teacher_optimizer``: the keys
        :class:`common.engines.mtcm_kd.MTCMKDTrainer` gives its first teacher and its optimizer."""
        return {"teacher_0": unwrap(self.teacher), "teacher_optimizer": self.teacher_optimizer}

    # ---- one iteration ------------------------------------------------------------------------------------------

    def _split_outputs(self, outputs: Any, who: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        heads = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        if len(heads) - 1 < len(self.deep_supervision_weights):
            raise ValueError(
                f"ChoiKDTrainer: the {who} returned {len(heads) - 1} deep-supervision output(s) for "
                f"{len(self.deep_supervision_weights)} deep_supervision_weights; build it with deep_supervision=True "
                "(training mode returns [logits, ds_1/2, ...]) or give fewer weights."
            )
        return heads[0], heads[1 : 1 + len(self.deep_supervision_weights)]

    def _deep_supervision(self, heads: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        total = torch.zeros((), device=targets.device)
        for w, head in zip(self.deep_supervision_weights, heads, strict=True):
            index = downsample_labels(targets, head.shape[2:])[:, 0].long()
            total = total + w * F.cross_entropy(plain(head), index)
        return total

    def compute_losses(self, inputs: torch.Tensor, targets: torch.Tensor) -> ChoiLosses:
        """Forward both networks in training mode and return ``L_T``, ``L_S`` and the student's logits."""
        self.network.train()
        self.teacher.train()
        teacher_input = inputs if self.teacher_channels is None else inputs[:, self.teacher_channels]
        student_input = self._student_input(inputs)
        with self._autocast():
            teacher_out, teacher_latent = forward_with_latent(self.teacher, teacher_input, self.latent_module)
            student_out, student_latent = forward_with_latent(self.network, student_input, self.latent_module)
            teacher_logits, teacher_heads = self._split_outputs(teacher_out, "teacher")
            pred, student_heads = self._split_outputs(student_out, "student")
            teacher_seg = self.loss_function(teacher_logits, targets).mean()
            teacher_loss = teacher_seg + self._deep_supervision(teacher_heads, targets)
            student_seg = self.loss_function(pred, targets).mean()
            student_deep = self._deep_supervision(student_heads, targets)
        # The standardisation and the D x D correlation of Barlow Twins are computed in float32, outside autocast.
        target_latent = teacher_latent if self.barlow_twins_updates_teacher else teacher_latent.detach()
        barlow_twins = self.barlow_twins(plain(student_latent).float(), plain(target_latent).float())
        student_loss = student_seg + student_deep + self.barlow_twins_weight * barlow_twins
        terms = {
            "student_seg_loss": student_seg,
            "deep_supervision_loss": student_deep,
            "barlow_twins_loss": barlow_twins,
            "teacher_loss": teacher_loss,
            "teacher_seg_loss": teacher_seg,
        }
        return ChoiLosses(teacher_loss, student_loss, pred, {k: v.detach() for k, v in terms.items()})

    def _iteration(self, engine: ChoiKDTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        """One single-stage iteration: both forwards, one backward of ``L_T + L_S``, a step of each optimizer."""
        inputs, targets = self._start_iteration(engine, batchdata)
        self.optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        self.teacher_optimizer.zero_grad(set_to_none=self.optim_set_to_none)

        losses = self.compute_losses(inputs, targets)
        engine.state.output[Keys.PRED] = losses.pred
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.state.output[Keys.LOSS] = losses.student_loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        self._backward(losses.teacher_loss + losses.student_loss)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        self._step(self.teacher_optimizer)
        self._step(self.optimizer)
        self._update_scaler()
        engine.state.output.update(losses.terms)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
