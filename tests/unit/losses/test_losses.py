"""Segmentation losses (common.losses.segmentation) against hand computations, and the MONAI loss options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.losses import DeepSupervisionLoss, DiceCELoss, DiceFocalLoss, DiceLoss
from monai.transforms import ConvertToMultiChannelBasedOnBratsClassesd

from common.losses.segmentation import DiceJaccardCELoss

EPS = 1e-7  # the MTCM-KD lab's eps in dice_loss / jaccard_loss


def lab_formula(logits: np.ndarray, onehot: np.ndarray, sigmoid: bool = False) -> float:
    """⅓(1 - Dice) + ⅓(1 - Jaccard) + ⅓ CE, written out: sums over batch and space per class, mean over classes."""
    if sigmoid:
        p = 1.0 / (1.0 + np.exp(-logits))
        ce = np.mean(-(onehot * np.log(p) + (1 - onehot) * np.log(1 - p)))
    else:
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        ce = np.mean(-np.sum(onehot * np.log(p), axis=1))
    axes = (0, *range(2, logits.ndim))
    inter = np.sum(p * onehot, axis=axes)
    card = np.sum(p, axis=axes) + np.sum(onehot, axis=axes)
    dice = np.mean(2 * inter / (card + EPS))
    jaccard = np.mean(inter / (card - inter + EPS))
    return float((1 - dice) / 3 + (1 - jaccard) / 3 + ce / 3)


def random_case(seed: int = 0, classes: int = 4, shape: tuple[int, ...] = (2, 5, 4, 3)):
    rng = np.random.default_rng(seed)
    b, *spatial = shape
    logits = rng.normal(scale=2.0, size=(b, classes, *spatial))
    index = rng.integers(0, classes, size=(b, 1, *spatial))
    onehot = (np.arange(classes).reshape(1, classes, *[1] * len(spatial)) == index).astype(np.float64)
    return logits, index, onehot


def test_matches_lab_formula_index_and_onehot_targets() -> None:
    logits, index, onehot = random_case()
    expected = lab_formula(logits, onehot)
    loss = DiceJaccardCELoss()
    x = torch.tensor(logits)
    for target in (torch.tensor(index, dtype=torch.float32), torch.tensor(index), torch.tensor(onehot)):
        assert loss(x, target).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    # the three terms really are weighted: dropping CE changes the value by exactly CE/3
    no_ce = DiceJaccardCELoss(lambda_ce=0.0)(x, torch.tensor(index)).item()
    ce = F.cross_entropy(x, torch.tensor(index)[:, 0]).item()
    assert no_ce == pytest.approx(expected - ce / 3, rel=1e-10)


def test_matches_lab_formula_2d() -> None:
    logits, index, onehot = random_case(seed=3, classes=3, shape=(3, 6, 7))
    loss = DiceJaccardCELoss()(torch.tensor(logits), torch.tensor(index))
    assert loss.item() == pytest.approx(lab_formula(logits, onehot), rel=1e-10)


def test_perfect_confident_prediction_is_near_zero() -> None:
    _, index, onehot = random_case(seed=1)
    assert set(np.unique(index)) == {0, 1, 2, 3}  # an absent class would score Dice 0 with smooth_nr=0
    logits = torch.tensor((onehot * 2 - 1) * 30.0)
    assert DiceJaccardCELoss()(logits, torch.tensor(index)).item() < 1e-6
    wrong = torch.tensor((1 - onehot) * 30.0)
    assert DiceJaccardCELoss()(wrong, torch.tensor(index)).item() > 5.0


def test_gradients_flow() -> None:
    logits, index, _ = random_case(seed=2)
    x = torch.tensor(logits, dtype=torch.float32, requires_grad=True)
    DiceJaccardCELoss()(x, torch.tensor(index)).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_sigmoid_mode_matches_formula_and_accepts_bool_targets() -> None:
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(2, 3, 4, 4, 4))
    target = (rng.random((2, 3, 4, 4, 4)) > 0.6).astype(np.float64)
    loss = DiceJaccardCELoss(sigmoid=True)
    expected = lab_formula(logits, target, sigmoid=True)
    assert loss(torch.tensor(logits), torch.tensor(target)).item() == pytest.approx(expected, rel=1e-10)
    assert loss(torch.tensor(logits), torch.tensor(target > 0)).item() == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="sigmoid=True needs a multi-channel target"):
        loss(torch.tensor(logits), torch.zeros(2, 1, 4, 4, 4))


def test_smoothing_constants_are_configurable() -> None:
    """An empty class scores Dice 0 with the lab's constants and 1 with a numerator smoothing term."""
    logits = torch.zeros(1, 2, 4, 4)
    logits[:, 0] = 30.0  # confident background everywhere
    target = torch.zeros(1, 1, 4, 4)  # class 1 absent
    lab = DiceJaccardCELoss()(logits, target).item()
    smoothed = DiceJaccardCELoss(smooth_nr=1e-5, smooth_dr=1e-5)(logits, target).item()
    assert lab == pytest.approx(1 / 3, abs=1e-4)  # (1 - mean(1, 0)) / 3 * 2 terms
    assert smoothed == pytest.approx(0.0, abs=1e-4)


