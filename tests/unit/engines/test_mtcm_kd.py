"""MTCM-KD training pieces: KD loss, teacher weights, CDSFL fusion and the online trainer (tiny 16^3 networks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from ignite.engine import Events
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.metrics import compute_dice
from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses
from torch.utils.data import DataLoader

from common.engines.distillation import DistillationTrainer, unwrap
from common.engines.mtcm_kd import (
    MTCMKDTrainer,
    TeachersCheckpointError,
    logged_terms,
    teacher_parameters,
    teacher_state_attributes,
    teachers_from_checkpoint,
    teachers_from_items,
)
from common.errors import BadInputError, bad_input_message
from common.losses.distillation import (
    BarlowTwinsLoss,
    PerformanceTeacherWeights,
    kd_loss,
    performance_weights,
    whole_tumor_dice,
)
from common.losses.segmentation import DiceJaccardCELoss
from common.metrics.mtcm_kd import MTCM_KD_REGIONS, SliceDiceMetric, brats_class_map, mtcm_kd_slice_dice, slice_dice
from common.networks.blocks import CBAMChannelGate
from common.networks.cohra_unet import mtcm_kd_backbone
from common.networks.mtcm_kd import CooperativeFusion, TeacherFeatures, distributed, teacher_networks, to_device

# Tiny backbone: widths 8-16-32-64 (the lab GroupNorm rule splits every width and concatenation: 4 or 6 groups), three
# downsamplings, so 16^3 inputs give a 2^3 bridge; the 1/2-resolution decoder features are channels[1] = 16 wide.
TINY_CHANNELS = (8, 16, 32, 64)
FUSION_IN = TINY_CHANNELS[1]
SIZE = 16
MODALITIES = 4  # stacked image channels; the student reads STUDENT_CHANNEL, the teachers TEACHER_CHANNELS
STUDENT_CHANNEL = 1
TEACHER_CHANNELS = (0, 2, 3)


def tiny_net(**kwargs) -> nn.Module:
    return mtcm_kd_backbone(channels=TINY_CHANNELS, **kwargs)


def make_loader(cases: int = 4, batch_size: int = 2, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    data = [
        {
            "image": torch.randn(MODALITIES, SIZE, SIZE, SIZE, generator=g),
            "label": torch.randint(0, 4, (1, SIZE, SIZE, SIZE), generator=g).float(),
        }
        for _ in range(cases)
    ]
    return DataLoader(data, batch_size=batch_size, shuffle=False)


def make_trainer(
    loader: DataLoader | None = None,
    max_epochs: int = 1,
    with_teachers: bool = True,
    with_fusion: bool = True,
    seed: int = 0,
    wrap_teachers: bool = False,
    student_kwargs: dict | None = None,
    **kwargs,
) -> MTCMKDTrainer:
    torch.manual_seed(seed)
    student = tiny_net(**(student_kwargs or {}))
    teachers = [tiny_net(deep_supervision=False) for _ in TEACHER_CHANNELS] if with_teachers else []
    if wrap_teachers:
        teachers = [TeacherFeatures(t) for t in teachers]
    fusion = CooperativeFusion(len(teachers), FUSION_IN, 4) if with_teachers and with_fusion else None
    teacher_params = teacher_parameters(teachers, fusion)
    return MTCMKDTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=make_loader() if loader is None else loader,
        network=student,
        optimizer=torch.optim.Adam(student.parameters(), lr=1e-3),
        student_channel=STUDENT_CHANNEL,
        teachers=teachers or None,
        teacher_channels=TEACHER_CHANNELS if with_teachers else None,
        fusion=fusion,
        teacher_optimizer=torch.optim.Adam(teacher_params, lr=1e-3) if teacher_params else None,
        **kwargs,
    )


def snapshot(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def changed(module: nn.Module, before: list[torch.Tensor]) -> bool:
    return any(not torch.equal(p, q) for p, q in zip(module.parameters(), before, strict=True))


def teacher_side(trainer: MTCMKDTrainer) -> list[nn.Module]:
    return [*trainer.teachers, *([trainer.fusion] if trainer.fusion is not None else [])]


def record_iterations(trainer: MTCMKDTrainer) -> list[dict]:
    """Per iteration: epoch and the scalar outputs (decollation turns them into floats, repeated per case)."""
    records: list[dict] = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def _record(engine: MTCMKDTrainer) -> None:
        first = engine.state.output[0]
        scalars = {k: v for k, v in first.items() if isinstance(v, float)}
        records.append({"epoch": engine.state.epoch, **scalars})

    return records


def record_epoch_weights(trainer: MTCMKDTrainer) -> dict[int, list[float]]:
    """The teacher weights each epoch trains with, as published in the state when it starts."""
    weights: dict[int, list[float]] = {}

    @trainer.on(Events.EPOCH_STARTED)
    def _record(engine: MTCMKDTrainer) -> None:
        weights[engine.state.epoch] = list(engine.state.teacher_weights)

    return weights


# ---- KD loss --------------------------------------------------------------------------------------------------


def kd_by_hand(s: np.ndarray, t: np.ndarray, temperature: float) -> tuple[float, float]:
    """(batchmean x T, voxel mean x T^2) with explicit loops over cases and voxels."""
    batch, classes = s.shape[:2]
    voxels = list(np.ndindex(*s.shape[2:]))
    total = 0.0
    for b in range(batch):
        for v in voxels:
            zs = [s[(b, c, *v)] / temperature for c in range(classes)]
            zt = [t[(b, c, *v)] / temperature for c in range(classes)]
            log_q = [z - math.log(sum(math.exp(y) for y in zs)) for z in zs]
            p = [math.exp(z) / sum(math.exp(y) for y in zt) for z in zt]
            total += sum(p[c] * (math.log(p[c]) - log_q[c]) for c in range(classes))
    return temperature * total / batch, temperature**2 * total / (batch * len(voxels))


@pytest.mark.parametrize("temperature", [20.0, 2.0])
def test_kd_loss_matches_hand_computation_in_both_reductions(temperature: float) -> None:
    rng = np.random.default_rng(1)
    s = rng.normal(scale=3.0, size=(2, 4, 2, 2, 2))
    t = rng.normal(scale=3.0, size=(2, 4, 2, 2, 2))
    batchmean, voxel_mean = kd_by_hand(s, t, temperature)
    student = torch.tensor(s, requires_grad=True)
    teacher = torch.tensor(t, requires_grad=True)
    got_batchmean = kd_loss(student, teacher, temperature, "batchmean")
    got_voxel_mean = kd_loss(student, teacher, temperature, "voxel_mean")
    assert got_batchmean.item() == pytest.approx(batchmean, rel=1e-10)
    assert got_voxel_mean.item() == pytest.approx(voxel_mean, rel=1e-10)
    # the authors' expression: T * KLDivLoss(batchmean) on softmax(s/T).log() and softmax(t/T)
    authors = temperature * nn.KLDivLoss(reduction="batchmean")(
        torch.softmax(student / temperature, 1).log(), torch.softmax(teacher / temperature, 1)
    )
    assert got_batchmean.item() == pytest.approx(authors.item(), rel=1e-9)
    # the teacher side is detached: only the student gets a gradient
    (got_batchmean + got_voxel_mean).backward()
    assert teacher.grad is None and student.grad is not None and student.grad.abs().sum() > 0


def test_kd_loss_rejects_bad_input() -> None:
    x = torch.zeros(1, 4, 2, 2, 2)
    with pytest.raises(ValueError, match="unknown reduction 'sum'"):
        kd_loss(x, x, reduction="sum")
    with pytest.raises(ValueError, match="same"):
        kd_loss(x, torch.zeros(1, 3, 2, 2, 2))
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(x, x, temperature=0.0)
    assert kd_loss(x, x).item() == 0.0


def barlow_twins_by_hand(a: np.ndarray, b: np.ndarray, lam: float, eps: float = 1e-5) -> float:
    """Zbontar et al. 2021 on (N, D) matrices, written out element by element."""
    n, d = a.shape

    def standardise(z: np.ndarray) -> np.ndarray:
        out = np.empty_like(z)
        for j in range(d):
            mean = sum(z[:, j]) / n
            var = sum((z[k, j] - mean) ** 2 for k in range(n)) / n
            out[:, j] = (z[:, j] - mean) / math.sqrt(var + eps)
        return out

    za, zb = standardise(a), standardise(b)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(za[k, i] * zb[k, j] for k in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lam * c**2
    return loss


def test_barlow_twins_matches_hand_computation_for_both_sample_modes() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2, 3, 2, 2, 1)), rng.normal(size=(2, 3, 2, 2, 1))
    voxels = lambda x: x.reshape(2, 3, 4).transpose(0, 2, 1).reshape(8, 3)  # noqa: E731
    got = BarlowTwinsLoss(off_diagonal_weight=0.1)(torch.tensor(a), torch.tensor(b)).item()
    assert got == pytest.approx(barlow_twins_by_hand(voxels(a), voxels(b), 0.1), rel=1e-10)
    a4, b4 = rng.normal(size=(4, 3, 2, 2)), rng.normal(size=(4, 3, 2, 2))
    got = BarlowTwinsLoss(samples="batch")(torch.tensor(a4), torch.tensor(b4)).item()
    assert got == pytest.approx(barlow_twins_by_hand(a4.mean(axis=(2, 3)), b4.mean(axis=(2, 3)), 5e-3), rel=1e-10)
    # identical, decorrelated features (Hadamard columns: zero mean, unit variance, orthogonal): C = I, loss 0
    hadamard = torch.tensor([[1.0, 1, 1], [-1, 1, -1], [1, -1, -1], [-1, -1, 1]])
    assert BarlowTwinsLoss(eps=0.0)(hadamard, hadamard).item() == pytest.approx(0.0, abs=1e-12)
    assert BarlowTwinsLoss(eps=0.0)(hadamard, -hadamard).item() == pytest.approx(3 * 2.0**2)
    with pytest.raises(ValueError, match="at least 2"):
        BarlowTwinsLoss(samples="batch")(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))


# ---- teacher weights -----------------------------------------------------------------------------------------


def test_performance_weights_by_hand_and_all_zero_dice() -> None:
    # 0.15 * [0.8, 0.6, 0.2] / 1.6
    assert performance_weights([0.8, 0.6, 0.2]) == pytest.approx([0.075, 0.05625, 0.01875], rel=1e-12)
    assert performance_weights([0.5, 0.5], total_weight=0.2) == pytest.approx([0.1, 0.1])
    # no teacher found any tumour: an even split of lambda, not a division by zero
    assert performance_weights([0.0, 0.0, 0.0]) == pytest.approx([0.05, 0.05, 0.05])
    with pytest.raises(ValueError, match="finite and >= 0"):
        performance_weights([0.5, -0.1, 0.2])
    with pytest.raises(ValueError, match="no teacher scores"):
        performance_weights([])


def test_teacher_weight_state_accumulates_updates_and_round_trips() -> None:
    state = PerformanceTeacherWeights(num_teachers=3)
    assert state.weights == [0.1, 0.1, 0.1] and state.mean_dice() is None
    assert state.update() == [0.1, 0.1, 0.1]  # an empty epoch leaves the weights alone
    state.accumulate(torch.tensor([[0.9, 0.7], [0.4, 0.6], [0.0, 0.2]]))  # (teachers, cases)
    state.accumulate([0.8, 0.5, 0.3])  # one more case each
    assert state.mean_dice() == pytest.approx([0.8, 0.5, 1 / 6])
    saved = state.state_dict()
    restored = PerformanceTeacherWeights(num_teachers=3)
    restored.load_state_dict(saved)
    assert restored.mean_dice() == state.mean_dice()
    weights = state.update()
    assert weights == pytest.approx(performance_weights([0.8, 0.5, 1 / 6]))
    assert sum(weights) == pytest.approx(0.15) and state.mean_dice() is None
    assert restored.update() == weights  # the restored sums give exactly the same weights
    state.accumulate([0.0, 0.0, 0.0])
    assert state.update() == pytest.approx([0.05] * 3)
    with pytest.raises(ValueError, match=r"expected \(3,\) or \(3, B\)"):
        state.accumulate([0.1, 0.2])
    with pytest.raises(ValueError, match="this object has 2 teachers"):
        PerformanceTeacherWeights(2).load_state_dict(saved)


def test_whole_tumor_dice_is_hard_and_per_case() -> None:
    labels = torch.zeros(3, 1, 2, 2, 1)
    labels[0, 0, 0, :, 0] = torch.tensor([1.0, 2.0])  # case 0: 2 tumour voxels (NCR, ED)
    labels[1, 0, 1, 1, 0] = 3.0  # case 1: 1 ET voxel
    predicted = torch.zeros(3, 2, 2, 1, dtype=torch.long)  # case 2: nothing anywhere -> Dice 1
    predicted[0, 0, 0, 0] = 3  # case 0: one of the two voxels found (as ET: any tumour class counts)
    predicted[0, 1, 1, 0] = 2  # ... and one false positive -> 2 * 1 / (2 + 2)
    logits = torch.nn.functional.one_hot(predicted, 4).permute(0, 4, 1, 2, 3).float() * 5.0
    assert whole_tumor_dice(logits, labels).tolist() == pytest.approx([0.5, 0.0, 1.0])
    with pytest.raises(ValueError, match="do not fit"):
        whole_tumor_dice(logits, labels[:, :, :1])


# ---- the authors' per-slice Dice (faithful: teacher weights and validation) ---------------------------------------

EPS = 1e-6  # dice_coeff's epsilon


def authors_dice_coeff(input: torch.Tensor, target: torch.Tensor, epsilon: float = EPS) -> torch.Tensor:
    """Transcribes RhineLT/mtcm-kd metrics/eval.py ``dice_coeff`` (reduce_batch_first=False): recurse over the leading
    dimension down to 2D, then (2 I + eps) / (sum + eps) with sum := 2 I when both are empty."""
    if input.dim() == 2:
        inter = torch.dot(input.reshape(-1), target.reshape(-1))
        sets_sum = torch.sum(input) + torch.sum(target)
        if sets_sum.item() == 0:
            sets_sum = 2 * inter
        return (2 * inter + epsilon) / (sets_sum + epsilon)
    return sum(authors_dice_coeff(input[i], target[i]) for i in range(input.shape[0])) / input.shape[0]


def authors_multiclass_dice(preds: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Transcribes metrics/eval.py ``multiclass_dice_coeff``: ``preds`` (B, 4, H, W, D) scores, ``target`` (B, H, W, D)
    class indices; one-vs-rest classes 1-3, whole tumour {1, 2, 3}, tumour core {1, 3}, mean of the three classes."""
    onehot_target = F.one_hot(target, 4).permute(0, 4, 1, 2, 3).float()[:, 1:]
    arg = preds.argmax(1)
    onehot_pred = F.one_hot(arg, 4).permute(0, 4, 1, 2, 3).float()[:, 1:]
    classes = [authors_dice_coeff(onehot_pred[:, c], onehot_target[:, c]) for c in range(3)]
    wt_target = torch.any(onehot_target, dim=1, keepdim=True).float()
    wt_pred = ((arg == 1) | (arg == 2) | (arg == 3)).float().unsqueeze(1)
    tc_target = torch.any(onehot_target[:, 0:1] + onehot_target[:, 2:], dim=1, keepdim=True).float()
    tc_pred = ((arg == 1) | (arg == 3)).float().unsqueeze(1)
    return {
        "mean": sum(classes) / 3, "N-NE": classes[0], "ED": classes[1], "ET": classes[2],
        "whole_tumor": authors_dice_coeff(wt_pred, wt_target), "tumor_core": authors_dice_coeff(tc_pred, tc_target),
    }  # fmt: skip


