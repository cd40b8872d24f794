"""RefNet (refnet_synapse): network, three-term loss and the refinement transforms, at tiny sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.losses import DiceCELoss

from common.losses.refinement import RefinementLoss
from common.networks.refnet import RefNet
from common.transforms.refinement import (
    AddNeighbouringSlicesd,
    RandDropSlicesd,
    RandLabelErosionDilationd,
    RandLabelSwapd,
    RefNetInputd,
)

NUM_CLASSES = 13
TINY = (8, 8, 16, 32, 64, 8)
AFFINE = torch.tensor([[1.5, 0, 0, -20.0], [0, 1.5, 0, 7.0], [0, 0, 2.0, 3.0], [0, 0, 0, 1.0]], dtype=torch.float64)


def tiny_refnet(**kwargs) -> RefNet:
    torch.manual_seed(0)
    return RefNet(num_classes=NUM_CLASSES, embedding_dim=4, features=TINY, **kwargs)


def random_labels(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, NUM_CLASSES, shape, generator=torch.Generator().manual_seed(seed)).float()


def organ_volume() -> np.ndarray:
    """``(1, 24, 24, 6)`` float32 label map: spleen (1), liver (6), left kidney (3) in two pieces, background."""
    v = np.zeros((1, 24, 24, 6), np.float32)
    v[0, 2:10, 2:10, 1:5] = 1
    v[0, 10:20, 4:12, :] = 6
    v[0, 14:18, 14:22, 1:4] = 3
    v[0, 3:6, 17:21, 2:3] = 3  # neighbouring slices all differ, so a repeated slice is a change
    return v


# --------------------------------------------------------------------------------------------- network


@pytest.mark.parametrize(
    ("label_input", "image_channels", "label_channels"),
    [("labels", 0, 1), ("labels", 3, 1), ("probabilities", 0, NUM_CLASSES), ("probabilities", 1, NUM_CLASSES)],
)
def test_refnet_output_shape_in_every_input_mode(label_input, image_channels, label_channels):
    net = tiny_refnet(label_input=label_input, image_channels=image_channels)
    labels = random_labels(2, 1, 32, 48)
    first = labels if label_input == "labels" else F.one_hot(labels[:, 0].long(), NUM_CLASSES).permute(0, 3, 1, 2)
    x = torch.cat([first.float(), torch.randn(2, image_channels, 32, 48)], dim=1)
    assert x.shape[1] == label_channels + image_channels == net.in_channels
    assert net(x).shape == (2, NUM_CLASSES, 32, 48)


def test_refnet_accepts_slice_sizes_that_are_not_multiples_of_16():
    net = tiny_refnet().eval()
    assert net(random_labels(1, 1, 33, 50)).shape == (1, NUM_CLASSES, 33, 50)


def test_one_hot_probabilities_give_exactly_the_hard_label_embedding_and_output():
    hard = tiny_refnet(image_channels=1).eval()
    soft = tiny_refnet(image_channels=1, label_input="probabilities").eval()
    soft.load_state_dict(hard.state_dict())
    labels, image = random_labels(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    one_hot = F.one_hot(labels[:, 0].long(), NUM_CLASSES).permute(0, 3, 1, 2).float()
    assert torch.equal(soft.embed_probabilities(one_hot), hard.embed_labels(labels))
    with torch.no_grad():
        torch.testing.assert_close(soft(torch.cat([one_hot, image], 1)), hard(torch.cat([labels, image], 1)))


def test_soft_probabilities_embed_as_the_weighted_sum_of_class_vectors():
    net = tiny_refnet(label_input="probabilities")
    probabilities = torch.zeros(1, NUM_CLASSES, 1, 1)
    probabilities[0, 2], probabilities[0, 7] = 0.25, 0.75
    expected = 0.25 * net.embedding.weight[2] + 0.75 * net.embedding.weight[7]
    torch.testing.assert_close(net.embed_probabilities(probabilities)[0, :, 0, 0], expected)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.full((1, 1, 32, 32), 13.0), r"\[0, 13\).*13 to 13"),
        (torch.full((1, 1, 32, 32), -1.0), r"\[0, 13\).*-1 to -1"),
        (torch.full((1, 1, 32, 32), 2.5), "integer class ids"),
        (torch.zeros(1, 2, 32, 32), "expects 1 input channels .* got 2"),
        (torch.zeros(1, 32, 32), r"\(B, C, H, W\)"),
        (torch.zeros(1, 1, 16, 16), "16x16 is too small"),
        (torch.zeros(1, 1, 15, 64), "15x64 is too small"),
    ],
)
def test_refnet_rejects_bad_input(x, match):
    with pytest.raises(ValueError, match=match):
        tiny_refnet()(x)


def test_refnet_rejects_wrong_channel_count_in_probability_mode_and_bad_options():
    with pytest.raises(ValueError, match="expects 15 input channels"):
        tiny_refnet(label_input="probabilities", image_channels=2)(torch.rand(1, NUM_CLASSES, 32, 32))
    with pytest.raises(ValueError, match="unknown label_input"):
        RefNet(label_input="logits")


def test_refnet_forward_backward_reaches_embedding_and_unet():
    net = tiny_refnet(image_channels=1).train()
    x = torch.cat([random_labels(2, 1, 32, 32), torch.randn(2, 1, 32, 32)], dim=1)
    target = torch.cat([random_labels(2, 1, 32, 32, seed=1), x[:, :1]], dim=1)
    loss = RefinementLoss()(net(x), target)
    loss.backward()
    assert torch.isfinite(loss)
    assert net.embedding.weight.grad is not None and net.embedding.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize(("label_input", "image_channels"), [("labels", 0), ("probabilities", 3)])
def test_scripted_refnet_matches_eager(label_input, image_channels):
    net = tiny_refnet(label_input=label_input, image_channels=image_channels).eval()
    scripted = torch.jit.script(net)
    labels = random_labels(2, 1, 32, 32)
    first = labels if label_input == "labels" else torch.softmax(torch.randn(2, NUM_CLASSES, 32, 32), 1)
    x = torch.cat([first, torch.randn(2, image_channels, 32, 32)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))
    # TorchScript re-raises the ValueError as torch.jit.Error with the same message
    with pytest.raises(Exception, match="input channels"):
        scripted(x[:, 1:])


@pytest.mark.parametrize("image_channels", [0, 3])
def test_slice_inferer_turns_a_volume_into_per_slice_logits_with_the_input_affine(image_channels):
    net = tiny_refnet(image_channels=image_channels).eval()
    depth = 5
    labels = random_labels(1, 1, 32, 32, depth)
    image = torch.randn(1, 1, 32, 32, depth)
    if image_channels:  # CT with one neighbour on each side, as the bundle builds it
        image = AddNeighbouringSlicesd("image", num_neighbours=1)({"image": image[0]})["image"][None]
    volume = MetaTensor(torch.cat([labels, image[:, :image_channels]], dim=1), affine=AFFINE)
    inferer = SliceInferer(roi_size=(32, 32), spatial_dim=2, sw_batch_size=3)
    with torch.no_grad():
        logits = inferer(volume, net)
        per_slice = torch.stack([net(volume.as_tensor()[..., d]) for d in range(depth)], dim=-1)
    assert logits.shape == (1, NUM_CLASSES, 32, 32, depth)
    torch.testing.assert_close(logits.as_tensor(), per_slice, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits.affine, AFFINE)


# ------------------------------------------------------------------------------------------------ loss


def hand_refinement_loss(logits, ground_truth, base, base_weight, eps=1e-5):
    """Eq. 4 of the paper written out: mean CE + batch Dice over all classes + w * mean CE to the base labels."""
    log_p = torch.log_softmax(logits.double(), dim=1)
    p = log_p.exp()
    t = F.one_hot(ground_truth, logits.shape[1]).permute(0, 3, 1, 2).double()
    s = F.one_hot(base, logits.shape[1]).permute(0, 3, 1, 2).double()
    ce_gt = -(t * log_p).sum(1).mean()
    ce_base = -(s * log_p).sum(1).mean()
    per_class = (2 * (p * t).sum((0, 2, 3)) + eps) / (p.sum((0, 2, 3)) + t.sum((0, 2, 3)) + eps)
    return ce_gt + (1 - per_class.mean()) + base_weight * ce_base


@pytest.mark.parametrize("base_weight", [1.0, 0.3])
def test_refinement_loss_matches_hand_computation(base_weight):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    ground_truth = torch.randint(0, 4, (2, 5, 6), generator=g)
    base = torch.randint(0, 4, (2, 5, 6), generator=g)
    target = torch.stack([ground_truth, base], dim=1).float()
    loss = RefinementLoss(base_weight=base_weight)(logits, target)
    expected = hand_refinement_loss(logits, ground_truth, base, base_weight)
    torch.testing.assert_close(loss.double(), expected, atol=1e-6, rtol=1e-6)


def test_refinement_loss_without_base_term_is_monai_dice_ce_and_base_term_counts():
    logits = torch.randn(2, NUM_CLASSES, 8, 8, generator=torch.Generator().manual_seed(4))
    target = torch.cat([random_labels(2, 1, 8, 8, seed=5), random_labels(2, 1, 8, 8, seed=6)], dim=1)
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)(logits, target[:, :1])
    torch.testing.assert_close(RefinementLoss(base_weight=0.0)(logits, target), dice_ce)
    base_ce = F.cross_entropy(logits, target[:, 1].long())
    torch.testing.assert_close(RefinementLoss(base_weight=2.0)(logits, target), dice_ce + 2.0 * base_ce)


def test_refinement_loss_accepts_metatensors_and_backpropagates():
    logits = torch.randn(1, NUM_CLASSES, 8, 8, requires_grad=True)
    target = MetaTensor(torch.cat([random_labels(1, 1, 8, 8), random_labels(1, 1, 8, 8, seed=2)], dim=1))
    loss = RefinementLoss()(MetaTensor(logits), target)
    loss.backward()
    assert type(loss) is torch.Tensor and logits.grad is not None and logits.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("target", "match"),
    [
        (torch.zeros(1, 1, 8, 8), r"\(B, 2, \*spatial\).*got \[1, 1, 8, 8\]"),
        (torch.zeros(1, 3, 8, 8), "got \\[1, 3, 8, 8\\]"),
        (torch.zeros(1, 2, 8, 9), "got \\[1, 2, 8, 9\\]"),
        (torch.full((1, 2, 8, 8), 13.0), r"integer class ids in \[0, 13\)"),
        (torch.full((1, 2, 8, 8), 0.5), "integer class ids"),
    ],
)
def test_refinement_loss_rejects_bad_targets(target, match):
    with pytest.raises(ValueError, match=match):
        RefinementLoss()(torch.randn(1, NUM_CLASSES, 8, 8), target)
    with pytest.raises(ValueError, match="base_weight"):
        RefinementLoss(base_weight=-1)


# ------------------------------------------------------------------------------------------ transforms


def test_add_neighbouring_slices_stacks_shifted_slices_in_depth_order():
    image = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)
    out = AddNeighbouringSlicesd("image", num_neighbours=2)({"image": image})["image"]
    assert out.shape == (5, 2, 3, 4)
    for channel, offset in enumerate(range(-2, 3)):
        for d in range(4):
            np.testing.assert_array_equal(out[channel, ..., d], image[0, ..., min(max(d + offset, 0), 3)])


def test_add_neighbouring_slices_keeps_metatensor_meta_and_supports_other_axes():
    image = MetaTensor(torch.randn(1, 6, 5, 4), affine=AFFINE)
    out = AddNeighbouringSlicesd("image", num_neighbours=1)({"image": image})["image"]
    assert isinstance(out, MetaTensor) and out.shape == (3, 6, 5, 4)
    torch.testing.assert_close(out.affine, AFFINE)
    assert torch.equal(out[1], image[0]) and torch.equal(out[0, ..., 1:], image[0, ..., :-1])
    along_h = AddNeighbouringSlicesd("image", num_neighbours=1, spatial_axis=0)({"image": image})["image"]
    assert torch.equal(along_h[2, :-1], image[0, 1:]) and torch.equal(along_h[2, -1], image[0, -1])
    unchanged = AddNeighbouringSlicesd("image", num_neighbours=0)({"image": image})["image"]
    assert torch.equal(unchanged, image)


def refnet_input_case(seed: int = 0) -> dict:
    """A base label map, base probabilities and a CT, ``(C, 8, 8, 5)`` MetaTensors with one affine."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "base": MetaTensor(torch.randint(0, NUM_CLASSES, (1, 8, 8, 5), generator=generator).float(), affine=AFFINE),
        "base_probabilities": MetaTensor(torch.rand(NUM_CLASSES, 8, 8, 5, generator=generator), affine=AFFINE),
        "image": MetaTensor(torch.rand(1, 8, 8, 5, generator=generator), affine=AFFINE),
    }