def test_bad_targets_give_clear_errors() -> None:
    x = torch.randn(1, 4, 3, 3, 3)
    with pytest.raises(ValueError, match=r"class index 4 outside \[0, 4\).*ConvertBratsLabelsd"):
        DiceJaccardCELoss()(x, torch.full((1, 1, 3, 3, 3), 4.0))
    with pytest.raises(ValueError, match="expected 1 \\(class indices\\) or 4"):
        DiceJaccardCELoss()(x, torch.zeros(1, 3, 3, 3, 3))
    with pytest.raises(ValueError, match="does not fit input shape"):
        DiceJaccardCELoss()(x, torch.zeros(1, 1, 2, 3, 3))


def test_inside_deep_supervision_loss() -> None:
    """MONAI's DeepSupervisionLoss resizes the target to each output and sums the weighted losses."""
    torch.manual_seed(0)
    target = torch.randint(0, 4, (2, 1, 8, 8, 8)).float()
    outputs = [torch.randn(2, 4, 8, 8, 8, requires_grad=True), torch.randn(2, 4, 4, 4, 4, requires_grad=True)]
    base = DiceJaccardCELoss()
    total = DeepSupervisionLoss(base, weight_mode="exp")(outputs, target)
    low = F.interpolate(target, size=(4, 4, 4), mode="nearest-exact")
    expected = base(outputs[0], target) + 0.5 * base(outputs[1], low)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    total.backward()
    assert all(o.grad is not None and o.grad.abs().sum() > 0 for o in outputs)
    lab_weights = DeepSupervisionLoss(base, weights=[0.75, 0.07])(outputs, target)
    assert lab_weights.item() == pytest.approx(
        0.75 * base(outputs[0], target).item() + 0.07 * base(outputs[1], low).item(), rel=1e-6
    )


def brats_regions(et_label: int = 4) -> torch.Tensor:
    """A (2, 3, 8, 8, 8) float TC/WT/ET target made by MONAI's converter from a BraTS label map."""
    label = torch.zeros(2, 1, 8, 8, 8)
    label[:, :, 1:7, 1:7, 1:7] = 2
    label[:, :, 2:6, 2:6, 2:6] = 1
    label[:, :, 3:5, 3:5, 3:5] = et_label
    conv = ConvertToMultiChannelBasedOnBratsClassesd(keys="label", et_label=et_label)
    regions = torch.stack([conv({"label": item})["label"] for item in label])
    assert regions.dtype == torch.bool
    return regions.float()  # the cast a bundle needs (EnsureTyped dtype float32)


def test_region_based_monai_losses_run_on_cast_targets() -> None:
    target = brats_regions(et_label=3)
    x = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
    loss = DiceCELoss(sigmoid=True, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-5)(x, target)
    assert torch.isfinite(loss)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_monai_region_loss_caveats() -> None:
    """Pins the MONAI 1.6.1 behaviours the module docstring warns about, so a MONAI change shows up here."""
    target = brats_regions()
    x = torch.randn(2, 3, 8, 8, 8)
    # DiceCELoss(sigmoid=True): the CE term is a softmax CE with the multi-hot target as probabilities, not BCE
    dice_ce = DiceCELoss(sigmoid=True)
    assert dice_ce(x, target).item() == pytest.approx(
        DiceLoss(sigmoid=True)(x, target).item() + F.cross_entropy(x, target).item(), rel=1e-5
    )
    # DiceFocalLoss(sigmoid=True, gamma=0) is Dice + per-channel BCE
    assert DiceFocalLoss(sigmoid=True, gamma=0.0)(x, target).item() == pytest.approx(
        DiceLoss(sigmoid=True)(x, target).item() + F.binary_cross_entropy_with_logits(x, target).item(), rel=1e-5
    )
    # squared_pred on MONAI's bool target crashes; the float cast avoids it
    with pytest.raises(RuntimeError, match="floating point"):
        DiceLoss(sigmoid=True, squared_pred=True)(x, target.bool())


# ---- the MTCM-KD authors' reduction (faithful protocol) ---------------------------------------------------------


