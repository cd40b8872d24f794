"""The foreground crop of the BraTS bundles: ``CropForegroundd(select_fn=nonzero_foreground)`` before the sliding
window, ``Invertd`` after it (common/inferers/foreground.py). Tiny volumes, 8^3 windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    CropForegroundd,
    EnsureTyped,
    Invertd,
    NormalizeIntensityd,
)

from common.fast_inference import sliding_window_count
from common.inferers.foreground import foreground_box, nonzero_foreground

GRID = (40, 36, 28)
ROI = (8, 8, 8)


def brain_image(channels: int = 2, seed: int = 0) -> MetaTensor:
    """A skull-stripped stand-in: random intensities (negative ones included) inside an ellipsoid, exactly 0
    outside, the ellipsoid well inside the grid."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) for n in GRID), indexing="ij")
    inside = ((x - 21) / 11.0) ** 2 + ((y - 17) / 9.0) ** 2 + ((z - 13) / 7.0) ** 2 < 1.0
    image = rng.normal(1.0, 1.0, (channels, *GRID)).astype(np.float32) * inside
    return MetaTensor(torch.from_numpy(image), affine=torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0])))


class PointwiseNetwork(torch.nn.Module):
    """Logits that are a function of each voxel's intensities alone (a 1x1x1 convolution): every window that covers
    a voxel gives it the same logits, so the window grid cannot change the result. Background (all channels 0) gets
    the bias, -1: below the 0.5 threshold of the sigmoid."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(channels, 3, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 0.5], [-0.7, 1.2], [0.3, -1.1]]).view(3, channels, 1, 1, 1))
            self.conv.bias.fill_(-1.0)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += int(x.shape[0])
        return self.conv(x)


def pipeline(crop: bool) -> tuple[Compose, Compose]:
    """What cohra_unet_brats's inference.json runs around its sliding window, with and without crop_foreground."""
    transforms = [CropForegroundd("image", "image", select_fn=nonzero_foreground, allow_smaller=True)] if crop else []
    preprocessing = Compose(
        [*transforms, NormalizeIntensityd("image", nonzero=True, channel_wise=True), EnsureTyped("image")]
    )
    post = [Activationsd("pred", sigmoid=True), AsDiscreted("pred", threshold=0.5)]
    if crop:
        post.append(Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=True, to_tensor=True))
    return preprocessing, Compose(post)


def infer(image: MetaTensor, crop: bool, network: torch.nn.Module) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The label map on the input's grid and the spatial shape the sliding window saw."""
    preprocessing, postprocessing = pipeline(crop)
    d = preprocessing({"image": image.clone()})
    with torch.no_grad():
        d["pred"] = SlidingWindowInferer(ROI, overlap=0.5, mode="gaussian")(d["image"][None], network)[0]
    seen = tuple(d["image"].shape[1:])
    return torch.as_tensor(postprocessing(d)["pred"]), seen


def test_crop_and_paste_give_the_label_map_of_the_full_grid():
    image = brain_image()
    network = PointwiseNetwork(2)
    full, seen_full = infer(image, crop=False, network=network)
    cropped, seen_cropped = infer(image, crop=True, network=network)
    assert seen_full == GRID and seen_cropped == (21, 17, 13)  # the ellipsoid's box, not the grid
    assert cropped.shape == full.shape == (3, *GRID)
    assert 0 < int(full.sum()) < full.numel()  # a label map with both values, so the comparison means something
    torch.testing.assert_close(cropped, full, rtol=0, atol=0)


def test_the_paste_fills_background_where_the_uncropped_network_would_not():
    """A network that marks background as foreground (positive bias): outside the box the crop pastes 0."""
    image = brain_image()
    network = PointwiseNetwork(2)
    with torch.no_grad():
        network.conv.bias.fill_(1.0)
    full, _ = infer(image, crop=False, network=network)
    cropped, _ = infer(image, crop=True, network=network)
    box = (slice(None), *foreground_box(image))
    outside = torch.ones_like(cropped, dtype=torch.bool)
    outside[box] = False
    assert bool(full[outside].all()) and not bool(cropped[outside].any())
    torch.testing.assert_close(cropped[box], full[box], rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(5))
def test_the_crop_never_cuts_foreground(seed):
    """Every non-zero voxel, negative ones included (normalised intensities), survives the crop; MONAI's default
    select_fn (> 0) would cut off a box face whose voxels are all negative."""
    rng = np.random.default_rng(seed)
    image = np.zeros((2, *GRID), np.float32)
    points = [tuple(rng.integers(0, n) for n in GRID) for _ in range(6)]
    for i, point in enumerate(points):
        image[(i % 2, *point)] = -1.5 if i == 0 else rng.uniform(0.1, 2.0)
    crop = CropForegroundd("image", "image", select_fn=nonzero_foreground, margin=0, allow_smaller=True)
    out = crop({"image": MetaTensor(torch.from_numpy(image))})["image"]
    assert int((out != 0).sum()) == int((image != 0).sum())
    assert float(out.sum()) == pytest.approx(float(image.sum()))
    expected = tuple(int(np.ptp([p[a] for p in points])) + 1 for a in range(3))
    assert tuple(out.shape[1:]) == expected


def test_negative_foreground_is_kept_where_monais_default_would_cut_it():
    image = torch.zeros((1, *GRID))
    image[0, 5, 5, 5], image[0, 30, 30, 20] = 2.0, -0.5  # a normalised voxel below the mean, at a box corner
    kept = CropForegroundd("image", "image", select_fn=nonzero_foreground, allow_smaller=True)({"image": image})
    cut = CropForegroundd("image", "image", allow_smaller=True)({"image": image})
    assert tuple(kept["image"].shape[1:]) == (26, 26, 16) and float(kept["image"].min()) == -0.5
    assert tuple(cut["image"].shape[1:]) == (1, 1, 1)


def test_a_margin_widens_the_box_but_never_past_the_grid():
    image = brain_image()
    box = foreground_box(image, margin=3)
    assert [s.stop - s.start for s in box] == [27, 23, 19]
    corner = torch.zeros((1, *GRID))
    corner[0, 0, 0, 0] = 1.0  # foreground at the grid's edge: the margin is cut at the grid (allow_smaller)
    assert foreground_box(corner, margin=3) == (slice(0, 4), slice(0, 4), slice(0, 4))


def test_an_empty_image_is_kept_whole_and_gives_background():
    image = MetaTensor(torch.zeros((2, *GRID)), affine=torch.eye(4))
    label_map, seen = infer(image, crop=True, network=PointwiseNetwork(2))
    assert seen == GRID
    assert label_map.shape == (3, *GRID) and not bool(label_map.any())


def test_the_window_count_drops_to_the_box():
    """The windows the network computes: those of the box instead of those of the grid (MONAI's window grid at
    overlap 0.5, 8^3 windows: 9 x 8 x 6 = 432 over the grid, 5 x 4 x 3 = 60 over the 21 x 17 x 13 box)."""
    image = brain_image()
    inferer = SlidingWindowInferer(ROI, overlap=0.5)
    assert sliding_window_count(inferer, image[None]) == 9 * 8 * 6
    box = foreground_box(image)
    assert sliding_window_count(inferer, image[(slice(None), *box)][None]) == 5 * 4 * 3
    network = PointwiseNetwork(2)
    infer(image, crop=True, network=network)
    assert network.calls == 5 * 4 * 3
