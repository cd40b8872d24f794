"""MTCM-KD networks beyond the shared backbone: the CDSFL fusion module and a feature-returning teacher wrapper.

The four MTCM-KD networks (three unimodal teachers, one unimodal student) are all
:func:`common.networks.cohra_unet.mtcm_kd_backbone`; a bundle config builds the student directly and the teachers
with :func:`teacher_networks`:

- the **student** with the default ``deep_supervision=True``: in training mode it returns
  ``[logits, ds_1/2, ds_1/4]`` and :class:`common.engines.mtcm_kd.MTCMKDTrainer` uses ``logits`` and ``ds_1/2``;
- each **teacher** with ``deep_supervision=False``: the trainer calls only
  :meth:`~common.networks.cohra_unet.COHRAUNet.forward_features` (full-resolution logits plus the decoder features),
  so the deep-supervision heads would be parameters that never get a gradient (776 of them per teacher in the full
  backbone; DistributedDataParallel refuses unused parameters unless told to look for them). The upstream teachers
  return the raw decoder features instead of head outputs, too (research notes ``brats_methods.md`` section 1.2).

:class:`CooperativeFusion` is the cooperative deep supervision fusion learning (CDSFL) module, section 1.4.
:func:`to_device` and :func:`distributed` place the teachers and the fusion module for one device or for
DistributedDataParallel, so that the bundle's single- and multi-GPU configs each say it in one call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv

from common.networks.blocks import CBAMChannelGate
from common.networks.cohra_unet import COHRAUNet, mtcm_kd_backbone

__all__ = ["CooperativeFusion", "TeacherFeatures", "distributed", "teacher_networks", "to_device"]

Modules = nn.Module | Sequence[nn.Module] | None


class CooperativeFusion(nn.Module):
    """CDSFL: fuse the teachers' decoder features into one set of logits (MTCM-KD, Ahmad, Ullah, Gwak, KBS 2024).

    Sourced from RhineLT/mtcm-kd ``models/cooperative_learning.py`` @0d44741 (``Cooperative_Learning_Module``):
    each teacher's feature map passes through its own CBAM channel gate (average- and max-pooled descriptors through
    a shared ``C -> C/r -> C`` MLP with LeakyReLU, sigmoid, channel rescale; the lab's ``ChannelGate``, which is
    :class:`common.networks.blocks.CBAMChannelGate`) and its own 1x1 convolution to ``out_channels``; the results are
    summed and a last 1x1 convolution gives the fused logits. Trained with the teachers (cooperative loss), the
    module's logits are distilled into the student's deep-supervision head.

    Parameters, for the defaults (3 teachers, 64 -> 4, r = 16, every layer biased): per teacher the gate has
    ``(64*4 + 4) + (4*64 + 64) = 580`` and the projection ``64*4 + 4 = 260``, so ``3 * 840 = 2520``, plus
    ``4*4 + 4 = 20`` for the output convolution: **2,540** (the "about 2.5 k" of research notes section 1.4).

    Args:
        num_teachers: number of feature maps fused (3).
        in_channels: channels of each teacher feature map (64: ``features[1]`` of :func:`mtcm_kd_backbone`, i.e.
            ``channels[1]`` of the backbone).
        out_channels: classes of the fused logits (4).
        spatial_dims: 3 (volumes) or 2 (slices).
        reduction: channel-gate MLP reduction ratio r (16; the hidden width is ``max(1, in_channels // r)``).
        act: hidden activation of the channel gates, MONAI-style (LeakyReLU 0.01 as in the lab code).

    Shape: ``num_teachers x (B, in_channels, *S) -> (B, out_channels, *S)``.
    """

    def __init__(
        self,
        num_teachers: int = 3,
        in_channels: int = 64,
        out_channels: int = 4,
        spatial_dims: int = 3,
        reduction: int = 16,
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.01}),
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"CooperativeFusion: spatial_dims must be 2 or 3, got {spatial_dims}.")
        if num_teachers < 1:
            raise ValueError(f"CooperativeFusion: num_teachers must be >= 1, got {num_teachers}.")
        conv = Conv[Conv.CONV, spatial_dims]
        self.num_teachers = num_teachers
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.spatial_dims = spatial_dims
        self.gates = nn.ModuleList(
            [CBAMChannelGate(spatial_dims, in_channels, reduction, act) for _ in range(num_teachers)]
        )
        self.projections = nn.ModuleList([conv(in_channels, out_channels, kernel_size=1) for _ in range(num_teachers)])
        self.output = conv(out_channels, out_channels, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features: one ``(B, in_channels, *S)`` map per teacher, all the same shape, in the teachers' order.

        Returns:
            fused logits ``(B, out_channels, *S)``.
        """
        if len(features) != self.num_teachers:
            raise ValueError(
                f"CooperativeFusion: expected {self.num_teachers} teacher feature maps, got {len(features)}."
            )
        expected = features[0].shape
        fused = None
        for gate, projection, feature in zip(self.gates, self.projections, features, strict=True):
            if feature.ndim != self.spatial_dims + 2 or feature.shape[1] != self.in_channels:
                raise ValueError(
                    f"CooperativeFusion: a teacher feature map has shape {tuple(feature.shape)}; expected "
                    f"(B, {self.in_channels}, {self.spatial_dims} spatial dims)."
                )
            if feature.shape != expected:
                raise ValueError(
                    f"CooperativeFusion: teacher feature maps differ in shape: {tuple(expected)} and "
                    f"{tuple(feature.shape)}."
                )
            projected = projection(gate(feature))
            fused = projected if fused is None else fused + projected
        return self.output(fused)


class TeacherFeatures(nn.Module):
    """Make a teacher's ``forward`` return ``forward_features``, for wrappers that only route ``forward``.

    :class:`common.engines.mtcm_kd.MTCMKDTrainer` calls ``teacher.forward_features(x)`` when the teacher has it,
    and ``teacher(x)`` otherwise. ``DistributedDataParallel`` synchronises gradients only for computations run
    through its ``forward``, so under DDP wrap each teacher as ``DistributedDataParallel(TeacherFeatures(net))``;
    calling ``ddp.module.forward_features`` would train each rank's teacher on its own gradients.

    Shape: ``(B, C_in, *S) -> ((B, C_out, *S), [f_1, f_1/2, ...])``, as :meth:`COHRAUNet.forward_features`.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        if not callable(getattr(network, "forward_features", None)):
            raise TypeError(
                f"TeacherFeatures: {type(network).__name__} has no forward_features(x) method; expected a "
                "COHRAUNet / mtcm_kd_backbone teacher."
            )
        self.network = network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.network.forward_features(x)


def teacher_networks(
    count: int,
    channels: Sequence[int],
    in_channels: int = 1,
    out_channels: int = 4,
    deep_supervision: bool = False,
) -> list[COHRAUNet]:
    """``count`` teachers, each ``mtcm_kd_backbone(in_channels, out_channels, channels=channels, deep_supervision)``,
    built one after the other (each draws its initial weights from the global generator in turn).

    The defaults are MTCM-KD's unimodal teachers: one image channel each and no deep-supervision heads, since the
    trainer reads their decoder features instead (module docstring).
    """
    return [
        mtcm_kd_backbone(
            in_channels=in_channels, out_channels=out_channels, channels=channels, deep_supervision=deep_supervision
        )
        for _ in range(count)
    ]


def _each(place: Callable[[nn.Module], nn.Module], modules: Modules) -> Modules:
    if modules is None:
        return None
    if isinstance(modules, nn.Module):
        return place(modules)
    return [place(m) for m in modules]


def to_device(modules: Modules, device: str | torch.device) -> Modules:
    """``modules`` (one module, a sequence of them as a list, or None) moved to ``device``; None stays None."""
    return _each(lambda m: m.to(device), modules)


def distributed(modules: Modules, device: str | torch.device, device_ids: Sequence | None = None) -> Modules:
    """``modules`` (one module, a sequence of them as a list, or None) moved to ``device``, each inside
    ``DistributedDataParallel(..., device_ids=device_ids)``; None stays None.

    A network built without deep supervision (an MTCM-KD teacher: the trainer calls its ``forward_features``) goes
    into :class:`TeacherFeatures` first, since DistributedDataParallel synchronises the gradients only of what runs
    through its ``forward``. Other modules (the fusion module, a teacher with deep supervision such as Choi et al.'s,
    which the trainer calls as a whole) are wrapped as they are.
    """

    def wrap(module: nn.Module) -> nn.Module:
        module = module.to(device)
        if not getattr(module, "deep_supervision", True):
            module = TeacherFeatures(module)
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)

    return _each(wrap, modules)