def scores_of(index: torch.Tensor) -> torch.Tensor:
    """Confident logits (B, 4, *S) whose argmax is the class map ``index`` (B, *S)."""
    return F.one_hot(index.long(), 4).movedim(-1, 1).float() * 5.0


def d(inter: int, total: int) -> float:
    """The authors' 2D slice Dice by hand: total = |P| + |T|."""
    return 1.0 if total == 0 else (2 * inter + EPS) / (total + EPS)


def slices_case() -> tuple[torch.Tensor, torch.Tensor]:
    """A (1, 1, 3, 3, 2) label and the (1, 3, 2) class map of a prediction; slices along the first spatial axis:
    label  h0 [[1, 1], [2, 0], [0, 0]]  h1 empty                    h2 [[3, 3], [1, 2], [0, 0]]
    pred   h0 [[1, 2], [2, 0], [0, 0]]  h1 [[0, 0], [0, 0], [0, 3]]  h2 [[3, 0], [1, 2], [0, 0]]"""
    label = torch.zeros(1, 1, 3, 3, 2)
    label[0, 0, 0] = torch.tensor([[1.0, 1], [2, 0], [0, 0]])
    label[0, 0, 2] = torch.tensor([[3.0, 3], [1, 2], [0, 0]])
    pred = torch.zeros(1, 3, 3, 2, dtype=torch.long)
    pred[0, 0] = torch.tensor([[1, 2], [2, 0], [0, 0]])
    pred[0, 1, 2, 1] = 3
    pred[0, 2] = torch.tensor([[3, 0], [1, 2], [0, 0]])
    return label, pred