def test_refnet_input_is_the_one_hot_base_labels_then_the_ct_stack():
    case = refnet_input_case()
    transform = RefNetInputd(use_image=True, num_neighbours=1)
    x = transform(case)["image"]
    assert isinstance(x, MetaTensor) and x.shape == (NUM_CLASSES + 3, 8, 8, 5) and x.dtype == torch.float32
    assert transform.image_channels == 3, "RefNet's image_channels"
    torch.testing.assert_close(x[:NUM_CLASSES].argmax(0).float(), case["base"][0].as_tensor())
    assert set(x[:NUM_CLASSES].unique().tolist()) == {0.0, 1.0} and bool((x[:NUM_CLASSES].sum(0) == 1).all())
    assert torch.equal(x[NUM_CLASSES + 1], case["image"][0])  # the centre slice between its two neighbours
    assert torch.equal(x[NUM_CLASSES, ..., 1:], case["image"][0, ..., :-1])
    torch.testing.assert_close(x.affine, AFFINE)
    assert torch.equal(transform(case)["base"], case["base"]), "the label map stays, e.g. for the loss"
    label_only = RefNetInputd()(case)["image"]
    assert label_only.shape == (NUM_CLASSES, 8, 8, 5) and RefNetInputd().image_channels == 0


def test_refnet_input_of_probabilities_passes_them_through_as_a_copy():
    case = refnet_input_case()
    x = RefNetInputd("probabilities", use_image=True)(case)["image"]
    assert x.shape == (NUM_CLASSES + 1, 8, 8, 5)
    assert torch.equal(x[:NUM_CLASSES], case["base_probabilities"]) and torch.equal(x[NUM_CLASSES], case["image"][0])
    alone = RefNetInputd("probabilities")(case)["image"]
    assert torch.equal(alone, case["base_probabilities"]) and alone is not case["base_probabilities"]


