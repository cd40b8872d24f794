"""Fold ensembles and mirroring test-time augmentation as one inferer wrapper: probabilities are averaged.

:class:`EnsembleInferer` wraps a bundle's inferer (``FastInferer`` around a ``SlidingWindowInferer``,
``SimpleInferer`` or ``SliceInferer``) and runs it once per network of an ensemble (the checkpoints of a k-fold
cross-validation, loaded with :func:`load_networks`) and per mirrored copy of the input (nnU-Net's mirroring: the
input flipped along every non-empty subset of ``mirror_axes``, the output flipped back; 8 passes for the three
axes of a volume, 4 for the two of a slice). It averages the passes' *probabilities*, not their logits, and returns
logits whose activation is that mean:

* ``"sigmoid"`` (region channels, thresholded at 0.5): ``logit(mean(sigmoid(z_i)))``, the probabilities clamped
  to ``[1e-7, 1 - 1e-7]`` so that the logits stay finite;
* ``"softmax"`` (classes, argmax): ``log(mean(softmax(z_i)))``, since ``softmax(log p) = p`` for probabilities
  ``p`` that sum to 1 (clamped at float32's smallest normal number, so no ``-inf``).

A bundle's postprocessing (``Activationsd``, ``AsDiscreted``, ``Invertd``) therefore stays exactly as it is. With
one pass (one network or none, no mirror axes) the wrapped inferer's output is returned untouched, so the wrapper
is free when both switches are off.

Why outside ``FastInferer`` (``EnsembleInferer(inferer=FastInferer(...))``): ``FastInferer`` wraps the network it
is given in its bf16 / channels-last forward; an ensemble hands it each of its networks in turn, so every member
gets the fast path, and the sliding window under ``FastInferer`` is the bundle's own (``cpu_sw_batch_size`` still
applies). Every pass comes back float32 and outside inference mode; the average is float32.
"""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type

from common.engines.checkpoints import CheckpointError, read_checkpoint, weights_misfit

__all__ = [
    "ACTIVATIONS",
    "EnsembleCheckpointError",
    "EnsembleCheckpointNotFoundError",
    "EnsembleInferer",
    "load_networks",
    "mirror_flips",
    "probabilities_to_logits",
]

ACTIVATIONS = ("sigmoid", "softmax")
SIGMOID_EPS = 1e-7  # logit(1 - 1e-7) ~ 16 in float32: finite, and far from the 0.5 threshold


class EnsembleCheckpointError(CheckpointError):
    """A checkpoint of ``ensemble_checkpoints`` cannot be loaded into the bundle's network; the message says why."""


class EnsembleCheckpointNotFoundError(EnsembleCheckpointError, FileNotFoundError):
    """Checkpoints of ``ensemble_checkpoints`` do not exist; the message names every missing path."""


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def probabilities_to_logits(probabilities: torch.Tensor, activation: str) -> torch.Tensor:
    """Logits whose ``activation`` (softmax: over dim 1) gives back ``probabilities`` ``(B, C, *spatial)``."""
    if activation == "sigmoid":
        return torch.logit(probabilities, eps=SIGMOID_EPS)
    if activation == "softmax":
        return torch.log(probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny))
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}.")


def _probabilities(logits: torch.Tensor, activation: str) -> torch.Tensor:
    return torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, dim=1)