def test_slice_dice_by_hand_with_the_empty_slice_rule() -> None:
    label, pred = slices_case()
    expected = {
        "N-NE": (d(1, 3) + 1 + d(1, 2)) / 3,  # 8/9: h1 empty in both scores 1
        "ED": (d(1, 3) + 1 + d(1, 2)) / 3,  # 8/9
        "ET": (1 + d(0, 1) + d(1, 3)) / 3,  # 5/9: h0 empty in both, h1 a false positive only (~0)
        "whole_tumor": (d(3, 6) + d(0, 1) + d(3, 7)) / 3,  # 13/21
        "tumor_core": (d(1, 3) + d(0, 1) + d(2, 5)) / 3,  # 22/45
    }
    expected["mean"] = (expected["N-NE"] + expected["ED"] + expected["ET"]) / 3  # 7/9
    rounded = {"mean": 7 / 9, "N-NE": 8 / 9, "ED": 8 / 9, "ET": 5 / 9, "whole_tumor": 13 / 21, "tumor_core": 22 / 45}
    scores = mtcm_kd_slice_dice(scores_of(pred), label)
    for region, value in expected.items():
        assert scores[region].item() == pytest.approx(value, abs=1e-7), region
        assert scores[region].item() == pytest.approx(rounded[region], abs=1e-5), region
    # one slice empty in both is exactly 1; tumour in the truth only is eps / (n + eps), not 0
    empty = torch.zeros(1, 1, 3, 2)
    assert slice_dice(empty, empty).item() == 1.0
    missed = empty.clone()
    missed[0, 0, 0, 0] = missed[0, 0, 1, 1] = 1
    assert slice_dice(empty, missed).item() == pytest.approx(EPS / (2 + EPS), rel=1e-6)
    # MONAI's volumetric Dice of the same case differs: WT 12/14, TC 6/9, ET 2/4
    regions = torch.stack([(label[:, 0] >= 1), (label[:, 0] == 1) | (label[:, 0] == 3), label[:, 0] == 3], 1)
    pred_regions = torch.stack([(pred >= 1), (pred == 1) | (pred == 3), pred == 3], 1)
    volumetric = compute_dice(pred_regions.float(), regions.float(), ignore_empty=False)[0].tolist()
    assert volumetric == pytest.approx([12 / 14, 6 / 9, 2 / 4])