@pytest.mark.parametrize(("base_input", "num_neighbours"), [("labels", 0), ("labels", 2), ("probabilities", 1)])
def test_refnet_input_steps_apart_give_every_slice_what_the_volume_gets(base_input, num_neighbours):
    """Training stacks the neighbours on the volume, samples axial slices, then assembles each slice."""
    case = refnet_input_case(seed=1)
    transform = RefNetInputd(base_input, use_image=True, num_neighbours=num_neighbours)
    volume = transform(case)["image"]
    stacked = transform.neighbours(case)
    assert stacked["image"].shape[0] == 2 * num_neighbours + 1 and "base" in stacked
    for depth in range(5):
        one_slice = {key: value[..., depth] for key, value in stacked.items()}
        assert torch.equal(transform.assemble(one_slice)["image"], volume[..., depth])


def test_refnet_input_rejects_bad_settings_and_inputs():
    for kwargs, match in [
        ({"base_input": "logits"}, "base_input must be one of"),
        ({"num_classes": 1}, "num_classes must be at least 2"),
        ({"num_neighbours": -1}, "num_neighbours must be >= 0"),
        ({"steps": ["sample"]}, "steps must be taken from"),
    ]:
        with pytest.raises(ValueError, match=match):
            RefNetInputd(**kwargs)
    case = refnet_input_case()
    with pytest.raises(ValueError, match=r"holds 1 channels; expected the CT and 1 neighbouring.*'neighbours' step"):
        RefNetInputd(use_image=True, num_neighbours=1).assemble(case)
    with pytest.raises(ValueError, match="holds 13 channels; expected the probabilities of the 4 classes"):
        RefNetInputd("probabilities", num_classes=4)(case)


