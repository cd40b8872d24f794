"""Online MTCM-KD training: three unimodal teachers, the CDSFL fusion module and a unimodal student in one loop.

MTCM-KD (multi-teacher cross-modal knowledge distillation with cooperative deep supervision fusion learning; Ahmad,
Ullah, Gwak, Knowledge-Based Systems 297, 2024). Sourced from RhineLT/mtcm-kd ``training.py`` @0d44741, research
notes ``brats_methods.md`` sections 1.3-1.5. :class:`MTCMKDTrainer` is a
:class:`~common.engines.distillation.DistillationTrainer`: a MONAI ``SupervisedTrainer`` whose ``network``/``optimizer``
are the student's, so MONAI handlers (validation, checkpoints, stats, LR schedules) see an ordinary trainer, and a
bundle config builds it like one.

The helpers the ``mtcm_kd_t1ce_student`` bundle's configs call live here too, next to the trainer they serve, so that
the configs name them instead of spelling them out: :func:`init_student_weights` (the authors' Xavier initialisation of
the student), :func:`teacher_parameters` (what the teacher optimizer trains), :func:`teacher_state_attributes` (the
per-teacher state the stats handlers log), :func:`logged_terms` (the loss terms TensorBoard logs) and, for the
two-stage variant (``configs/variant_two_stage.json``: the teachers of an earlier run, loaded and frozen),
:func:`teachers_from_items` and :func:`teachers_from_checkpoint` (what the ``teachers_from`` loader loads, and the
check of the file before it does). Split files of either format are read by :func:`common.data.brats.read_split`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from monai.engines.utils import IterationEvents
from monai.utils import IgniteInfo, min_version, optional_import
from monai.utils.enums import CommonKeys as Keys
from torch.optim.optimizer import Optimizer
from torch.utils.data import DataLoader

from common.engines.distillation import DistillationTrainer, downsample_labels, unwrap
from common.errors import BadInputError
from common.losses.distillation import KD_REDUCTIONS, PerformanceTeacherWeights, kd_loss, whole_tumor_dice

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = [
    "TEACHER_DICE",
    "MTCMKDTrainer",
    "TeacherStepOutput",
    "TeachersCheckpointError",
    "init_student_weights",
    "logged_terms",
    "teacher_parameters",
    "teacher_state_attributes",
    "teachers_from_checkpoint",
    "teachers_from_items",
    "unwrap",
]

#: How the teachers' whole-tumour Dice is computed: one 3D Dice per case, or the authors' per-slice mean.
TEACHER_DICE = ("volume", "slices")

# The teachers' fused features and the student's distilled deep-supervision head are the decoder level at 1/2
# resolution (64 channels at 64^3 upstream): ``forward_features(x)[1][1]`` and ``student(x)[1]``.
_FUSION_LEVEL = 1


class TeacherStepOutput(NamedTuple):
    """What one teacher step hands to the student step: detached targets and the detached losses for logging."""

    logits: list[torch.Tensor]  # per teacher, (B, C, *S), detached
    fused: torch.Tensor | None  # CDSFL logits (B, C, *S/2), detached; None without fusion
    loss: torch.Tensor  # L_T
    seg_losses: list[torch.Tensor]  # per teacher L_seg(y, t_i)
    cooperative_loss: torch.Tensor | None  # L_seg(y at 1/2, c)
    wt_dice: torch.Tensor  # (num_teachers, B) hard-argmax whole-tumour Dice


class MTCMKDTrainer(DistillationTrainer):
    """Online multi-teacher cross-modal KD with cooperative deep supervision fusion learning (MTCM-KD).

    Each iteration, on a batch whose image stacks every modality as channels and whose label holds class indices
    ``(B, 1, *S)`` (0 background, 1 NCR, 2 ED, 3 ET after ``ConvertBratsLabelsd(target="index")``):

    1. **Teachers + CDSFL.** Teacher ``i`` sees channel ``teacher_channels[i]`` and gives logits ``t_i`` and decoder
       features (``forward_features``); the fusion module turns the teachers' 1/2-resolution features into logits
       ``c``. One step of ``teacher_optimizer`` on

       ``L_T = sum_i L_seg(y, t_i) + cooperative_weight * L_seg(y_1/2, c)``

       where ``y_1/2`` is the label resized to ``c``'s grid by nearest-neighbour interpolation. Each teacher's
       hard-argmax whole-tumour Dice on the batch (``teacher_dice``: 3D, or the authors' per-slice mean) is added
       to :attr:`teacher_weights`.
    2. **Student.** The student sees channel ``student_channel`` and, in training mode, returns
       ``[s, s_ds, ...]`` (logits and the 1/2-resolution deep-supervision head). One step of ``optimizer`` on

       ``L_S = student_seg_weight * L_seg(y, s) + sum_i w_i KD(s, t_i)
       + deep_supervision_weight * [f * L_seg(y_1/2, s_ds) + (1 - f) * KD(s_ds, c)]``,
       ``f = deep_supervision_seg_fraction``,

       from epoch ``kd_start_epoch`` on (counting from 0), and ``L_S = L_seg(y, s)`` before it (the authors: weight 1,
       no KD, no deep supervision in epoch 0). ``KD`` is :func:`common.losses.distillation.kd_loss` with
       ``temperature`` and ``kd_reduction``; its teacher side is the teachers' logits and ``c`` of step 1, detached,
       so no gradient of ``L_S`` reaches a teacher or the fusion module, and ``L_T`` never involves the student.
    3. **Teacher weights.** ``w_i`` are :class:`~common.losses.distillation.PerformanceTeacherWeights`: 0.1 each
       until the first epoch ends, then ``teacher_kd_weight * D_i / sum_j D_j`` from each teacher's mean whole-tumour
       Dice ``D_i`` over the previous epoch's training batches (an even split when every ``D_i`` is 0). They are
       updated by an ``EPOCH_COMPLETED`` handler registered before ``train_handlers``, so a ``CheckpointSaver`` among
       them (or attached later) saves the weights for the next epoch and a resumed run continues with them.

    Variants: ``fusion=None`` is multi-teacher KD without CDSFL (the cooperative term and the deep-supervision KD
    term vanish; the deep-supervision GT term stays, set ``deep_supervision_weight=0`` to drop it); ``use_kd=False``
    is the unimodal baseline, ``L_S = L_seg(y, s)`` in every epoch, and needs no teachers (given ones still train).

    **Frozen teachers** (``train_teachers=False``, two-stage MTCM-KD: teachers and fusion trained before, e.g. loaded
    from an MTCM-KD run's ``teachers.pt``). Step 1 keeps its forward, losses and Dice, so the KD targets, the teacher
    weights and every logged value are computed as online, but runs under ``torch.no_grad()`` with the teachers and
    the fusion module in eval mode, and nothing steps ``teacher_optimizer`` (which may then be None): their parameters
    and buffers stay bit-identical. Eval mode is what a frozen network runs in: the MTCM-KD backbone (GroupNorm,
    InstanceNorm without running statistics, no dropout) gives the same output in both modes, and a teacher with
    BatchNorm or dropout would otherwise update its running statistics or draw dropout masks. When KD is on in the
    first epoch (``kd_start_epoch=0``) the initial weights would be ``initial_teacher_weight`` each, which say nothing
    about frozen, trained teachers; so before the first epoch of a fresh run (not of a resumed one, whose checkpoint
    holds the weights) the frozen teachers score one pass over ``train_data_loader`` (``epoch_length`` batches,
    as an epoch sees them) and the weights for the first epoch come from that mean Dice, as every later epoch's do.

    ``engine.state.output`` holds ``image`` (the full multimodal input), ``label``, ``pred`` (the student's
    full-resolution logits, what post-processing, metrics and evaluation handlers use), ``loss`` (``L_S``), and for
    logging, as 0-d tensors: ``student_seg_loss``, ``kd_loss`` (``sum_i w_i KD``), ``deep_supervision_loss``,
    ``teacher_loss`` (``L_T``), ``cooperative_loss``, ``teacher_{i}_seg_loss``, ``teacher_{i}_wt_dice`` (the batch's
    mean). ``engine.state`` carries ``teacher_weights`` (list), ``teacher_weight_{i}`` and, after an epoch,
    ``teacher_wt_dice_{i}`` (scalars, for ``TensorBoardStatsHandler(state_attributes=[...])``) and ``kd_active``.

    Checkpoints: save and load :meth:`checkpoint_items` (``{"network": student, "optimizer": optimizer, "trainer":
    trainer, "teacher_<i>": teacher, "fusion": fusion, "teacher_optimizer": teacher_optimizer, "teacher_weights":
    trainer.teacher_weights}``) with MONAI's ``CheckpointSaver`` / ``CheckpointLoader``.

    Args:
        device: device of the batches (the networks must already be on it).
        max_epochs: epochs to train.
        train_data_loader: batches of ``{"image": (B, M, *S), "label": (B, 1, *S)}``.
        network: the student, e.g. ``mtcm_kd_backbone()``; in training mode returns ``[logits, ds_1/2, ...]`` (a plain
            logits tensor only works with ``deep_supervision_weight=0`` or without KD).
        optimizer: the student's optimizer (Adam, lr 1e-4 upstream); must hold no teacher or fusion parameter.
        student_channel: index of the student's modality in the image channels (T1ce).
        teachers: the teacher networks, each with ``forward_features(x) -> (logits, [f_1, f_1/2, ...])`` (e.g.
            ``mtcm_kd_backbone(deep_supervision=False)``) or a ``forward`` that returns that pair
            (:class:`common.networks.mtcm_kd.TeacherFeatures`, for DistributedDataParallel).
        teacher_channels: one image channel index per teacher.
        fusion: the CDSFL module (:class:`common.networks.mtcm_kd.CooperativeFusion`), called on the list of the
            teachers' 1/2-resolution features; None for multi-teacher KD without CDSFL.
        teacher_optimizer: one optimizer over every teacher and fusion parameter (Adam, lr 1e-4 upstream).
        seg_loss: ``L_seg(logits, labels)``; default :class:`common.losses.segmentation.DiceJaccardCELoss` (the lab's
            1/3 Dice + 1/3 Jaccard + 1/3 CE). Also the trainer's ``loss_function``.
        temperature: KD temperature T (20).
        kd_reduction: ``"batchmean"`` (the authors' KD, voxel sum / batch x T, default, which the default weights
            were tuned for) or ``"voxel_mean"`` (per-voxel mean x T^2); see :func:`kd_loss`.
        use_kd: False for the unimodal no-KD baseline.
        student_seg_weight: weight of ``L_seg(y, s)`` once KD is on (0.75).
        deep_supervision_weight: weight of the deep-supervision bracket (0.10).
        deep_supervision_seg_fraction: share ``f`` of the ground-truth term inside the bracket (0.7; KD gets 0.3).
        cooperative_weight: weight of the fusion module's loss in ``L_T`` (0.08).
        teacher_kd_weight: lambda, the sum of the teachers' KD weights after each update (0.15).
        initial_teacher_weight: each teacher's KD weight before the first update (0.1).
        kd_start_epoch: first epoch (from 0) with KD and deep supervision (1).
        train_teachers: False to freeze the teachers and the fusion module (see above); True trains them online.
        teacher_weights: the weight state to use (e.g. one a config also hands to a checkpoint handler); by default
            a new ``PerformanceTeacherWeights(len(teachers), teacher_kd_weight, initial_teacher_weight)``, and None
            without teachers.
        tumor_classes: class indices forming the whole tumour for the teachers' Dice ((1, 2, 3)).
        teacher_dice: how that Dice is computed: ``"volume"`` (one 3D Dice per case) or ``"slices"`` (the authors'
            mean of 2D Dice over the slices along the first spatial axis, an empty slice scoring 1); see
            :func:`common.losses.distillation.whole_tumor_dice`.
        train_handlers: as in :class:`monai.engines.SupervisedTrainer`, registered after the teacher-weight update.
        trainer_kwargs: the rest of :class:`~common.engines.distillation.DistillationTrainer`'s arguments, i.e. of
            :class:`monai.engines.SupervisedTrainer` (``epoch_length``, ``amp``, ``decollate``, ...);
            ``FORWARD_COMPLETED``, ``LOSS_COMPLETED`` and ``BACKWARD_COMPLETED`` fire for the student. With ``amp``
            one gradient scaler serves both optimizers.

    Raises:
        ValueError: for inconsistent teachers / channels / optimizers (e.g. a parameter held by both optimizers, or a
            teacher parameter missing from ``teacher_optimizer``), an unknown ``kd_reduction``, negative weights, and
            in an iteration, an image with too few channels or a missing label.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: nn.Module,
        optimizer: Optimizer,
        student_channel: int,
        teachers: Sequence[nn.Module] | None = None,
        teacher_channels: Sequence[int] | None = None,
        fusion: nn.Module | None = None,
        teacher_optimizer: Optimizer | None = None,
        seg_loss: Callable | None = None,
        temperature: float = 20.0,
        kd_reduction: str = "batchmean",
        use_kd: bool = True,
        student_seg_weight: float = 0.75,
        deep_supervision_weight: float = 0.10,
        deep_supervision_seg_fraction: float = 0.7,
        cooperative_weight: float = 0.08,
        teacher_kd_weight: float = 0.15,
        initial_teacher_weight: float = 0.1,
        kd_start_epoch: int = 1,
        train_teachers: bool = True,
        teacher_weights: PerformanceTeacherWeights | None = None,
        tumor_classes: Sequence[int] = (1, 2, 3),
        teacher_dice: str = "volume",
        train_handlers: Sequence | None = None,
        **trainer_kwargs: Any,
    ) -> None:
        teachers = list(teachers or [])
        teacher_channels = [int(c) for c in (teacher_channels or [])]
        if teacher_dice not in TEACHER_DICE:
            raise ValueError(f"MTCMKDTrainer: unknown teacher_dice {teacher_dice!r}; expected one of {TEACHER_DICE}.")
        self._check_configuration(
            teachers, teacher_channels, fusion, teacher_optimizer, use_kd, kd_reduction, temperature, kd_start_epoch,
            train_teachers,
            dict(
                student_seg_weight=student_seg_weight, deep_supervision_weight=deep_supervision_weight,
                cooperative_weight=cooperative_weight, teacher_kd_weight=teacher_kd_weight,
                initial_teacher_weight=initial_teacher_weight,
            ),
            deep_supervision_seg_fraction,
        )  # fmt: skip
        super().__init__(
            device, max_epochs, train_data_loader, network, optimizer, student_channel, teacher_channels, seg_loss,
            **trainer_kwargs,
        )  # fmt: skip
        self._check_separate(
            [*teachers, fusion],
            teacher_optimizer,
            "teacher or fusion",
            "every teacher and of the fusion module",
            complete=bool(train_teachers),
        )
        if teacher_weights is None:
            if teachers:  # the unimodal baseline has no teachers to weigh and keeps None
                teacher_weights = PerformanceTeacherWeights(len(teachers), teacher_kd_weight, initial_teacher_weight)
        elif teacher_weights.num_teachers != len(teachers):
            raise ValueError(
                f"MTCMKDTrainer: teacher_weights is for {teacher_weights.num_teachers} teachers, got {len(teachers)}."
            )
        elif teacher_weights.total_weight != teacher_kd_weight:
            raise ValueError(
                f"MTCMKDTrainer: teacher_weights.total_weight={teacher_weights.total_weight} differs from "
                f"teacher_kd_weight={teacher_kd_weight}; give the same lambda to both."
            )
        self.teachers = teachers
        self.fusion = fusion
        self.teacher_optimizer = teacher_optimizer
        self.temperature = float(temperature)
        self.kd_reduction = kd_reduction
        self.use_kd = bool(use_kd)
        self.student_seg_weight = float(student_seg_weight)
        self.deep_supervision_weight = float(deep_supervision_weight)
        self.deep_supervision_seg_fraction = float(deep_supervision_seg_fraction)
        self.cooperative_weight = float(cooperative_weight)
        self.kd_start_epoch = int(kd_start_epoch)
        self.train_teachers = bool(train_teachers)
        self.teacher_weights = teacher_weights
        self.tumor_classes = tuple(int(c) for c in tumor_classes)
        self.teacher_dice = teacher_dice
        # Handlers go on after the teacher-weight update, so that they see the weights for the next epoch.
        self._publish_teacher_weights(self)
        # after every STARTED handler (the loaders of teachers_from and of a resumed checkpoint), before the publishing
        self.add_event_handler(Events.EPOCH_STARTED, self._score_frozen_teachers)
        self.add_event_handler(Events.EPOCH_STARTED, self._publish_teacher_weights)
        self.add_event_handler(Events.EPOCH_COMPLETED, self._update_teacher_weights)
        if train_handlers is not None:
            self._register_handlers(train_handlers)

    @staticmethod
    def _check_configuration(
        teachers: list[nn.Module],
        teacher_channels: list[int],
        fusion: nn.Module | None,
        teacher_optimizer: Optimizer | None,
        use_kd: bool,
        kd_reduction: str,
        temperature: float,
        kd_start_epoch: int,
        train_teachers: bool,
        weights: dict[str, float],
        deep_supervision_seg_fraction: float,
    ) -> None:
        """The checks that need no network built into a trainer; the parameters are checked by ``_check_separate``."""
        prefix = "MTCMKDTrainer:"
        if kd_reduction not in KD_REDUCTIONS:
            raise ValueError(f"{prefix} unknown kd_reduction {kd_reduction!r}; expected one of {KD_REDUCTIONS}.")
        if temperature <= 0:
            raise ValueError(f"{prefix} temperature must be > 0, got {temperature}.")
        if kd_start_epoch < 0:
            raise ValueError(f"{prefix} kd_start_epoch must be >= 0, got {kd_start_epoch}.")
        for name, value in weights.items():
            if value < 0:
                raise ValueError(f"{prefix} {name} must be >= 0, got {value}.")
        if not 0.0 <= deep_supervision_seg_fraction <= 1.0:
            raise ValueError(
                f"{prefix} deep_supervision_seg_fraction must be in [0, 1], got {deep_supervision_seg_fraction}."
            )
        if use_kd and not teachers:
            raise ValueError(f"{prefix} use_kd=True needs teachers; pass use_kd=False for the unimodal baseline.")
        if len(teacher_channels) != len(teachers):
            raise ValueError(
                f"{prefix} got {len(teachers)} teachers and {len(teacher_channels)} teacher_channels "
                f"{teacher_channels}; expected one image channel per teacher."
            )
        if fusion is not None and not teachers:
            raise ValueError(f"{prefix} a fusion module needs teachers to fuse.")
        if not train_teachers and not teachers:
            raise ValueError(f"{prefix} train_teachers=False freezes the teachers, but there are none.")
        if train_teachers and teachers and teacher_optimizer is None:
            raise ValueError(
                f"{prefix} teachers train online and need a teacher_optimizer (teachers and fusion); "
                "frozen teachers (train_teachers=False) need none."
            )

    def _teacher_items(self) -> dict[str, Any]:
        """``teacher_0``, ..., ``fusion``, ``teacher_optimizer`` and ``teacher_weights``, each only when it exists (the
        no-KD baseline has no teachers, the variant without CDSFL no fusion)."""
        items: dict[str, Any] = {f"teacher_{i}": unwrap(t) for i, t in enumerate(self.teachers)}
        if self.fusion is not None:
            items["fusion"] = unwrap(self.fusion)
        if self.teacher_optimizer is not None:
            items["teacher_optimizer"] = self.teacher_optimizer
        if self.teacher_weights is not None:
            items["teacher_weights"] = self.teacher_weights
        return items

    # ---- teacher weights ---------------------------------------------------------------------------------------

    def _publish_teacher_weights(self, engine: MTCMKDTrainer) -> None:
        weights = [] if self.teacher_weights is None else self.teacher_weights.weights
        engine.state.teacher_weights = weights
        for i, w in enumerate(weights):
            setattr(engine.state, f"teacher_weight_{i}", w)
        engine.state.kd_active = self.kd_active(max(engine.state.epoch, 1))

    def _update_teacher_weights(self, engine: MTCMKDTrainer) -> None:
        if self.teacher_weights is None:
            return
        mean_dice = self.teacher_weights.mean_dice()
        self.teacher_weights.update()
        if mean_dice is not None:
            engine.state.teacher_wt_dice = mean_dice
            for i, d in enumerate(mean_dice):
                setattr(engine.state, f"teacher_wt_dice_{i}", d)
        self._publish_teacher_weights(engine)

    def _score_frozen_teachers(self, engine: MTCMKDTrainer) -> None:
        """Before the first epoch of a fresh run with frozen teachers and KD on in it: the weights for that epoch from
        the frozen teachers' mean Dice over one pass of the training data (class docstring)."""
        if self.train_teachers or self.teacher_weights is None or engine.state.epoch != 1 or not self.kd_active(1):
            return
        state = self.teacher_weights.state_dict()  # copies: start from empty sums, whatever a loaded file held
        state["dice_sums"].zero_()
        state["counts"].zero_()
        self.teacher_weights.load_state_dict(state)
        for index, batchdata in enumerate(self.data_loader):
            if index >= engine.state.epoch_length:
                break
            self.teacher_step(*self._prepare(batchdata))
        self._update_teacher_weights(engine)
        self.logger.info(
            f"Frozen teachers scored on one pass of the training data: WT Dice "
            f"{[round(d, 4) for d in getattr(engine.state, 'teacher_wt_dice', [])]}, KD weights "
            f"{[round(w, 6) for w in self.teacher_weights.weights]} from the first epoch."
        )

    def kd_active(self, epoch: int) -> bool:
        """Whether KD and deep supervision are on in Ignite ``epoch`` (1-based: epoch 1 is the authors' epoch 0)."""
        return self.use_kd and epoch - 1 >= self.kd_start_epoch

    # ---- one iteration ------------------------------------------------------------------------------------------

    @staticmethod
    def _teacher_forward(teacher: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Sequence[torch.Tensor]]:
        forward_features = getattr(teacher, "forward_features", None)
        out = forward_features(x) if forward_features is not None else teacher(x)
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], (tuple, list))):
            raise TypeError(
                f"MTCMKDTrainer: teacher {type(teacher).__name__} returned {type(out).__name__}; expected "
                "(logits, [features at 1, 1/2, ...]) from forward_features(x) or forward(x); wrap a teacher as "
                "common.networks.mtcm_kd.TeacherFeatures(net) before DistributedDataParallel."
            )
        if len(out[1]) <= _FUSION_LEVEL:
            raise ValueError(
                f"MTCMKDTrainer: teacher {type(teacher).__name__} gave {len(out[1])} decoder feature maps; the fusion "
                "needs the 1/2-resolution one (index 1)."
            )
        return out[0], out[1]

    def teacher_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> TeacherStepOutput:
        """Forward the teachers and the fusion module, step ``teacher_optimizer`` on ``L_T``, score the teachers.

        With frozen teachers (``train_teachers=False``) the same forward, losses and scores, in eval mode and without
        gradients, and no step.
        """
        train = self.train_teachers
        for teacher in self.teachers:
            teacher.train(train)
        if self.fusion is not None:
            self.fusion.train(train)
        if train:
            self.teacher_optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        with self._autocast(), contextlib.nullcontext() if train else torch.no_grad():
            logits, features = [], []
            for teacher, channel in zip(self.teachers, self.teacher_channels, strict=True):
                out, feats = self._teacher_forward(teacher, self._channel(inputs, channel))
                logits.append(out)
                features.append(feats[_FUSION_LEVEL])
            seg_losses = [self.loss_function(out, targets).mean() for out in logits]
            loss = torch.stack(seg_losses).sum()
            fused, cooperative = None, None
            if self.fusion is not None:
                fused = self.fusion(features)
                cooperative = self.loss_function(fused, downsample_labels(targets, fused.shape[2:])).mean()
                loss = loss + self.cooperative_weight * cooperative
        if train:
            self._backward(loss)
            self._step(self.teacher_optimizer)
        per_slice = self.teacher_dice == "slices"
        wt_dice = torch.stack([whole_tumor_dice(out, targets, self.tumor_classes, per_slice) for out in logits])
        self.teacher_weights.accumulate(wt_dice)
        return TeacherStepOutput(
            logits=[out.detach() for out in logits],
            fused=None if fused is None else fused.detach(),
            loss=loss.detach(),
            seg_losses=[s.detach() for s in seg_losses],
            cooperative_loss=None if cooperative is None else cooperative.detach(),
            wt_dice=wt_dice,
        )

    def student_step(
        self, inputs: torch.Tensor, targets: torch.Tensor, teachers: TeacherStepOutput | None, kd_active: bool
    ) -> dict[str, torch.Tensor]:
        """Forward the student, step ``optimizer`` on ``L_S``; fills ``state.output`` pred/loss and returns the terms.

        ``teachers`` holds the (detached) targets of :meth:`teacher_step`; it may be None only when ``kd_active`` is
        False.
        """
        engine = self
        if kd_active and teachers is None:
            raise ValueError("MTCMKDTrainer: a KD student step needs the teachers' outputs.")
        self.network.train()
        self.optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        terms: dict[str, torch.Tensor] = {}
        with self._autocast():
            outputs = self.network(self._channel(inputs, self.student_channel))
            if isinstance(outputs, (list, tuple)):
                pred, deep = outputs[0], (outputs[_FUSION_LEVEL] if len(outputs) > _FUSION_LEVEL else None)
            else:
                pred, deep = outputs, None
            engine.state.output[Keys.PRED] = pred
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            seg = self.loss_function(pred, targets).mean()
            terms["student_seg_loss"] = seg
            if not kd_active:
                loss = seg
            else:
                weights = self.teacher_weights.weights
                kd = sum(
                    w * kd_loss(pred, target, self.temperature, self.kd_reduction)
                    for w, target in zip(weights, teachers.logits, strict=True)
                )
                terms["kd_loss"] = kd
                loss = self.student_seg_weight * seg + kd
                if self.deep_supervision_weight > 0:
                    if deep is None:
                        raise ValueError(
                            "MTCMKDTrainer: deep_supervision_weight > 0 but the student returned no deep-supervision "
                            "output; build it with deep_supervision=True (training mode returns [logits, ds_1/2, "
                            "...]) or set deep_supervision_weight=0."
                        )
                    f = self.deep_supervision_seg_fraction
                    deep_term = f * self.loss_function(deep, downsample_labels(targets, deep.shape[2:])).mean()
                    if teachers.fused is not None:
                        deep_term = deep_term + (1.0 - f) * kd_loss(
                            deep, teachers.fused, self.temperature, self.kd_reduction
                        )
                    terms["deep_supervision_loss"] = deep_term
                    loss = loss + self.deep_supervision_weight * deep_term
            engine.state.output[Keys.LOSS] = loss
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
        self._backward(loss)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        self._step(self.optimizer)
        return {k: v.detach() for k, v in terms.items()}

    def _iteration(self, engine: MTCMKDTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        """One MTCM-KD iteration (teacher step, then student step); returns ``engine.state.output``."""
        inputs, targets = self._start_iteration(engine, batchdata)
        kd_active = self.kd_active(engine.state.epoch)
        engine.state.kd_active = kd_active

        teachers = self.teacher_step(inputs, targets) if len(self.teachers) else None
        terms = self.student_step(inputs, targets, teachers, kd_active)
        self._update_scaler()

        zero = torch.zeros((), device=inputs.device)
        output = engine.state.output
        output["student_seg_loss"] = terms["student_seg_loss"]
        output["kd_loss"] = terms.get("kd_loss", zero)
        output["deep_supervision_loss"] = terms.get("deep_supervision_loss", zero)
        if teachers is not None:
            output["teacher_loss"] = teachers.loss
            output["cooperative_loss"] = zero if teachers.cooperative_loss is None else teachers.cooperative_loss
            for i, (seg, dice) in enumerate(zip(teachers.seg_losses, teachers.wt_dice, strict=True)):
                output[f"teacher_{i}_seg_loss"] = seg
                output[f"teacher_{i}_wt_dice"] = dice.mean().to(inputs.device, torch.float32)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


# ---- helpers of the mtcm_kd_t1ce_student bundle's configs --------------------------------------------------------


def init_student_weights(network: nn.Module) -> nn.Module:
    """Xavier-normal weights and zero biases for every convolution and linear layer of ``network``, in place.

    The MTCM-KD authors initialise the student so (RhineLT/mtcm-kd ``utils/weight_iniatialiazation.py``, applied to
    the student only); teachers and the fusion module keep PyTorch's default initialisation. Transposed convolutions
    and normalisation layers keep theirs, as upstream. Returns ``network``.
    """
    for module in network.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return network


def teacher_parameters(teachers: Sequence[nn.Module], fusion: nn.Module | None = None) -> list[nn.Parameter]:
    """Every parameter of ``teachers`` and of ``fusion`` (None: none), in that order: what ``teacher_optimizer``
    trains. Empty without teachers."""
    return [p for m in [*teachers, fusion] if m is not None for p in m.parameters()]


def teacher_state_attributes(num_teachers: int) -> list[str]:
    """The per-teacher ``engine.state`` scalars :class:`MTCMKDTrainer` publishes, for the ``state_attributes`` of
    MONAI's stats handlers: ``teacher_weight_<i>`` for every teacher, then ``teacher_wt_dice_<i>``."""
    return [f"{name}_{i}" for name in ("teacher_weight", "teacher_wt_dice") for i in range(num_teachers)]


def logged_terms(output: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The loss terms and the teachers' whole-tumour Dice of a decollated trainer output (its first case; the terms
    are per batch): every key ending in ``loss`` or ``wt_dice``, for ``TensorBoardStatsHandler(output_transform=)``.
    """
    return {k: v for k, v in output[0].items() if k.endswith(("loss", "wt_dice"))}


# ---- the two-stage variant: teachers loaded from an earlier run -------------------------------------------------


class TeachersCheckpointError(BadInputError):
    """``teachers_from`` is missing where frozen teachers need it, or names a file that is not a usable
    ``teachers.pt``; the message names the file and what is missing."""


def teachers_from_items(items: Mapping[str, Any], train_teachers: bool = True) -> dict[str, Any]:
    """What ``teachers_from`` loads of a run's teacher-side checkpoint items (``checkpoint_items(student=False)``):
    the teachers, the fusion module and the teacher weights, and the teacher optimizer's state only when the teachers
    go on training (``train_teachers``; Adam's moments continue with them). Frozen teachers never step, so their
    optimizer keeps its fresh, empty state and a ``teachers.pt`` without one loads as well. Never the student."""
    return {k: v for k, v in items.items() if train_teachers or k != "teacher_optimizer"}


def teachers_from_checkpoint(path: str, items: Mapping[str, Any], train_teachers: bool = True) -> str:
    """``path`` (the bundle's ``teachers_from``), checked before MONAI's ``CheckpointLoader`` loads it into ``items``.

    ``""`` means no file and is returned as it is, unless the teachers are frozen (``train_teachers`` false): a
    frozen, randomly initialised teacher is meaningless, so that is refused. Otherwise the file must exist, be a
    checkpoint, and hold every key of :func:`teachers_from_items` ``(items, train_teachers)``; it is read with
    ``mmap`` (the keys only, not a second copy of the tensors).

    Raises:
        TeachersCheckpointError: one message naming the file and what is wrong (the bundle's ``error:`` line).
    """
    if not path:
        if not train_teachers:
            raise TeachersCheckpointError(
                "train_teachers is false (the two-stage variant, configs/variant_two_stage.json) but no teachers_from "
                "is given: frozen teachers must be trained ones. Give --teachers_from path/to/teachers.pt (the "
                "models/teachers.pt an MTCM-KD training writes), or set train_teachers true."
            )
        return path
    path = str(path)
    if not os.path.isfile(path):
        raise TeachersCheckpointError(
            f"teachers_from {path}: no such file; expected the teachers.pt an MTCM-KD training writes beside "
            "model.pt (models/teachers.pt)."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # a truncated file, another format: say which file, keep the cause
        raise TeachersCheckpointError(
            f"teachers_from {path} cannot be read as a checkpoint ({type(error).__name__}: {error})."
        ) from error
    needed = list(teachers_from_items(items, train_teachers))
    held = sorted(checkpoint) if isinstance(checkpoint, Mapping) else []
    missing = [k for k in needed if k not in held]
    if missing:
        raise TeachersCheckpointError(
            f"teachers_from {path} lacks {', '.join(missing)} (it holds {', '.join(held) or 'no named items'}); "
            f"expected the teachers.pt of an MTCM-KD training with the same teachers and fusion setting "
            f"(teacher_modalities, use_cdsfl), which holds {', '.join(needed)}."
        )
    return path