def authors_combination_loss(true: torch.Tensor, logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Transcribes RhineLT/mtcm-kd loss_functions/losses.py ``combination_loss`` (C > 1, no class weights, w = 1/3):
    ``true`` is their (B, H, W, D) label, one dimension fewer than the logits."""
    true_1_hot = torch.eye(logits.shape[1])[true.squeeze(1)].permute(0, 4, 1, 2, 3).float().type(logits.type())
    probas = F.softmax(logits, dim=1)
    dims = (0,) + tuple(range(2, true.ndimension()))
    intersection = torch.sum(probas * true_1_hot, dims)
    cardinality = torch.sum(probas + true_1_hot, dims)
    dice = (2.0 * intersection / (cardinality + eps)).mean()
    jacc = (intersection / (cardinality - intersection + eps)).mean()
    ce = F.cross_entropy(logits.float(), true.long(), ignore_index=255)
    return (1 - dice) / 3 + (1 - jacc) / 3 + ce / 3


def test_authors_reduction_by_hand_on_uniform_probabilities() -> None:
    """Logits 0 give p = 1/4 everywhere; label (1, 3, 3, 2): depth slice 0 all background, slice 1 counts
    (3, 2, 2, 2). Per (class c, depth slice z) with n voxels of c: I = n/4, S = 9/4 + n, so
    Dice = (n/2) / (9/4 + n) and Jaccard = (n/4) / (9/4 + 3n/4); the 2 x 4 terms are averaged."""
    label = torch.zeros(1, 1, 3, 3, 2)
    label[0, 0, :, :, 1] = torch.tensor([[0, 0, 0], [1, 1, 2], [2, 3, 3]])
    logits = torch.zeros(1, 4, 3, 3, 2)
    # slice 0: n = 9 for background, 0 for the rest; slice 1: n = 3, 2, 2, 2
    dice = (4.5 / 11.25 + 0 + 1.5 / 5.25 + 3 * (1.0 / 4.25)) / 8  # 0.173950
    jaccard = (2.25 / 9.0 + 0 + 0.75 / 4.5 + 3 * (0.5 / 3.75)) / 8  # 0.102083
    expected = (1 - dice) / 3 + (1 - jaccard) / 3 + np.log(4) / 3  # 1.036754
    faithful = DiceJaccardCELoss(reduction_dims=(0, 2, 3))(logits, label).item()
    assert faithful == pytest.approx(expected, abs=1e-6) and faithful == pytest.approx(1.036754, abs=1e-6)
    # the volumetric (corrected) form on the same tensors: per class over all 18 voxels, n = 12, 2, 2, 2
    volumetric = ((1 - (6 / 16.5 + 3 * (1 / 6.5)) / 4) + (1 - (3 / 13.5 + 3 * (0.5 / 6.0)) / 4) + np.log(4)) / 3
    assert DiceJaccardCELoss()(logits, label).item() == pytest.approx(volumetric, abs=1e-6)
    assert abs(faithful - volumetric) > 0.01


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_authors_reduction_matches_their_combination_loss_on_random_tensors(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 4, 5, 4, 3, generator=g) * 3
    label = torch.randint(0, 4, (2, 5, 4, 3), generator=g)
    label[:, :, :, 0] = 0  # a depth slice where classes 1-3 are absent from the truth
    expected = authors_combination_loss(label, logits).item()
    faithful = DiceJaccardCELoss(reduction_dims=(0, 2, 3))
    assert faithful(logits, label[:, None].float()).item() == pytest.approx(expected, abs=1e-6)
    assert faithful(logits, F.one_hot(label, 4).permute(0, 4, 1, 2, 3)).item() == pytest.approx(expected, abs=1e-6)
    # the volumetric default is a different loss on the same tensors
    assert abs(DiceJaccardCELoss()(logits, label[:, None]).item() - expected) > 1e-3
    # explicit all-voxel dims give the default
    every = DiceJaccardCELoss(reduction_dims=(0, 2, 3, 4))(logits, label[:, None]).item()
    assert every == pytest.approx(DiceJaccardCELoss()(logits, label[:, None]).item(), abs=1e-6)
    x = logits.clone().requires_grad_(True)
    faithful(x, label[:, None]).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_reduction_dims_are_checked() -> None:
    for dims in ((1, 2), (2, 3), (0, -1)):
        with pytest.raises(ValueError, match="reduction_dims must hold the batch dimension 0"):
            DiceJaccardCELoss(reduction_dims=dims)
    with pytest.raises(ValueError, match="do not fit an input of 4 dimensions"):
        DiceJaccardCELoss(reduction_dims=(0, 2, 4))(torch.randn(1, 2, 3, 3), torch.zeros(1, 1, 3, 3))