CORRUPTIONS = {
    "erode_dilate": lambda **kw: RandLabelErosionDilationd("label", **kw),
    "erode_only": lambda **kw: RandLabelErosionDilationd("label", dilation_prob=0.0, **kw),
    "swap_component": lambda **kw: RandLabelSwapd("label", mode="component", **kw),
    "swap_organ": lambda **kw: RandLabelSwapd("label", mode="organ", **kw),
    "swap_exchange": lambda **kw: RandLabelSwapd("label", mode="exchange", **kw),
    "drop_background": lambda **kw: RandDropSlicesd("label", mode="background", **kw),
    "drop_neighbour": lambda **kw: RandDropSlicesd("label", mode="neighbour", **kw),
}
CONTAINERS = {
    "metatensor_float32": lambda v: MetaTensor(torch.as_tensor(v), affine=AFFINE),
    "tensor_uint8": lambda v: torch.as_tensor(v).to(torch.uint8),
    "numpy_int16": lambda v: v.astype(np.int16),
}


def as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def allowed_ids(name: str, labels: np.ndarray) -> set[int]:
    """Swaps may introduce any organ id; the other corruptions only move ids already present (or background)."""
    return set(range(NUM_CLASSES)) if name.startswith("swap") else {0, *np.unique(labels).astype(int).tolist()}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_with_prob_zero_is_the_identity(name):
    label = CONTAINERS["metatensor_float32"](organ_volume())
    out = CORRUPTIONS[name](prob=0.0).set_random_state(0)({"label": label, "image": 1})
    assert out["label"] is label and out["image"] == 1


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_changes_labels_within_the_label_set_and_keeps_type_shape_dtype_meta(name, container):
    labels = organ_volume()
    label = CONTAINERS[container](labels)
    out = CORRUPTIONS[name](prob=1.0).set_random_state(1)({"label": label})["label"]
    assert type(out) is type(label) and out.shape == label.shape and out.dtype == label.dtype
    if isinstance(label, MetaTensor):
        torch.testing.assert_close(out.affine, AFFINE)
    values = as_numpy(out)
    assert not np.array_equal(values, labels), "the corruption changed nothing"
    assert set(np.unique(values).astype(int).tolist()) <= allowed_ids(name, labels)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_is_deterministic_with_a_fixed_seed(name):
    outputs = [
        as_numpy(CORRUPTIONS[name](prob=0.7).set_random_state(seed)({"label": organ_volume()})["label"])
        for seed in (11, 11, 12, 13, 14)
    ]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert any(not np.array_equal(outputs[0], other) for other in outputs[2:]), "the seed has no effect"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    name=st.sampled_from(sorted(CORRUPTIONS)),
    organs=st.lists(st.integers(1, NUM_CLASSES - 1), min_size=0, max_size=5),
    depth=st.integers(1, 5),
)
def test_corruptions_only_output_existing_label_ids_property(seed, name, organs, depth):
    rng = np.random.default_rng(seed)
    labels = np.zeros((1, 12, 10, depth), np.float32)
    for organ in organs:  # random boxes, later ones on top
        (h0, w0), d0 = rng.integers(0, 8, 2), rng.integers(0, depth)
        labels[0, h0 : h0 + rng.integers(1, 6), w0 : w0 + rng.integers(1, 6), d0 : d0 + rng.integers(1, 4)] = organ
    transform = CORRUPTIONS[name](prob=1.0).set_random_state(seed % 2**32)
    out = transform({"label": labels})["label"]
    assert out.shape == labels.shape and out.dtype == labels.dtype
    assert set(np.unique(out).astype(int).tolist()) <= allowed_ids(name, labels)