def mirror_flips(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """The tensor dims to flip for each pass, the unflipped pass ``()`` first: every subset of ``mirror_axes``.

    ``mirror_axes`` are spatial axes (0 is the first spatial axis, dim 2 of a ``(B, C, *spatial)`` batch), so
    ``(0, 1, 2)`` gives 8 passes and ``(0, 1)`` gives 4.
    """
    dims = [int(a) + 2 for a in mirror_axes]
    return [subset for r in range(len(dims) + 1) for subset in itertools.combinations(dims, r)]


class EnsembleInferer(Inferer):
    """Run ``inferer`` for every network of an ensemble and every mirrored copy of the input; average probabilities.

    Args:
        inferer: the bundle's inferer, called as ``inferer(inputs, network, *args, **kwargs)`` and returning logits
            ``(B, C, *spatial)`` (one tensor; deep-supervision lists are not averaged).
        activation: ``"sigmoid"`` or ``"softmax"``, the activation the bundle's postprocessing applies to the logits.
        networks: the ensemble (e.g. :func:`load_networks` of the fold checkpoints), each run in turn in place of
            the network the caller passes; empty: the caller's network alone (no ensemble).
        mirror_axes: spatial axes to mirror the input along (0 is the first spatial axis); every non-empty subset
            is one more pass (nnU-Net's mirroring). Empty: no test-time augmentation.

    ``__call__(inputs, network)`` takes a batch ``(B, C_in, *spatial)`` (a ``MetaTensor`` keeps its meta data) and
    returns ``(B, C, *spatial)`` float32 logits whose ``activation`` is the mean probability over
    ``len(networks or [network]) * 2 ** len(mirror_axes)`` passes, with the meta data of the unflipped first pass.
    """

    def __init__(
        self,
        inferer: Inferer | Callable[..., Any],
        activation: str,
        networks: Sequence[nn.Module] = (),
        mirror_axes: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if not callable(inferer):
            raise TypeError(f"EnsembleInferer: inferer must be a callable Inferer, got {type(inferer).__name__}.")
        if activation not in ACTIVATIONS:
            raise ValueError(f"EnsembleInferer: activation must be one of {ACTIVATIONS}, got {activation!r}.")
        axes = tuple(int(a) for a in mirror_axes)
        if any(a < 0 for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(f"EnsembleInferer: mirror_axes must be distinct spatial axes >= 0, got {list(axes)}.")
        self.inferer = inferer
        self.activation = activation
        self.networks = list(networks)
        self.mirror_axes = axes

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        members = self.networks or [network]
        if self.mirror_axes and max(self.mirror_axes) >= inputs.dim() - 2:
            raise ValueError(
                f"EnsembleInferer: mirror_axes {list(self.mirror_axes)} need {max(self.mirror_axes) + 1} spatial "
                f"axes, but the input batch has shape {list(inputs.shape)} (B, C, *spatial)."
            )
        flips = mirror_flips(self.mirror_axes)
        if len(members) * len(flips) == 1:
            return self.inferer(inputs, members[0], *args, **kwargs)
        first: torch.Tensor | None = None
        total: torch.Tensor | None = None
        for member in members:
            for dims in flips:
                out = self.inferer(torch.flip(inputs, dims) if dims else inputs, member, *args, **kwargs)
                if not isinstance(out, torch.Tensor):
                    raise TypeError(
                        f"EnsembleInferer: the wrapped inferer must return one logits tensor, got {type(out).__name__}."
                    )
                if first is None:
                    first = out
                logits = _plain(out).float()
                if dims:
                    logits = torch.flip(logits, dims)
                # a running sum in one buffer: memory does not grow with the number of passes
                probabilities = _probabilities(logits, self.activation)
                total = probabilities if total is None else total.add_(probabilities)
        mean = total / (len(members) * len(flips))
        return convert_to_dst_type(probabilities_to_logits(mean, self.activation), dst=first, dtype=torch.float32)[0]

    def __repr__(self) -> str:
        return (
            f"EnsembleInferer({self.inferer!r}, activation={self.activation!r}, networks={len(self.networks)}, "
            f"mirror_axes={list(self.mirror_axes)})"
        )


def _state_dict(checkpoint: Any) -> Mapping[str, torch.Tensor]:
    # MONAI's CheckpointSaver writes {"model": state_dict, ...}; a bare state dict is accepted as well
    if isinstance(checkpoint, Mapping) and "model" in checkpoint and isinstance(checkpoint["model"], Mapping):
        return checkpoint["model"]
    return checkpoint


def load_networks(
    network: nn.Module,
    checkpoints: Sequence[str | os.PathLike],
    device: torch.device | str | None = None,
) -> list[nn.Module]:
    """One copy of ``network`` per checkpoint, with that checkpoint's weights, in eval mode on ``device``.

    Args:
        network: the bundle's ``network_def``; it is copied (``copy.deepcopy``), never modified.
        checkpoints: paths of checkpoints of that network: MONAI ``{"model": state_dict}`` files (what the bundles'
            ``CheckpointSaver`` writes, ``models/model.pt`` or a fold's) or bare state dicts. Empty: no ensemble.
        device: where the copies go (``None``: where ``network`` is).

    Raises:
        EnsembleCheckpointNotFoundError: naming every path that is not a file, before anything is loaded.
        EnsembleCheckpointError: naming the checkpoint that is not a readable ``torch.save`` file or whose weights
            do not fit ``network`` (strict loading: another architecture or width is an error, not a partial load);
            read and checked as every checkpoint of the zoo is (:mod:`common.engines.checkpoints`).
    """
    paths = [Path(c) for c in checkpoints]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise EnsembleCheckpointNotFoundError(
            f"ensemble_checkpoints: {', '.join(repr(m) for m in missing)} "
            f"{'does' if len(missing) == 1 else 'do'} not exist: expected a checkpoint of this bundle's network "
            "(a training run's models/model.pt, {'model': state_dict}) at each path."
        )
    members = []
    for path in paths:
        try:
            checkpoint = read_checkpoint(path, map_location="cpu")
        except CheckpointError as e:
            reason = str(e).removeprefix(f"{path}: ")
            raise EnsembleCheckpointError(f"'{path}': not a readable checkpoint: {reason}.") from e
        member = copy.deepcopy(network)
        state = _state_dict(checkpoint)
        misfit = weights_misfit(member, state)
        if misfit:
            raise EnsembleCheckpointError(
                f"'{path}': its weights do not fit this bundle's network_def ({misfit}); "
                "ensemble members must be checkpoints of the same network with the same settings."
            )
        member.load_state_dict(state)
        if device is not None:
            member = member.to(device)
        members.append(member.eval().requires_grad_(False))
    return members