def test_slice_dice_metric_reads_every_layout_and_reduces_over_cases() -> None:
    label, pred = slices_case()
    label_regions = ConvertToMultiChannelBasedOnBratsClasses(et_label=3)(label[0]).float()[None]  # TC, WT, ET
    pred_regions = ConvertToMultiChannelBasedOnBratsClasses(et_label=3)(pred.float()).float()[None]
    assert torch.equal(brats_class_map(label_regions), label[:, 0].long())  # the conversion is inverted exactly
    for region, value in (("mean", 7 / 9), ("whole_tumor", 13 / 21), ("tumor_core", 22 / 45), ("ET", 5 / 9)):
        for y_pred, y in ((scores_of(pred), label), (pred_regions, label_regions), (pred[:, None], label)):
            metric = SliceDiceMetric(region=region)
            metric(y_pred=y_pred, y=y)
            assert metric.aggregate().item() == pytest.approx(value, abs=1e-5), region
    # a decollated batch (lists of cases, as IgniteMetricHandler hands them over) and a second, perfect case:
    # the metric is the mean over cases
    metric = SliceDiceMetric(region="whole_tumor")
    metric(y_pred=[pred_regions[0], label_regions[0]], y=[label_regions[0], label_regions[0]])
    assert metric.aggregate().item() == pytest.approx((13 / 21 + 1) / 2, abs=1e-5)
    both = SliceDiceMetric(region=("N-NE", "ET"), reduction="none")
    both(y_pred=pred_regions, y=label_regions)
    assert both.aggregate()[0].tolist() == pytest.approx([8 / 9, 5 / 9], abs=1e-5)
    with pytest.raises(ValueError, match="expected some of"):
        SliceDiceMetric(region="wt")
    with pytest.raises(ValueError, match="expected 1 \\(class indices\\), 3"):
        mtcm_kd_slice_dice(torch.zeros(1, 2, 3, 3, 2), label)