def test_erosion_and_dilation_move_boundaries_as_documented():
    labels = organ_volume()
    grown = RandLabelErosionDilationd("label", prob=1.0, organ_prob=1.0, dilation_prob=1.0, radius=1)
    out = grown.set_random_state(0)({"label": labels})["label"]
    for organ in (1, 3, 6):  # every organ dilated: none loses a voxel (rule 2), each gains some
        assert np.all(out[labels == organ] == organ) and (out == organ).sum() > (labels == organ).sum()
    shrunk = RandLabelErosionDilationd("label", prob=1.0, organ_prob=1.0, dilation_prob=0.0, radius=1)
    out = shrunk.set_random_state(0)({"label": labels})["label"]
    assert np.all((out == labels) | (out == 0)) and (out == 0).sum() > (labels == 0).sum()
    # the liver touches the volume's first and last slice: those faces are not eroded
    assert np.all(out[0, 12:18, 6:10, [0, -1]] == 6)


def test_dilation_takes_voxels_from_a_neighbouring_organ_that_is_not_dilated():
    labels = np.zeros((1, 16, 16), np.float32)
    labels[0, 2:14, 2:8], labels[0, 2:14, 8:14] = 1, 2
    transform = RandLabelErosionDilationd("label", prob=1.0, organ_prob=0.0, dilation_prob=1.0, radius=2)
    out = transform.set_random_state(5)({"label": labels})["label"]  # organ_prob 0: exactly one organ picked
    grown = 1 if (out == 1).sum() > (labels == 1).sum() else 2
    other = 3 - grown
    assert 0 < (out == other).sum() < (labels == other).sum()
    assert np.all(out[labels == grown] == grown)


