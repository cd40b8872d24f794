"""Dictionary transforms of RefNet (``refnet_synapse``): its input, 2.5D image channels and label-map corruptions.

- :class:`RefNetInputd` builds what RefNet is given, from a base prediction and (image-aware RefNet) the CT. The
  training, validation and ``refine.json`` pipelines and the cascade inferer
  (:class:`common.inferers.refinement.BaseThenRefineInferer`) all use it, so they cannot disagree on the input.
- :class:`AddNeighbouringSlicesd` stacks each CT slice's depth neighbours as channels, so that a 2D slice network
  (RefNet run by ``SliceInferer``) sees the slices above and below.
- :class:`RandLabelErosionDilationd`, :class:`RandLabelSwapd` and :class:`RandDropSlicesd` corrupt a ground-truth
  label map into a plausible base-model prediction. RefNet learns to refine what its inputs get wrong, and a base
  model's predictions on its own training cases are nearly perfect, so the research notes (``fct_refnet.md``
  section 5: Post-DAE, SegRefiner's transition sampling) recommend synthetic corruptions of the ground truth as
  extra training inputs: boundaries moved (erosion/dilation), structures given the wrong organ id (label swaps) and
  slices missed (dropped slices).

The corruptions work on channel-first label maps ``(1, H, W[, D])`` of integer class ids stored in any dtype (numpy,
torch or ``MetaTensor``; float as MONAI loads them). They return the same type, dtype, device, shape and meta data
(affine included), and only ever output class ids the map could already hold: erosion/dilation and dropped slices
only move ids that are present (or background), label swaps draw new ids from the organ ids ``1..num_classes-1``.
Each one is applied with probability ``prob`` (``prob=0`` is the identity), draws from its own random state
(``set_random_state(seed)`` makes it repeatable), uses one decision per call for all its keys but corrupts every key
independently, and is not invertible (nothing is recorded in ``applied_operations``). Radii and sizes are in voxels.

A training pipeline that corrupts a copy of the ground truth into the RefNet input ``base``::

    {"_target_": "CopyItemsd", "keys": "label", "names": "base"},
    {"_target_": "common.transforms.refinement.RandLabelErosionDilationd", "keys": "base", "prob": 0.5},
    {"_target_": "common.transforms.refinement.RandLabelSwapd", "keys": "base", "prob": 0.2, "num_classes": 13},
    {"_target_": "common.transforms.refinement.RandDropSlicesd", "keys": "base", "prob": 0.2}
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import AsDiscrete, MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type
from scipy import ndimage

__all__ = [
    "BASE_INPUTS",
    "AddNeighbouringSlicesd",
    "RandDropSlicesd",
    "RandLabelErosionDilationd",
    "RandLabelSwapd",
    "RefNetInputd",
]

#: What RefNet is given of the base prediction: its label map one-hot encoded, or its class probabilities.
BASE_INPUTS = ("labels", "probabilities")
#: The two steps of :class:`RefNetInputd`, in the order they run.
REFNET_INPUT_STEPS = ("neighbours", "assemble")
SWAP_MODES = ("component", "organ", "exchange")
DROP_MODES = ("background", "neighbour")


def _int_range(name: str, value: int | Sequence[int], minimum: int) -> tuple[int, int]:
    """An int or an inclusive ``(low, high)`` pair -> ``(low, high)``, both ``>= minimum``."""
    low, high = (value, value) if isinstance(value, int) else tuple(value)
    if not minimum <= low <= high:
        raise ValueError(
            f"{name} must be an int or an inclusive (low, high) range with {minimum} <= low <= high, got {value!r}."
        )
    return int(low), int(high)


def _spatial_axis(spatial_axis: int, spatial_dims: int, key: Hashable) -> int:
    """MONAI-style spatial axis (``-1`` = last spatial dim) -> array axis (channel first)."""
    if not -spatial_dims <= spatial_axis < spatial_dims:
        raise ValueError(f"'{key}': spatial_axis={spatial_axis} is out of range for {spatial_dims} spatial dims.")
    return 1 + spatial_axis % spatial_dims


def _label_array(labels: NdarrayOrTensor, key: Hashable) -> np.ndarray:
    """``(1, *spatial)`` label map of any type -> int64 numpy array, checked to hold integer class ids."""
    if labels.ndim < 3 or labels.shape[0] != 1:
        raise ValueError(
            f"'{key}': expected a channel-first label map of shape (1, H, W[, D]), got shape {tuple(labels.shape)}."
        )
    array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    ids = np.rint(array).astype(np.int64)
    if np.any(np.abs(array - ids) > 1e-3) or np.any(ids < 0):
        raise ValueError(
            f"'{key}': a label map must hold non-negative integer class ids, found values from "
            f"{array.min()} to {array.max()}."
        )
    return ids


def _ball(radius: int, ndim: int) -> np.ndarray:
    grid = np.ogrid[tuple(slice(-radius, radius + 1) for _ in range(ndim))]
    return sum(axis**2 for axis in grid) <= radius**2


def _grow_box(box: tuple[slice, ...], margin: int, shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape, strict=True))


def _present_organs(ids: np.ndarray) -> np.ndarray:
    organs = np.unique(ids)
    return organs[organs > 0]


class AddNeighbouringSlicesd(MapTransform):
    """Stack every slice's depth neighbours as channels: ``(C, H, W, D) -> (C * (2k + 1), H, W, D)``.

    Output channel block ``j`` (``j = 0..2k``) holds the input shifted by ``j - k`` slices along ``spatial_axis``:
    at depth ``d`` it is the input at ``d + j - k``, with the first and last slice repeated beyond the volume's ends.
    The channels are in depth order (slice ``d - k`` first), each block holding all ``C`` input channels, so for a
    one-channel CT the centre slice is channel ``k`` and channels ``0..2k`` read like a 2.5D stack. A 2D slice
    network then gets ``(2k + 1) * C`` image channels (``RefNet(image_channels=2 * k + 1)``). ``num_neighbours=0``
    returns the input unchanged. Works on numpy arrays, tensors and ``MetaTensor`` (meta data kept; the spatial grid,
    hence the affine, does not change).

    Args:
        keys: keys of the images to expand.
        num_neighbours: ``k``, the slices taken on each side.
        spatial_axis: the depth axis among the spatial dims (``-1``: the last one, ``D``).
        allow_missing_keys: do not fail on missing keys.
    """

    def __init__(
        self, keys: KeysCollection, num_neighbours: int = 1, spatial_axis: int = -1, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if num_neighbours < 0:
            raise ValueError(f"num_neighbours must be >= 0, got {num_neighbours}.")
        self.num_neighbours = int(num_neighbours)
        self.spatial_axis = int(spatial_axis)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if image.ndim < 3:
                raise ValueError(f"'{key}': expected a channel-first image (C, H, W[, D]), got shape {image.shape}.")
            axis = _spatial_axis(self.spatial_axis, image.ndim - 1, key)
            depth = image.shape[axis]
            shifted = []
            for offset in range(-self.num_neighbours, self.num_neighbours + 1):
                index = np.clip(np.arange(depth) + offset, 0, depth - 1)
                if isinstance(image, torch.Tensor):
                    shifted.append(torch.index_select(image, axis, torch.as_tensor(index, device=image.device)))
                else:
                    shifted.append(np.take(image, index, axis=axis))
            d[key] = torch.cat(shifted, dim=0) if isinstance(image, torch.Tensor) else np.concatenate(shifted, axis=0)
        return d


class RefNetInputd(MapTransform):
    """RefNet's input, from a base prediction and (image-aware RefNet) the CT, stored under ``output_key``.

    Channels, in this order:

    1. the base prediction, ``num_classes`` channels. ``base_input="labels"``: the label map under ``base_key``
       (``(1, *spatial)`` class ids) one-hot encoded (MONAI ``AsDiscrete(to_onehot=num_classes)``), which RefNet
       (``label_input="probabilities"``) embeds exactly as the paper's embedding of the hard labels;
       ``"probabilities"``: the class probabilities under ``probabilities_key`` as they are (float32);
    2. with ``use_image`` only: the intensity-scaled CT under ``image_key`` and ``num_neighbours`` slices on each side
       of every slice along depth (:class:`AddNeighbouringSlicesd`), ``2 * num_neighbours + 1`` channels
       (:attr:`image_channels`, RefNet's ``image_channels``).

    The bundle's training and validation pipelines (``train.json``), ``refine.json`` and the cascade inferer of
    ``inference.json`` all build RefNet's input with this transform, each from the same variant settings
    (``base_input``, ``use_image``, ``num_neighbours``), so training and inference cannot drift apart.

    Two steps make the input, and a call runs both:

    - ``"neighbours"`` stacks the CT's neighbouring slices in place (``image_key`` then holds ``2k + 1`` channels);
      it needs whole volumes, since it reads along depth;
    - ``"assemble"`` encodes the base prediction and appends the CT channels, voxel by voxel, so it works on volumes
      and on single slices alike.

    :attr:`neighbours` and :attr:`assemble` are copies of the transform that run one step each, for a training
    pipeline that samples 2D slices: the neighbours before sampling, the rest after, which gives each slice exactly
    what a call gives the volume at that depth, while the one-hot encoding never holds ``num_classes`` float
    channels of a whole CT in memory.

    Other keys are left as they are (``base_key`` still holds the label map, e.g. for a loss). The output has the
    type of the base prediction (a ``MetaTensor`` with its meta data in a MONAI pipeline, a tensor in the inferer).

    Args:
        base_input: one of :data:`BASE_INPUTS`.
        num_classes: classes of the base prediction, background included (13).
        use_image: append the CT (image-aware RefNet).
        num_neighbours: CT slices on each side of every slice, with ``use_image``.
        base_key: the base label map ``(1, *spatial)``, read with ``base_input="labels"``.
        probabilities_key: the base class probabilities ``(num_classes, *spatial)``, read with ``"probabilities"``.
        image_key: the CT ``(1, *spatial)``, intensity-scaled; read with ``use_image``.
        output_key: where the input goes (``"image"``, what a MONAI engine feeds the network).
        steps: the steps this instance runs, of :data:`REFNET_INPUT_STEPS` (both by default).

    Raises:
        ValueError: for unknown settings; in a call, for probabilities that are not ``num_classes`` channels or CT
            channels that do not number ``2 * num_neighbours + 1`` (the ``"neighbours"`` step not run first).
    """

    def __init__(
        self,
        base_input: str = "labels",
        num_classes: int = 13,
        use_image: bool = False,
        num_neighbours: int = 0,
        base_key: str = "base",
        probabilities_key: str = "base_probabilities",
        image_key: str = "image",
        output_key: str = "image",
        steps: Sequence[str] = REFNET_INPUT_STEPS,
    ) -> None:
        if base_input not in BASE_INPUTS:
            raise ValueError(f"RefNetInputd: base_input must be one of {BASE_INPUTS}, got {base_input!r}.")
        if num_classes < 2:
            raise ValueError(f"RefNetInputd: num_classes must be at least 2, got {num_classes}.")
        if num_neighbours < 0:
            raise ValueError(f"RefNetInputd: num_neighbours must be >= 0, got {num_neighbours}.")
        steps = tuple(steps)
        if not steps or any(step not in REFNET_INPUT_STEPS for step in steps):
            raise ValueError(f"RefNetInputd: steps must be taken from {REFNET_INPUT_STEPS}, got {steps}.")
        self.source_key = base_key if base_input == "labels" else probabilities_key
        super().__init__([self.source_key, *([image_key] if use_image else [])])
        self.base_input = base_input
        self.num_classes = int(num_classes)
        self.use_image = bool(use_image)
        self.num_neighbours = int(num_neighbours)
        self.base_key = base_key
        self.probabilities_key = probabilities_key
        self.image_key = image_key
        self.output_key = output_key
        self.steps = steps
        self._stack = AddNeighbouringSlicesd(image_key, num_neighbours=self.num_neighbours)
        self._encode = AsDiscrete(to_onehot=self.num_classes if base_input == "labels" else None)

    @property
    def image_channels(self) -> int:
        """CT channels after the base channels: ``2 * num_neighbours + 1`` with ``use_image``, else 0."""
        return 2 * self.num_neighbours + 1 if self.use_image else 0

    @property
    def neighbours(self) -> RefNetInputd:
        """This transform running the ``"neighbours"`` step only (whole volumes, before slices are sampled)."""
        return self._only("neighbours")

    @property
    def assemble(self) -> RefNetInputd:
        """This transform running the ``"assemble"`` step only (volumes or slices, after ``neighbours``)."""
        return self._only("assemble")

    def _only(self, step: str) -> RefNetInputd:
        part = copy.copy(self)
        part.steps = (step,)
        return part

    def _assemble(self, d: Mapping[Hashable, NdarrayOrTensor]) -> NdarrayOrTensor:
        base = d[self.source_key]
        if self.base_input == "probabilities" and base.shape[0] != self.num_classes:
            raise ValueError(
                f"RefNetInputd: '{self.source_key}' holds {base.shape[0]} channels; expected the probabilities of "
                f"the {self.num_classes} classes."
            )
        encoded = self._encode(base)
        if encoded is base:  # AsDiscrete passes float32 probabilities through; the input must not alias them
            encoded = copy.deepcopy(base)
        if not self.use_image:
            return encoded
        image = convert_to_dst_type(d[self.image_key], dst=encoded)[0]
        if image.shape[0] != self.image_channels:
            raise ValueError(
                f"RefNetInputd: '{self.image_key}' holds {image.shape[0]} channels; expected the CT and "
                f"{self.num_neighbours} neighbouring slice(s) on each side, {self.image_channels} (run the "
                "'neighbours' step on the volume first)."
            )
        if isinstance(encoded, torch.Tensor):
            return torch.cat([encoded, image], dim=0)
        return np.concatenate([encoded, image], axis=0)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        if "neighbours" in self.steps and self.use_image:
            d = self._stack(d)
        if "assemble" in self.steps:
            d[self.output_key] = self._assemble(d)
        return d

    def __repr__(self) -> str:
        settings = f"{self.base_input}, use_image={self.use_image}, num_neighbours={self.num_neighbours}"
        return f"RefNetInputd({settings}, steps={self.steps})"


class _RandLabelCorruptiond(RandomizableTransform, MapTransform):
    """Shared ``prob`` / key handling: subclasses implement :meth:`corrupt` on an int64 ``(1, *spatial)`` map."""

    def __init__(self, keys: KeysCollection, prob: float, allow_missing_keys: bool) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)

    def corrupt(self, ids: np.ndarray, key: Hashable) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            corrupted = self.corrupt(_label_array(d[key], key), key)
            d[key] = convert_to_dst_type(corrupted, dst=d[key])[0]
        return d


class RandLabelErosionDilationd(_RandLabelCorruptiond):
    """Erode or dilate a random subset of the organs by small random radii (boundary errors).

    Every organ present is picked with probability ``organ_prob`` (at least one is picked when any organ is
    present); each picked organ is dilated with probability ``dilation_prob``, else eroded, by a radius drawn
    uniformly from ``radius`` with a ball-shaped structuring element over all spatial dims. All masks are computed
    from the input map, then overlaps are resolved so:

    1. an eroded organ's lost rim becomes background;
    2. a dilated organ takes the voxels within its radius from background and from every organ that is not itself
       dilated (a neighbour's boundary moves; an organ that grows never loses voxels to another growing organ);
    3. a voxel claimed by several dilated organs goes to the one applied last, in an order drawn at random.

    Voxels beyond the volume's border count as part of an organ that touches it, so erosion does not eat organs cut
    by the field of view. A small organ may vanish when eroded (a missed structure).

    Args:
        keys: keys of the label maps ``(1, H, W[, D])`` to corrupt.
        prob: probability of corrupting at all.
        organ_prob: probability that each present organ is eroded or dilated.
        dilation_prob: probability that a picked organ is dilated rather than eroded.
        radius: radius in voxels, an int or an inclusive ``(low, high)`` range (``(1, 3)``).
        allow_missing_keys: do not fail on missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        organ_prob: float = 0.5,
        dilation_prob: float = 0.5,
        radius: int | Sequence[int] = (1, 3),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        for name, value in (("organ_prob", organ_prob), ("dilation_prob", dilation_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}.")
        self.organ_prob = float(organ_prob)
        self.dilation_prob = float(dilation_prob)
        self.radius = _int_range("radius", radius, minimum=1)

    def corrupt(self, ids: np.ndarray, key: Hashable) -> np.ndarray:
        organs = _present_organs(ids)
        if organs.size == 0:
            return ids
        picked = organs[self.R.rand(organs.size) < self.organ_prob]
        if picked.size == 0:
            picked = organs[[self.R.randint(organs.size)]]
        picked = picked[self.R.permutation(picked.size)]  # the random order of rule 3
        dilate = self.R.rand(picked.size) < self.dilation_prob
        radii = self.R.randint(self.radius[0], self.radius[1] + 1, size=picked.size)

        volume = ids[0]
        out = volume.copy()
        boxes = ndimage.find_objects(volume)
        protected = np.isin(volume, picked[dilate])
        # erosions first (rule 1), so that dilations may take the freed voxels (rule 2)
        for organ, radius in zip(picked[~dilate], radii[~dilate], strict=True):
            box = _grow_box(boxes[organ - 1], radius, volume.shape)
            mask = volume[box] == organ
            kept = ndimage.binary_erosion(mask, structure=_ball(radius, volume.ndim), border_value=1)
            out[box][mask & ~kept] = 0
        for organ, radius in zip(picked[dilate], radii[dilate], strict=True):
            box = _grow_box(boxes[organ - 1], radius, volume.shape)
            mask = volume[box] == organ
            grown = ndimage.binary_dilation(mask, structure=_ball(radius, volume.ndim)) & ~mask & ~protected[box]
            out[box][grown] = organ
        return out[None]


class RandLabelSwapd(_RandLabelCorruptiond):
    """Give a random structure the wrong organ id (structure confusions such as left vs right kidney).

    ``mode`` decides what a structure is and what happens to it; in every mode a present organ ``a`` is drawn
    uniformly, and a wrong id ``b`` uniformly from the organ ids ``1..num_classes-1`` other than ``a`` (background is
    never assigned: losing a structure is what erosion and dropped slices model):

    - ``"component"`` (default): one connected component of ``a`` (drawn uniformly among ``a``'s components, full
      connectivity) is relabelled ``b``; the rest of ``a`` keeps its id;
    - ``"organ"``: all of ``a`` is relabelled ``b`` (``a`` disappears, merged into ``b`` if ``b`` is present);
    - ``"exchange"``: ``a`` and ``b`` exchange their ids (equals ``"organ"`` when ``b`` is absent).

    This repeats ``num_swaps`` times (drawn from the range), each time on the already swapped map. A map without
    organs is returned unchanged.

    Args:
        keys: keys of the label maps ``(1, H, W[, D])`` to corrupt.
        prob: probability of corrupting at all.
        num_classes: number of classes, background included (13); input ids must lie in ``[0, num_classes)``.
        mode: ``"component"``, ``"organ"`` or ``"exchange"``.
        num_swaps: swaps per call, an int or an inclusive ``(low, high)`` range (1).
        allow_missing_keys: do not fail on missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.2,
        num_classes: int = 13,
        mode: str = "component",
        num_swaps: int | Sequence[int] = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        if mode not in SWAP_MODES:
            raise ValueError(f"RandLabelSwapd: unknown mode={mode!r}; expected one of {SWAP_MODES}.")
        if num_classes < 3:
            raise ValueError(f"RandLabelSwapd needs at least 2 organ classes (num_classes >= 3), got {num_classes}.")
        self.num_classes = int(num_classes)
        self.mode = mode
        self.num_swaps = _int_range("num_swaps", num_swaps, minimum=1)

    def corrupt(self, ids: np.ndarray, key: Hashable) -> np.ndarray:
        if ids.max(initial=0) >= self.num_classes:
            raise ValueError(f"'{key}': class ids must lie in [0, {self.num_classes}), found {ids.max()}.")
        volume = ids[0].copy()
        for _ in range(self.R.randint(self.num_swaps[0], self.num_swaps[1] + 1)):
            organs = _present_organs(volume)
            if organs.size == 0:
                break
            organ = organs[self.R.randint(organs.size)]
            wrong = self.R.choice([c for c in range(1, self.num_classes) if c != organ])
            if self.mode == "component":
                box = ndimage.find_objects((volume == organ).astype(np.int8))[0]
                components, count = ndimage.label(volume[box] == organ, structure=np.ones((3,) * volume.ndim))
                volume[box][components == 1 + self.R.randint(count)] = wrong
            elif self.mode == "organ":
                volume[volume == organ] = wrong
            else:
                was_wrong = volume == wrong
                volume[volume == organ] = wrong
                volume[was_wrong] = organ
        return volume[None]


class RandDropSlicesd(_RandLabelCorruptiond):
    """Drop random slices along depth (a base model that missed organs on whole slices).

    ``num_slices`` distinct slices are drawn uniformly among those that hold any organ (among all slices when none
    does). With ``mode="background"`` a dropped slice becomes background; with ``mode="neighbour"`` it gets the
    input labels of the slice before or after it (drawn at random; the only neighbour at the volume's ends, and
    background for a single-slice volume), i.e. a repeated slice. Meant for 3D maps ``(1, H, W, D)``; on a 2D map
    the "slices" are rows or columns.

    Args:
        keys: keys of the label maps ``(1, H, W[, D])`` to corrupt.
        prob: probability of corrupting at all.
        num_slices: slices dropped per call, an int or an inclusive ``(low, high)`` range (``(1, 3)``); at most all
            candidate slices.
        mode: ``"background"`` or ``"neighbour"``.
        spatial_axis: the depth axis among the spatial dims (``-1``: the last one).
        allow_missing_keys: do not fail on missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.2,
        num_slices: int | Sequence[int] = (1, 3),
        mode: str = "background",
        spatial_axis: int = -1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        if mode not in DROP_MODES:
            raise ValueError(f"RandDropSlicesd: unknown mode={mode!r}; expected one of {DROP_MODES}.")
        self.mode = mode
        self.num_slices = _int_range("num_slices", num_slices, minimum=1)
        self.spatial_axis = int(spatial_axis)

    def corrupt(self, ids: np.ndarray, key: Hashable) -> np.ndarray:
        axis = _spatial_axis(self.spatial_axis, ids.ndim - 1, key)
        volume = np.moveaxis(ids, axis, -1)  # a view: depth last
        depth = volume.shape[-1]
        other_axes = tuple(range(volume.ndim - 1))
        candidates = np.flatnonzero(volume.any(axis=other_axes))
        if candidates.size == 0:
            candidates = np.arange(depth)
        count = min(self.R.randint(self.num_slices[0], self.num_slices[1] + 1), candidates.size)
        dropped = self.R.choice(candidates, size=count, replace=False)
        out = volume.copy()
        for index in dropped:
            if self.mode == "neighbour" and depth > 1:
                neighbours = [n for n in (index - 1, index + 1) if 0 <= n < depth]
                out[..., index] = volume[..., neighbours[self.R.randint(len(neighbours))]]
            else:
                out[..., index] = 0
        return np.ascontiguousarray(np.moveaxis(out, -1, axis))