@pytest.mark.parametrize("seed", [0, 1])
def test_slice_dice_matches_the_authors_multiclass_dice_coeff_on_random_tensors(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    shape = (3, 6, 5, 4)
    label = torch.randint(1, 4, shape, generator=g) * (torch.rand(shape, generator=g) > 0.6)
    label[0, :2] = 0  # slices without tumour in the truth
    probs = torch.softmax(torch.randn(shape[0], 4, *shape[1:], generator=g) * 2, dim=1)
    probs[:, 0] += 0.5 * (torch.rand(shape, generator=g) > 0.3)  # mostly background, some empty predicted slices
    theirs = authors_multiclass_dice(probs, label)
    ours = mtcm_kd_slice_dice(probs, label[:, None])
    for region in MTCM_KD_REGIONS:
        assert ours[region].mean().item() == pytest.approx(theirs[region].item(), abs=1e-6), region
    # the teachers' score is their whole_tumor on softmax(logits), per case here
    logits = torch.randn(shape[0], 4, *shape[1:], generator=g)
    wt = whole_tumor_dice(logits, label[:, None].float(), per_slice=True)
    assert wt.mean().item() == pytest.approx(
        authors_multiclass_dice(logits.softmax(1), label)["whole_tumor"].item(), abs=1e-6
    )
    assert abs(whole_tumor_dice(logits, label[:, None].float()).mean().item() - wt.mean().item()) > 1e-3


def teachers_case() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A (1, 1, 3, 3, 2) label with whole tumour in slices h0 (3 voxels) and h2 (1 voxel), h1 empty; teacher A finds
    h0 exactly and adds one false positive in h1, teacher B finds only the h2 voxel, teacher C finds nothing."""
    label = torch.zeros(1, 1, 3, 3, 2)
    label[0, 0, 0] = torch.tensor([[1.0, 2], [3, 0], [0, 0]])
    label[0, 0, 2, 2, 1] = 2
    a = label[:, 0].clone().long()
    a[0, 2] = 0
    a[0, 1, 0, 0] = 1
    b = torch.zeros_like(a)
    b[0, 2, 2, 1] = 2
    return label, [scores_of(a), scores_of(b), scores_of(torch.zeros_like(a))]


def test_teacher_weights_from_the_authors_slice_dice_by_hand_rank_the_teachers_differently() -> None:
    label, teachers = teachers_case()
    slices = [whole_tumor_dice(t, label, per_slice=True).item() for t in teachers]
    volume = [whole_tumor_dice(t, label).item() for t in teachers]
    expected_slices = [(d(3, 6) + d(0, 1) + d(0, 1)) / 3, (d(0, 3) + 1 + d(1, 2)) / 3, (d(0, 3) + 1 + d(0, 1)) / 3]
    assert slices == pytest.approx(expected_slices, abs=1e-7)
    assert slices == pytest.approx([1 / 3, 2 / 3, 1 / 3], abs=1e-6)
    assert volume == pytest.approx([6 / 8, 2 / 5, 0.0])  # 3D: A 2*3/(4+4), B 2*1/(4+1), C 0
    # lambda = 0.15 split by score: per slice B leads, in 3D A does
    assert performance_weights(slices) == pytest.approx([0.0375, 0.075, 0.0375], abs=1e-6)
    assert performance_weights(volume) == pytest.approx([0.15 * 0.75 / 1.15, 0.15 * 0.4 / 1.15, 0.0], abs=1e-9)


def test_teachers_that_miss_everything_keep_the_even_split() -> None:
    label = torch.zeros(1, 1, 3, 3, 2)
    label[0, 0, :, 0, 0] = 2  # tumour in every slice
    blind = [scores_of(torch.zeros(1, 3, 3, 2, dtype=torch.long))] * 3
    volume = [whole_tumor_dice(t, label).item() for t in blind]
    slices = [whole_tumor_dice(t, label, per_slice=True).item() for t in blind]
    assert volume == [0.0, 0.0, 0.0]  # upstream would divide by zero here
    assert slices == pytest.approx([EPS / (1 + EPS)] * 3, rel=1e-6)  # eps / (1 + eps) per slice, never exactly 0
    for scores in (volume, slices):
        state = PerformanceTeacherWeights(num_teachers=3)
        state.accumulate(scores)
        assert state.update() == pytest.approx([0.05, 0.05, 0.05], abs=1e-12)


def test_trainer_scores_teachers_with_the_chosen_dice() -> None:
    batch = next(iter(make_loader()))
    for teacher_dice in ("volume", "slices"):
        trainer = make_trainer(teacher_dice=teacher_dice)
        trainer.state.output = {}
        out = trainer.teacher_step(batch["image"], batch["label"])
        per_slice = teacher_dice == "slices"
        expected = torch.stack([whole_tumor_dice(t, batch["label"], per_slice=per_slice) for t in out.logits])
        torch.testing.assert_close(out.wt_dice, expected)
        other = torch.stack([whole_tumor_dice(t, batch["label"], per_slice=not per_slice) for t in out.logits])
        assert (out.wt_dice - other).abs().max() > 1e-3
        assert trainer.teacher_weights.mean_dice() == pytest.approx(expected.mean(dim=1).tolist())
    with pytest.raises(ValueError, match="unknown teacher_dice 'slice'"):
        make_trainer(teacher_dice="slice")


# ---- CDSFL fusion ----------------------------------------------------------------------------------------------


def test_cooperative_fusion_parameter_count_and_shapes() -> None:
    fusion = CooperativeFusion()
    # per teacher: gate (64*4 + 4) + (4*64 + 64) = 580, projection 64*4 + 4 = 260; output conv 4*4 + 4 = 20
    assert sum(p.numel() for p in fusion.parameters()) == 3 * (580 + 260) + 20 == 2540
    assert all(isinstance(g, CBAMChannelGate) for g in fusion.gates)
    # tiny width: gate hidden max(1, 16 // 16) = 1 -> (16 + 1) + (16 + 16) = 49, projection 16*4 + 4 = 68
    assert sum(p.numel() for p in CooperativeFusion(3, FUSION_IN, 4).parameters()) == 3 * (49 + 68) + 20
    feats = [torch.randn(2, 64, 4, 4, 4) for _ in range(3)]
    assert fusion(feats).shape == (2, 4, 4, 4, 4)
    assert CooperativeFusion(2, 8, 3, spatial_dims=2)([torch.randn(1, 8, 6, 6)] * 2).shape == (1, 3, 6, 6)
    with pytest.raises(ValueError, match="expected 3 teacher feature maps, got 2"):
        fusion(feats[:2])
    with pytest.raises(ValueError, match="expected \\(B, 64"):
        fusion([torch.randn(2, 32, 4, 4, 4)] * 3)


def test_teacher_features_of_the_tiny_backbone_feed_the_fusion() -> None:
    teacher = tiny_net(deep_supervision=False)
    # a teacher without deep-supervision heads is the same network minus those heads' parameters
    assert len(list(teacher.parameters())) == len(list(tiny_net().parameters())) - 4
    logits, features = TeacherFeatures(teacher)(torch.randn(1, 1, SIZE, SIZE, SIZE))
    assert logits.shape == (1, 4, SIZE, SIZE, SIZE) and features[1].shape == (1, FUSION_IN, 8, 8, 8)
    with pytest.raises(TypeError, match="no forward_features"):
        TeacherFeatures(nn.Conv3d(1, 1, 1))


def test_teacher_networks_and_their_placement() -> None:
    torch.manual_seed(0)
    teachers = teacher_networks(3, TINY_CHANNELS)
    torch.manual_seed(0)
    by_hand = [mtcm_kd_backbone(channels=TINY_CHANNELS, deep_supervision=False) for _ in range(3)]
    assert len(teachers) == 3 and len({id(t) for t in teachers}) == 3
    for teacher, expected in zip(teachers, by_hand, strict=True):  # the same networks, drawn in the same order
        assert not teacher.deep_supervision
        for a, b in zip(teacher.state_dict().values(), expected.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    multimodal = teacher_networks(1, TINY_CHANNELS, in_channels=4, deep_supervision=True)[0]
    assert multimodal.deep_supervision and multimodal.stem[0].conv_block[0].weight.shape[1] == 4
    assert teacher_networks(0, TINY_CHANNELS) == []

    fusion = CooperativeFusion(3, FUSION_IN, 4)
    assert to_device(None, "cpu") is None and to_device(fusion, "cpu") is fusion
    assert to_device(tuple(teachers), "cpu") == teachers  # a sequence comes back as a list of the same modules


def test_distributed_wraps_each_module_and_routes_teachers_through_forward_features(tmp_path) -> None:
    teacher, multimodal = tiny_net(deep_supervision=False), tiny_net(in_channels=4)
    fusion = CooperativeFusion(1, FUSION_IN, 4)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = distributed([teacher, multimodal], "cpu")
        wrapped_fusion = distributed(fusion, "cpu")
        assert distributed(None, "cpu") is None
    finally:
        dist.destroy_process_group()
    assert all(isinstance(m, nn.parallel.DistributedDataParallel) for m in [*wrapped, wrapped_fusion])
    # DDP synchronises only what runs through forward: the MTCM-KD teacher's forward must be forward_features
    assert isinstance(wrapped[0].module, TeacherFeatures) and wrapped[0].module.network is teacher
    assert wrapped[1].module is multimodal and wrapped_fusion.module is fusion  # called as a whole: as they are
    assert [unwrap(m) for m in [*wrapped, wrapped_fusion]] == [teacher, multimodal, fusion]


def test_config_helpers_name_the_optimised_logged_and_published_values() -> None:
    teachers, fusion = [tiny_net(deep_supervision=False) for _ in range(2)], CooperativeFusion(2, FUSION_IN, 4)
    params = teacher_parameters(teachers, fusion)
    expected = [*teachers[0].parameters(), *teachers[1].parameters(), *fusion.parameters()]
    assert len(params) == len(expected) and all(p is q for p, q in zip(params, expected, strict=True))
    assert len(teacher_parameters(teachers)) == len(expected) - len(list(fusion.parameters()))
    assert teacher_parameters([], None) == []
    assert teacher_state_attributes(2) == [
        "teacher_weight_0",
        "teacher_weight_1",
        "teacher_wt_dice_0",
        "teacher_wt_dice_1",
    ]
    assert teacher_state_attributes(0) == []
    output = [{"loss": 1.0, "kd_loss": 2.0, "teacher_0_wt_dice": 0.5, "pred": "p", "label": "l"}, {"loss": 9.0}]
    assert logged_terms(output) == {"loss": 1.0, "kd_loss": 2.0, "teacher_0_wt_dice": 0.5}  # the first case only


# ---- trainer ---------------------------------------------------------------------------------------------------


def test_trainer_is_a_distillation_trainer_with_its_checkpoint_items() -> None:
    trainer = make_trainer()
    assert isinstance(trainer, DistillationTrainer)
    items = trainer.checkpoint_items()
    assert list(items) == [
        "network", "optimizer", "trainer", "teacher_0", "teacher_1", "teacher_2", "fusion", "teacher_optimizer",
        "teacher_weights",
    ]  # fmt: skip
    assert list(trainer.checkpoint_items(student=False)) == list(items)[3:]
    assert list(make_trainer(with_teachers=False, use_kd=False).checkpoint_items()) == [
        "network",
        "optimizer",
        "trainer",
    ]


def test_student_loss_reaches_no_teacher_and_teacher_loss_no_student() -> None:
    trainer = make_trainer()
    batch = next(iter(make_loader()))
    inputs, labels = batch["image"], batch["label"]
    trainer.state.output = {}
    out = trainer.teacher_step(inputs, labels)
    assert all(p.grad is None for p in trainer.network.parameters())  # L_T never involves the student
    assert all(p.grad is not None for m in teacher_side(trainer) for p in m.parameters())
    assert out.fused is not None and not out.fused.requires_grad and not any(t.requires_grad for t in out.logits)
    for module in teacher_side(trainer):
        module.zero_grad(set_to_none=True)
    before = [snapshot(m) for m in teacher_side(trainer)]
    terms = trainer.student_step(inputs, labels, out, kd_active=True)
    assert terms["kd_loss"] > 0 and terms["deep_supervision_loss"] > 0
    assert all(p.grad is None for m in teacher_side(trainer) for p in m.parameters())
    assert not any(changed(m, b) for m, b in zip(teacher_side(trainer), before, strict=True))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.network.parameters())


def test_one_iteration_trains_teachers_fusion_and_student() -> None:
    trainer = make_trainer(epoch_length=1, kd_start_epoch=0)
    modules = [trainer.network, *teacher_side(trainer)]
    before = [snapshot(m) for m in modules]
    records = record_iterations(trainer)
    trainer.run()
    assert all(changed(m, b) for m, b in zip(modules, before, strict=True))
    r = records[0]
    assert r["kd_loss"] > 0 and r["cooperative_loss"] > 0
    seg = sum(r[f"teacher_{i}_seg_loss"] for i in range(3))
    assert r["teacher_loss"] == pytest.approx(seg + 0.08 * r["cooperative_loss"], rel=1e-5)
    assert r["loss"] == pytest.approx(
        0.75 * r["student_seg_loss"] + r["kd_loss"] + 0.10 * r["deep_supervision_loss"], rel=1e-5
    )
    # pred is the student's full-resolution logits, one per case after decollation
    assert trainer.state.output[0]["pred"].shape == (4, SIZE, SIZE, SIZE)


@pytest.mark.parametrize(
    "variant",
    [
        dict(use_kd=False, with_teachers=False),
        dict(with_fusion=False),
        dict(wrap_teachers=True, kd_reduction="voxel_mean"),
        dict(student_kwargs=dict(deep_supervision=False), deep_supervision_weight=0.0),
    ],
    ids=["unimodal_no_kd", "no_cdsfl", "wrapped_teachers_voxel_mean", "student_without_ds"],
)
def test_variants_run(variant: dict) -> None:
    trainer = make_trainer(epoch_length=1, kd_start_epoch=0, **variant)
    before = snapshot(trainer.network)
    records = record_iterations(trainer)
    trainer.run()
    r = records[0]
    assert changed(trainer.network, before) and math.isfinite(r["loss"])
    if variant.get("use_kd", True):
        assert r["kd_loss"] > 0 and r["loss"] != pytest.approx(r["student_seg_loss"])
    else:
        assert "teacher_loss" not in r and trainer.state.teacher_weights == []
        assert r["loss"] == pytest.approx(r["student_seg_loss"])
    if variant.get("with_fusion") is False:
        assert r["cooperative_loss"] == 0.0 and r["teacher_loss"] == pytest.approx(
            sum(r[f"teacher_{i}_seg_loss"] for i in range(3)), rel=1e-5
        )
        # the deep-supervision bracket keeps only its ground-truth part: 0.7 * L_seg(y at 1/2, s_ds)
        assert r["deep_supervision_loss"] > 0
    if "deep_supervision_weight" in variant:
        assert r["deep_supervision_loss"] == 0.0


def test_two_epochs_kd_off_first_then_weights_from_dice() -> None:
    trainer = make_trainer(max_epochs=2)
    records = record_iterations(trainer)
    epoch_weights = record_epoch_weights(trainer)
    trainer.run()
    first = [r for r in records if r["epoch"] == 1]
    second = [r for r in records if r["epoch"] == 2]
    assert len(first) == len(second) == 2
    # epoch 0 (Ignite's 1): L_S = L_seg only, no KD, no deep supervision
    for r in first:
        assert r["kd_loss"] == 0.0 and r["deep_supervision_loss"] == 0.0
        assert r["loss"] == pytest.approx(r["student_seg_loss"])
    for r in second:
        assert r["kd_loss"] > 0 and r["deep_supervision_loss"] > 0
    # weights: 0.1 each in epoch 0, then lambda * D_i / sum D_j from epoch 0's mean training WT Dice
    assert epoch_weights[1] == [0.1, 0.1, 0.1]
    dice_epoch0 = [np.mean([r[f"teacher_{i}_wt_dice"] for r in first]) for i in range(3)]
    assert epoch_weights[2] == pytest.approx(performance_weights(dice_epoch0), rel=1e-6)
    assert sum(epoch_weights[2]) == pytest.approx(0.15) and epoch_weights[2] != [0.1, 0.1, 0.1]
    assert trainer.state.teacher_wt_dice_0 == pytest.approx(np.mean([r["teacher_0_wt_dice"] for r in second]))
    assert trainer.state.teacher_weights == pytest.approx(trainer.teacher_weights.weights)


def checkpoint_items(trainer: MTCMKDTrainer) -> dict:
    items = {"network": trainer.network, "fusion": trainer.fusion, "optimizer": trainer.optimizer}
    items.update({f"teacher_{i}": t for i, t in enumerate(trainer.teachers)})
    items.update(teacher_optimizer=trainer.teacher_optimizer, teacher_weights=trainer.teacher_weights, trainer=trainer)
    return items


def test_checkpoint_resume_restores_teacher_weights_exactly(tmp_path) -> None:
    # reference: two epochs in one go, saving after each epoch
    reference = make_trainer(max_epochs=2)
    saver = CheckpointSaver(str(tmp_path), checkpoint_items(reference), save_interval=1, epoch_level=True)
    saver.attach(reference)  # attached after construction: still runs after the weight update
    reference_weights = record_epoch_weights(reference)
    reference.run()
    saved = torch.load(tmp_path / "checkpoint_epoch=1.pt", weights_only=True)["teacher_weights"]
    assert saved["weights"].tolist() == reference_weights[2]  # the checkpoint holds the weights for epoch 2

    # resume: fresh networks (another seed), everything restored from the epoch-1 checkpoint, then epoch 2
    resumed = make_trainer(max_epochs=2, seed=7)
    loader = CheckpointLoader(str(tmp_path / "checkpoint_epoch=1.pt"), checkpoint_items(resumed))
    resumed._register_handlers([loader])
    resumed_weights = record_epoch_weights(resumed)
    resumed.run()
    assert list(resumed_weights) == [2]  # it resumed at epoch 2
    assert resumed_weights[2] == reference_weights[2]
    assert resumed.teacher_weights.weights == pytest.approx(reference.teacher_weights.weights, rel=1e-6)
    for p, q in zip(resumed.network.parameters(), reference.network.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_trainer_rejects_inconsistent_configuration() -> None:
    student, teacher = tiny_net(), tiny_net(deep_supervision=False)
    common = dict(device="cpu", max_epochs=1, train_data_loader=make_loader(), network=student, student_channel=1)
    adam = torch.optim.Adam
    with pytest.raises(ValueError, match="use_kd=True needs teachers"):
        MTCMKDTrainer(optimizer=adam(student.parameters()), **common)
    with pytest.raises(ValueError, match="1 teachers and 2 teacher_channels"):
        MTCMKDTrainer(optimizer=adam(student.parameters()), teachers=[teacher], teacher_channels=[0, 2], **common)
    with pytest.raises(ValueError, match="student optimizer holds teacher"):
        MTCMKDTrainer(
            optimizer=adam([*student.parameters(), *teacher.parameters()]),
            teachers=[teacher],
            teacher_channels=[0],
            teacher_optimizer=adam(teacher.parameters()),
            **common,
        )
    fusion = CooperativeFusion(1, FUSION_IN, 4)
    with pytest.raises(ValueError, match="not in teacher_optimizer"):
        MTCMKDTrainer(
            optimizer=adam(student.parameters()),
            teachers=[teacher],
            teacher_channels=[0],
            fusion=fusion,
            teacher_optimizer=adam(teacher.parameters()),
            **common,
        )
    trainer = MTCMKDTrainer(
        optimizer=adam(student.parameters()),
        teachers=[teacher],
        teacher_channels=[5],
        teacher_optimizer=adam(teacher.parameters()),
        seg_loss=DiceJaccardCELoss(),
        **common,
    )
    with pytest.raises(ValueError, match="too few channels"):
        trainer.run()


def test_trainer_builds_from_a_bundle_config() -> None:
    from monai.bundle import ConfigParser

    tiny = {"_target_": "common.networks.cohra_unet.mtcm_kd_backbone", "channels": list(TINY_CHANNELS)}
    config = {
        "network": dict(tiny),
        "teachers": [dict(tiny, deep_supervision=False) for _ in TEACHER_CHANNELS],
        "fusion": {"_target_": "common.networks.mtcm_kd.CooperativeFusion", "in_channels": FUSION_IN},
        "teacher_weights": {"_target_": "common.losses.distillation.PerformanceTeacherWeights"},
        "trainer": {
            "_target_": "common.engines.mtcm_kd.MTCMKDTrainer",
            "device": "cpu",
            "max_epochs": 1,
            "train_data_loader": "$@loader",
            "network": "@network",
            "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": 1e-4},
            "student_channel": STUDENT_CHANNEL,
            "teachers": "@teachers",
            "teacher_channels": list(TEACHER_CHANNELS),
            "fusion": "@fusion",
            "teacher_optimizer": {
                "_target_": "torch.optim.Adam",
                "params": "$[p for m in [*@teachers, @fusion] for p in m.parameters()]",
                "lr": 1e-4,
            },
            "seg_loss": {"_target_": "common.losses.segmentation.DiceJaccardCELoss"},
            "teacher_weights": "@teacher_weights",
        },
    }
    parser = ConfigParser(config)
    parser["loader"] = make_loader()
    trainer = parser.get_parsed_content("trainer")
    assert isinstance(trainer, MTCMKDTrainer)
    assert trainer.teacher_weights is parser.get_parsed_content("teacher_weights")
    assert trainer.teacher_channels == list(TEACHER_CHANNELS) and trainer.kd_reduction == "batchmean"
    assert trainer.state.teacher_weights == [0.1, 0.1, 0.1]


# ---- two-stage: frozen teachers -----------------------------------------------------------------------------------


def frozen_state(trainer: MTCMKDTrainer) -> list[dict[str, torch.Tensor]]:
    """Parameters and buffers of every teacher and the fusion module, copied."""
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in teacher_side(trainer)]


def assert_same_state(trainer: MTCMKDTrainer, before: list[dict[str, torch.Tensor]]) -> None:
    for module, saved in zip(teacher_side(trainer), before, strict=True):
        for name, value in module.state_dict().items():
            assert torch.equal(value, saved[name]), f"{type(module).__name__}.{name} changed"


def count_calls(obj: object, name: str) -> list[int]:
    """Count the calls of ``obj.name`` (an instance attribute wrapping the bound method); returns the counter."""
    calls = [0]
    original = getattr(obj, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    setattr(obj, name, counted)
    return calls


def loader_dice(teachers: list[nn.Module], loader: DataLoader) -> list[float]:
    """Each teacher's mean per-case 3D whole-tumour Dice over ``loader``, in eval mode, computed here."""
    scores: list[list[torch.Tensor]] = [[] for _ in teachers]
    with torch.no_grad():
        for batch in loader:
            for i, (teacher, channel) in enumerate(zip(teachers, TEACHER_CHANNELS, strict=True)):
                logits, _ = teacher.eval().forward_features(batch["image"][:, channel : channel + 1])
                scores[i].append(whole_tumor_dice(logits, batch["label"]))
    return [torch.cat(s).double().mean().item() for s in scores]


def test_frozen_teachers_stay_bit_identical_and_unstepped_while_the_student_trains() -> None:
    trainer = make_trainer(max_epochs=2, kd_start_epoch=0, train_teachers=False)
    before, student = frozen_state(trainer), snapshot(trainer.network)
    steps = count_calls(trainer.teacher_optimizer, "step")
    modes: list[tuple[bool, ...]] = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def _modes(engine: MTCMKDTrainer) -> None:
        modes.append((engine.network.training, *(m.training for m in teacher_side(engine))))

    records = record_iterations(trainer)
    trainer.run()
    assert changed(trainer.network, student)
    assert_same_state(trainer, before)
    assert steps == [0] and trainer.teacher_optimizer.state_dict()["state"] == {}
    assert all(p.grad is None for m in teacher_side(trainer) for p in m.parameters())  # no gradient was computed
    assert modes and all(m == (True, False, False, False, False) for m in modes)  # student trains, the rest eval
    # everything the online trainer logs is still there, KD from the first epoch
    assert len(records) == 4
    for r in records:
        assert r["kd_loss"] > 0 and r["deep_supervision_loss"] > 0 and r["cooperative_loss"] > 0
        seg = sum(r[f"teacher_{i}_seg_loss"] for i in range(3))
        assert r["teacher_loss"] == pytest.approx(seg + 0.08 * r["cooperative_loss"], rel=1e-5)
        assert all(0.0 <= r[f"teacher_{i}_wt_dice"] <= 1.0 for i in range(3))
    for i in range(3):
        assert hasattr(trainer.state, f"teacher_weight_{i}") and hasattr(trainer.state, f"teacher_wt_dice_{i}")
    # frozen teachers on the same (unshuffled, unaugmented) batches score the same in every epoch
    for i in range(3):
        assert [r[f"teacher_{i}_seg_loss"] for r in records[:2]] == [r[f"teacher_{i}_seg_loss"] for r in records[2:]]


def test_frozen_teachers_weigh_the_first_epoch_by_their_own_dice() -> None:
    trainer = make_trainer(max_epochs=2, kd_start_epoch=0, train_teachers=False)
    expected = performance_weights(loader_dice(trainer.teachers, make_loader()))
    used: list[list[float]] = []

    @trainer.on(Events.ITERATION_STARTED)
    def _used(engine: MTCMKDTrainer) -> None:
        used.append(engine.teacher_weights.weights)

    epoch_weights = record_epoch_weights(trainer)
    steps = count_calls(trainer, "teacher_step")
    trainer.run()
    assert steps == [2 + 4]  # one scoring pass (2 batches) before the first epoch, then one per iteration
    assert used[0] == pytest.approx(expected, rel=1e-6) and sum(used[0]) == pytest.approx(0.15)
    assert epoch_weights[1] == used[0] and expected != pytest.approx([0.1, 0.1, 0.1])
    assert trainer.state.teacher_wt_dice_0 == pytest.approx(loader_dice(trainer.teachers, make_loader())[0])
    # the same frozen teachers on the same batches: every later epoch gets the same weights
    assert all(w == pytest.approx(expected, rel=1e-6) for w in used)

    # no scoring pass where the first epoch has no KD, nor online: there the initial weights stand, as upstream
    for kwargs in (dict(train_teachers=False), dict(kd_start_epoch=0)):
        other = make_trainer(epoch_length=1, **kwargs)
        other_weights, other_steps = record_epoch_weights(other), count_calls(other, "teacher_step")
        other.run()
        assert other_weights[1] == [0.1, 0.1, 0.1] and other_steps == [1]


def test_frozen_trainer_resumes_with_the_checkpointed_weights_and_no_second_scoring_pass(tmp_path) -> None:
    reference = make_trainer(max_epochs=2, kd_start_epoch=0, train_teachers=False)
    CheckpointSaver(str(tmp_path), checkpoint_items(reference), save_interval=1, epoch_level=True).attach(reference)
    reference_weights = record_epoch_weights(reference)
    reference.run()

    resumed = make_trainer(max_epochs=2, kd_start_epoch=0, train_teachers=False, seed=7)
    loader = CheckpointLoader(str(tmp_path / "checkpoint_epoch=1.pt"), checkpoint_items(resumed))
    resumed._register_handlers([loader])
    resumed_weights, steps = record_epoch_weights(resumed), count_calls(resumed, "teacher_step")
    resumed.run()
    assert list(resumed_weights) == [2] and steps == [2]  # epoch 2 only, its two iterations, no scoring pass
    assert resumed_weights[2] == reference_weights[2]
    for module, expected in zip(teacher_side(resumed), teacher_side(reference), strict=True):
        for a, b in zip(module.state_dict().values(), expected.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    for p, q in zip(resumed.network.parameters(), reference.network.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_frozen_teachers_need_teachers_but_no_teacher_optimizer() -> None:
    trainer = make_trainer(epoch_length=1, kd_start_epoch=0, train_teachers=False)
    frozen = MTCMKDTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=make_loader(),
        network=trainer.network,
        optimizer=trainer.optimizer,
        student_channel=STUDENT_CHANNEL,
        teachers=trainer.teachers,
        teacher_channels=TEACHER_CHANNELS,
        fusion=trainer.fusion,
        train_teachers=False,
        epoch_length=1,
    )
    assert "teacher_optimizer" not in frozen.checkpoint_items()
    before = frozen_state(frozen)
    frozen.run()
    assert_same_state(frozen, before)
    common = dict(device="cpu", max_epochs=1, train_data_loader=make_loader(), student_channel=STUDENT_CHANNEL)
    student = tiny_net()
    with pytest.raises(ValueError, match="train_teachers=False freezes the teachers, but there are none"):
        MTCMKDTrainer(
            network=student, optimizer=torch.optim.Adam(student.parameters()), use_kd=False, train_teachers=False,
            **common,
        )  # fmt: skip
    with pytest.raises(ValueError, match="need a teacher_optimizer"):
        MTCMKDTrainer(
            network=student, optimizer=torch.optim.Adam(student.parameters()), teachers=trainer.teachers,
            teacher_channels=TEACHER_CHANNELS, **common,
        )  # fmt: skip


def test_teachers_from_checkpoint_refuses_frozen_random_teachers_and_names_a_bad_file(tmp_path) -> None:
    items = make_trainer().checkpoint_items(student=False)
    assert list(teachers_from_items(items)) == list(items)  # online: the teacher optimizer's state too
    assert list(teachers_from_items(items, train_teachers=False)) == [
        "teacher_0", "teacher_1", "teacher_2", "fusion", "teacher_weights"
    ]  # fmt: skip
    assert teachers_from_checkpoint("", items) == ""
    with pytest.raises(TeachersCheckpointError, match="train_teachers is false .* no teachers_from") as refused:
        teachers_from_checkpoint("", items, train_teachers=False)
    assert isinstance(refused.value, BadInputError) and bad_input_message(refused.value).startswith("train_teachers")

    missing = tmp_path / "nowhere" / "teachers.pt"
    with pytest.raises(TeachersCheckpointError, match=f"teachers_from {missing}: no such file"):
        teachers_from_checkpoint(str(missing), items, train_teachers=False)
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(TeachersCheckpointError, match=f"teachers_from {garbage} cannot be read as a checkpoint"):
        teachers_from_checkpoint(str(garbage), items)

    state = {k: v.state_dict() for k, v in items.items()}
    without_fusion = tmp_path / "no_fusion.pt"
    torch.save({k: v for k, v in state.items() if k != "fusion"}, without_fusion)
    with pytest.raises(TeachersCheckpointError) as raised:
        teachers_from_checkpoint(str(without_fusion), items, train_teachers=False)
    message = bad_input_message(raised.value)
    assert message.startswith(f"teachers_from {without_fusion} lacks fusion (it holds teacher_0, ")
    assert "use_cdsfl" in message
    # frozen teachers do not need the optimizer's state; teachers that go on training do
    without_optimizer = tmp_path / "no_optimizer.pt"
    torch.save({k: v for k, v in state.items() if k != "teacher_optimizer"}, without_optimizer)
    assert teachers_from_checkpoint(str(without_optimizer), items, train_teachers=False) == str(without_optimizer)
    with pytest.raises(TeachersCheckpointError, match="lacks teacher_optimizer"):
        teachers_from_checkpoint(str(without_optimizer), items)