def test_component_swap_relabels_exactly_one_connected_component():
    labels = np.zeros((1, 16, 16), np.float32)
    labels[0, 1:4, 1:4], labels[0, 10:14, 10:14] = 3, 3  # two kidney pieces, nothing else
    out = RandLabelSwapd("label", prob=1.0, mode="component").set_random_state(2)({"label": labels})["label"]
    changed = out != labels
    pieces = [changed[0, 1:4, 1:4], changed[0, 10:14, 10:14]]
    assert [piece.all() for piece in pieces].count(True) == 1 and [piece.any() for piece in pieces].count(True) == 1
    assert changed.sum() in (9, 16) and len(np.unique(out[changed])) == 1 and out[changed][0] not in (0, 3)


def test_organ_and_exchange_swaps():
    labels = np.zeros((1, 12, 12), np.float32)
    labels[0, 1:5, 1:5], labels[0, 7:11, 7:11] = 2, 3  # right and left kidney
    out = RandLabelSwapd("label", prob=1.0, mode="organ").set_random_state(0)({"label": labels})["label"]
    vanished = [organ for organ in (2, 3) if not (out == organ).any()]
    assert len(vanished) == 1 and np.all(out[labels == 0] == 0)
    exchanges = [
        RandLabelSwapd("label", prob=1.0, num_classes=4, mode="exchange").set_random_state(s)({"label": labels})
        for s in range(20)
    ]
    exchanged = [e["label"] for e in exchanges if set(np.unique(e["label"])) == {0, 2, 3}]
    assert exchanged, "no seed drew the present partner organ"
    assert np.all(exchanged[0][labels == 2] == 3) and np.all(exchanged[0][labels == 3] == 2)


def test_swap_rejects_ids_beyond_num_classes_and_bad_maps():
    with pytest.raises(ValueError, match=r"\[0, 4\), found 6"):
        RandLabelSwapd("label", prob=1.0, num_classes=4)({"label": organ_volume()})
    with pytest.raises(ValueError, match=r"shape \(1, H, W\[, D\]\), got shape \(2, 24, 24, 6\)"):
        RandDropSlicesd("label", prob=1.0)({"label": np.concatenate([organ_volume()] * 2)})
    with pytest.raises(ValueError, match="integer class ids"):
        RandLabelErosionDilationd("label", prob=1.0)({"label": organ_volume() + 0.5})
    with pytest.raises(ValueError, match="unknown mode"):
        RandLabelSwapd("label", mode="shuffle")
    with pytest.raises(ValueError, match="radius"):
        RandLabelErosionDilationd("label", radius=(3, 1))


@pytest.mark.parametrize("mode", ["background", "neighbour"])
def test_drop_slices_drops_whole_foreground_slices(mode):
    labels = organ_volume()
    out = RandDropSlicesd("label", prob=1.0, num_slices=2, mode=mode).set_random_state(3)({"label": labels})["label"]
    dropped = [d for d in range(labels.shape[-1]) if not np.array_equal(out[..., d], labels[..., d])]
    assert 1 <= len(dropped) <= 2
    for d in dropped:
        if mode == "background":
            assert not out[..., d].any()
        else:
            neighbours = [labels[..., n] for n in (d - 1, d + 1) if 0 <= n < labels.shape[-1]]
            assert any(np.array_equal(out[..., d], n) for n in neighbours)
