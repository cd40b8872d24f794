"""What the knowledge-distillation trainers share: a MONAI ``SupervisedTrainer`` for a student and its teachers.

:class:`common.engines.mtcm_kd.MTCMKDTrainer` (MTCM-KD) and :class:`common.engines.choi_kd.ChoiKDTrainer` (Choi et
al. 2023) train a student on a limited set of modalities (MTCM-KD: one; Choi et al.: one or more) together with
teachers, from batches that stack every modality as image channels. Both are a ``SupervisedTrainer`` whose
``network`` and ``optimizer`` are the student's, so MONAI's handlers (validation, checkpoints, stats, LR schedules)
see an ordinary trainer and a bundle config builds it like one. What that takes beside each method's own iteration
lives here, once: the pass-through of ``SupervisedTrainer``'s arguments, the image channels each network reads and
the check of a batch against them, the check that the student and the teacher side keep their parameters and
optimizers apart, autocast and the gradient scaler shared by both optimizers under ``amp``, the checkpoint items of
the student, and :func:`unwrap`, which makes the checkpoints of single- and multi-GPU runs interchangeable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer
from monai.engines.utils import default_metric_cmp_fn, default_prepare_batch
from monai.transforms import Transform
from monai.utils.enums import CommonKeys as Keys
from torch.optim.optimizer import Optimizer
from torch.utils.data import DataLoader

from common.losses.segmentation import DiceJaccardCELoss
from common.networks.mtcm_kd import TeacherFeatures

__all__ = ["DistillationTrainer", "downsample_labels", "plain", "unwrap"]


def plain(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a plain tensor: a ``MetaTensor``'s data without its metadata."""
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def downsample_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Labels ``(B, 1 or C, *S)`` resized to ``size`` by nearest-neighbour interpolation, as float."""
    return F.interpolate(plain(labels).float(), size=tuple(size), mode="nearest")


def unwrap(module: nn.Module | None) -> nn.Module | None:
    """The network inside ``DistributedDataParallel`` / ``DataParallel`` and :class:`TeacherFeatures` wrappers.

    Checkpoints hold the bare networks, so a checkpoint of a multi-GPU run loads into a single-GPU one and back.
    """
    while isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel, TeacherFeatures)):
        module = module.network if isinstance(module, TeacherFeatures) else module.module
    return module


def _parameter_ids(modules: Iterable[nn.Module | None]) -> set[int]:
    return {id(p) for m in modules if m is not None for p in m.parameters() if p.requires_grad}


def _optimizer_ids(optimizer: Optimizer | None) -> set[int]:
    if optimizer is None:
        return set()
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


class DistillationTrainer(SupervisedTrainer):
    """A ``SupervisedTrainer`` for a student trained beside teachers; subclasses write ``_iteration``.

    ``network`` and ``optimizer`` are the student's, ``loss_function`` is ``seg_loss``. The student reads image
    channel ``student_channel``, or the channels of a sequence of them in that order (:meth:`_student_input`), the
    teachers ``teacher_channels`` (their meaning is the subclass's; None or empty: none beyond the student's).
    ``train_handlers`` are not registered here: a subclass registers them with ``self._register_handlers`` at the end
    of its ``__init__``, after handlers of its own that must run first.

    Args:
        device, max_epochs, train_data_loader, network, optimizer: as in :class:`monai.engines.SupervisedTrainer`.
        student_channel: index of the student's modality in the image channels, or the indices of its modalities in
            the order the student reads them (a student on several modalities, as in Choi et al. 2023).
            :attr:`student_channels` is always the list; :attr:`student_channel` is the one index when there is one
            (``1`` and ``[1]`` make the same trainer), else the list. A subclass whose student reads one channel
            (MTCM-KD) reads :attr:`student_channel`.
        teacher_channels: image channel indices the teachers read.
        seg_loss: ``L_seg(logits, labels)``; default :class:`common.losses.segmentation.DiceJaccardCELoss` (the lab's
            1/3 Dice + 1/3 Jaccard + 1/3 CE). Also the trainer's ``loss_function``.
        epoch_length, non_blocking, prepare_batch, postprocessing, key_train_metric, additional_metrics,
        metric_cmp_fn, amp, event_names, event_to_attr, decollate, optim_set_to_none, to_kwargs, amp_kwargs: as in
        :class:`monai.engines.SupervisedTrainer`. With ``amp`` one gradient scaler serves every optimizer: each
        backward is scaled (:meth:`_backward`), each optimizer steps through it (:meth:`_step`) and the scaler
        updates once per iteration (:meth:`_update_scaler`).

    Raises:
        ValueError: no student channel, or a student network whose ``in_channels`` is not the number of student
            channels (a student on two modalities built with ``in_channels=1`` would otherwise fail only in its
            first forward).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: nn.Module,
        optimizer: Optimizer,
        student_channel: int | Sequence[int],
        teacher_channels: Sequence[int] | None = None,
        seg_loss: Callable | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        postprocessing: Transform | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        amp: bool = False,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = True,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=DiceJaccardCELoss() if seg_loss is None else seg_loss,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            postprocessing=postprocessing,
            key_train_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            train_handlers=None,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            optim_set_to_none=optim_set_to_none,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        channels = student_channel if isinstance(student_channel, Sequence) else [student_channel]
        self.student_channels = [int(c) for c in channels]
        self.student_channel: int | list[int] = (
            self.student_channels[0] if len(self.student_channels) == 1 else self.student_channels
        )
        self.teacher_channels = teacher_channels
        self._check_student_channels()

    def _check_student_channels(self) -> None:
        """At least one student channel, and as many as the student network's ``in_channels`` where it says."""
        name = type(self).__name__
        if not self.student_channels:
            raise ValueError(f"{name}: student_channel lists no channel; give an index or a non-empty list.")
        in_channels = getattr(unwrap(self.network), "in_channels", None)
        if isinstance(in_channels, int) and in_channels != len(self.student_channels):
            raise ValueError(
                f"{name}: the student network reads {in_channels} channel(s), but student_channel "
                f"{self.student_channel} gives {len(self.student_channels)}. In the mtcm_kd_t1ce_student bundle both "
                "follow student_modalities, and only the Choi et al. trainer takes several: stack "
                "variant_choi2023.json before variant_choi2023_paper.json."
            )

    def _check_separate(
        self,
        teacher_side: Sequence[nn.Module | None],
        teacher_optimizer: Optimizer | None,
        side_name: str,
        every_module: str,
        complete: bool = True,
    ) -> None:
        """The student and the ``teacher_side`` modules share no parameter, each optimizer holds only its own side's,
        and ``teacher_optimizer`` holds every trainable teacher-side parameter (when there is a teacher side).

        ``side_name`` names the teacher side in messages ("teacher", "teacher or fusion"); ``every_module`` says what
        ``teacher_optimizer`` should be built over. ``complete=False`` drops the last check, for a teacher side that
        never steps (frozen teachers need no optimizer, and one that is given is never stepped).
        """
        prefix = f"{type(self).__name__}:"
        student_ids = _parameter_ids([self.network])
        teacher_ids = _parameter_ids(teacher_side)
        if student_ids & teacher_ids:
            raise ValueError(f"{prefix} the student shares parameters with a {side_name} module.")
        if _optimizer_ids(self.optimizer) & teacher_ids:
            raise ValueError(f"{prefix} the student optimizer holds {side_name} parameters.")
        teacher_optimizer_ids = _optimizer_ids(teacher_optimizer)
        if teacher_optimizer_ids & student_ids:
            raise ValueError(f"{prefix} teacher_optimizer holds student parameters.")
        missing = teacher_ids - teacher_optimizer_ids
        if complete and any(m is not None for m in teacher_side) and missing:
            raise ValueError(
                f"{prefix} {len(missing)} trainable {side_name} parameter tensors are not in teacher_optimizer; "
                f"build it over the parameters of {every_module}."
            )

    def checkpoint_items(self, student: bool = True) -> dict[str, Any]:
        """What a checkpoint of this run holds, as the ``save_dict`` / ``load_dict`` of MONAI's checkpoint handlers.

        ``network`` and ``optimizer`` (the student's) and ``trainer`` (epoch and iteration), then the subclass's
        teacher side (:meth:`_teacher_items`). Networks are unwrapped (:func:`unwrap`), so the checkpoints of single-
        and multi-GPU runs are interchangeable. ``student=False`` keeps the teacher side only: a bundle saves it as
        ``models/teachers.pt`` beside the best student ``models/model.pt``.
        """
        items: dict[str, Any] = {}
        if student:
            items.update(network=unwrap(self.network), optimizer=self.optimizer, trainer=self)
        items.update(self._teacher_items())
        return items

    def _teacher_items(self) -> dict[str, Any]:
        """The teacher side of :meth:`checkpoint_items`."""
        raise NotImplementedError

    # ---- one iteration ------------------------------------------------------------------------------------------

    def _start_iteration(self, engine: DistillationTrainer, batchdata: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch on the device, checked; ``engine.state.output`` starts as its ``image`` and ``label``."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        inputs, targets = self._prepare(batchdata)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        return inputs, targets

    def _prepare(self, batchdata: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch's image and label on the device (``prepare_batch``), checked against the channels."""
        batch = self.prepare_batch(batchdata, self.state.device, self.non_blocking, **self.to_kwargs)
        inputs, targets = batch[0], batch[1]
        self._check_batch(inputs, targets)
        return inputs, targets

    def _check_batch(self, inputs: torch.Tensor, targets: Any) -> None:
        name = type(self).__name__
        if targets is None:
            raise ValueError(f"{name}: the batch has no label; expected {{'image': ..., 'label': ...}}.")
        needed = max([*self.student_channels, *(self.teacher_channels or [])]) + 1
        if inputs.ndim < 3 or inputs.shape[1] < needed:
            raise ValueError(
                f"{name}: image of shape {tuple(inputs.shape)} has too few channels; expected (B, M, *S) with "
                f"M >= {needed} (student channel {self.student_channel}, teacher channels {self.teacher_channels})."
            )

    @staticmethod
    def _channel(inputs: torch.Tensor, channel: int) -> torch.Tensor:
        """Image channel ``channel`` of a batch, ``(B, 1, *S)``."""
        return inputs[:, channel : channel + 1]

    def _student_input(self, inputs: torch.Tensor) -> torch.Tensor:
        """What the student reads: image channels :attr:`student_channels` in their order, ``(B, len, *S)``.

        One channel is the slice :meth:`_channel` takes (a view of the batch, as MTCM-KD's student reads it); several
        are gathered in the order of :attr:`student_channels`, which need not be the order of the image channels.
        """
        if len(self.student_channels) == 1:
            return self._channel(inputs, self.student_channels[0])
        return inputs[:, self.student_channels]

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp and self.scaler is not None:
            return torch.autocast("cuda", **self.amp_kwargs)
        return contextlib.nullcontext()

    def _backward(self, loss: torch.Tensor) -> None:
        if self.amp and self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def _step(self, optimizer: Optimizer) -> None:
        if self.amp and self.scaler is not None:
            self.scaler.step(optimizer)  # the scaler's update() follows every step, once per iteration
        else:
            optimizer.step()

    def _update_scaler(self) -> None:
        if self.amp and self.scaler is not None:
            self.scaler.update()
