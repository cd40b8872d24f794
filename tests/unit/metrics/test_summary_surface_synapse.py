"""Evaluation summaries and metric definitions: no NaN reported as a number, HD95 in mm, the Synapse 8-organ protocol.

- ``common.metrics.summary``: ``metrics_summary.json`` counts the finite cases of every metric and makes a metric
  without any ``null`` (MONAI's reduction says 0 there); ``format_metric`` prints it as ``n/a (0 of N cases)``.
- ``common.metrics.surface``: MONAI's Hausdorff distance with the spacing read from the label's affine.
- ``common.metrics.synapse``: TransUNet's per-case rules and medpy's pooled HD95, checked against values worked out
  by hand and against a brute-force implementation of medpy's definition.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.handlers.utils import write_metrics_reports
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from scipy import ndimage
from scipy.spatial.distance import cdist

from common.metrics import format_metric, read_metrics_csv, summarize_metrics, write_metrics_summary
from common.metrics.surface import HausdorffDistanceMetricMM, label_spacing
from common.metrics.synapse import (
    SYNAPSE8_ORGANS,
    SynapseProtocolMetric,
    hd95_medpy,
    synapse8_table,
    transunet_case_metrics,
    write_synapse8_table,
)

# ------------------------------------------------------------------------------------------ metrics_summary.json


def _save_like_metrics_saver(out, name: str, buffer: torch.Tensor, value: float) -> None:
    """What MONAI's MetricsSaver writes at the end of an evaluation: metrics.csv, <name>_raw.csv, <name>_summary.csv."""
    write_metrics_reports(
        save_dir=str(out),
        images=[f"case{i}" for i in range(len(buffer))],
        metrics={name: value},
        metric_details={name: buffer},
        summary_ops=["mean", "median"],
    )


def test_a_metric_empty_in_every_case_is_null_with_count_zero_and_prints_n_a(tmp_path):
    # MONAI's Dice of a class absent from every ground truth: NaN per case, and its mean reduction reports 0
    dice = DiceMetric(include_background=True, ignore_empty=True)
    empty = torch.zeros(3, 1, 4, 4)
    dice(y_pred=empty, y=empty)
    aggregate = dice.aggregate().item()
    assert aggregate == 0.0 and torch.isnan(dice.get_buffer()).all()
    _save_like_metrics_saver(tmp_path, "val_dice_et", dice.get_buffer(), aggregate)
    assert read_metrics_csv(tmp_path / "metrics.csv") == {"val_dice_et": 0.0}  # what MONAI leaves behind

    summary = json.loads(write_metrics_summary(tmp_path).read_text())
    assert summary["metrics"] == {"val_dice_et": None}
    assert summary["counts"] == {"val_dice_et": 0} and summary["cases"] == 3
    assert summary["summary"]["val_dice_et"]["class0"]["mean"] is None
    text = format_metric(summary["metrics"]["val_dice_et"], summary["counts"]["val_dice_et"], summary["cases"])
    assert text == "n/a (0 of 3 cases)"


def test_a_partly_empty_metric_is_the_mean_of_its_finite_cases_with_their_count(tmp_path):
    dice = DiceMetric(include_background=True, ignore_empty=True)
    truth = torch.zeros(3, 1, 4, 4)
    truth[0, 0, :2] = 1  # case 0: 8 pixels, case 1: empty (NaN), case 2: 4 pixels
    truth[2, 0, 0] = 1
    pred = torch.zeros_like(truth)
    pred[0, 0, 0] = 1  # case 0: Dice 2*4/(4+8) = 2/3
    pred[2, 0, 0] = 1  # case 2: Dice 1
    dice(y_pred=pred, y=truth)
    _save_like_metrics_saver(tmp_path, "val_dice_bone", dice.get_buffer(), dice.aggregate().item())
    summary = summarize_metrics(tmp_path)
    assert summary["metrics"]["val_dice_bone"] == pytest.approx((2 / 3 + 1) / 2, abs=1e-6)
    assert summary["counts"] == {"val_dice_bone": 2} and summary["cases"] == 3
    assert format_metric(summary["metrics"]["val_dice_bone"], 2, 3) == "0.8333"


def test_counts_use_the_per_case_mean_over_classes(tmp_path):
    # two classes: a case counts when any class is finite (MONAI's per-case mean leaves NaN classes out)
    buffer = torch.tensor([[0.5, math.nan], [math.nan, math.nan], [0.7, 0.9]])
    _save_like_metrics_saver(tmp_path, "val_mean_dice", buffer, 0.65)
    (tmp_path / "metrics.csv").write_text("val_mean_dice,0.65\nval_no_details,0.0\n")
    summary = summarize_metrics(tmp_path)
    assert summary["counts"] == {"val_mean_dice": 2}
    assert summary["metrics"] == {"val_mean_dice": 0.65, "val_no_details": 0.0}  # no per-case file: kept as written
    assert "val_no_details" not in summary["counts"]


def test_format_metric():
    assert format_metric(0.87654) == "0.8765"
    assert format_metric(np.float32(0.5), digits=2) == "0.50"
    assert format_metric(3) == "3.0000"
    assert format_metric(0.0, 3, 3) == "0.0000", "a real 0 stays a number"
    for missing in (None, math.nan, math.inf, np.float64("nan")):
        assert format_metric(missing) == "n/a"
    assert format_metric(None, 0, 3) == "n/a (0 of 3 cases)"
    assert format_metric(math.nan, 0, 1) == "n/a (0 of 1 case)"
    with pytest.raises(TypeError, match="expects a number or None"):
        format_metric("0.5x")


def test_demo_report_prints_n_a_for_an_empty_metric(tmp_path):
    from ci import demo

    summary = {
        "bundle": "b",
        "version": "0.1.0",
        "synthetic": {},
        "timings_s": {"data": 1, "train": 2, "evaluate": 3, "inference": 4},
        "metrics": {"val_dice_et": None, "val_dice_wt": 0.81234},
        "metric_counts": {"val_dice_et": 0, "val_dice_wt": 3},
        "cases": 3,
        "overlays": [],
    }
    report = demo.write_report(tmp_path, [summary], {}).read_text()
    assert "val_dice_et n/a (0 of 3 cases), val_dice_wt 0.812" in report
    assert "0.000" not in report


# ---------------------------------------------------------------------------------------------- HD95 in mm


def _meta(array: torch.Tensor, spacing: tuple[float, ...]) -> MetaTensor:
    affine = torch.eye(4, dtype=torch.float64)
    for axis, size in enumerate(spacing):
        affine[axis, axis] = size
    return MetaTensor(array, affine=affine)


def test_hausdorff_distance_in_mm_takes_the_spacing_of_each_case_from_its_label():
    pred = torch.zeros(1, 1, 12, 12)
    truth = torch.zeros(1, 1, 12, 12)
    pred[0, 0, 2:5, 2:5] = 1
    truth[0, 0, 2:5, 6:9] = 1  # shifted by 4 pixels along axis 1
    expected = HausdorffDistanceMetric(include_background=True, percentile=95)(pred, truth, spacing=[0.5, 2.0])
    metric = HausdorffDistanceMetricMM(include_background=True, percentile=95)
    # a list of channel-first items, as from_engine passes them after decollation, each with its own spacing
    got = metric([pred[0], pred[0]], [_meta(truth[0], (0.5, 2.0)), _meta(truth[0], (0.5, 1.0))])
    assert got[0, 0].item() == pytest.approx(expected.item()) and got[0, 0].item() == pytest.approx(8.0)
    assert got[1, 0].item() == pytest.approx(4.0)
    scaled = HausdorffDistanceMetricMM(include_background=True, percentile=95, affine_unit_mm=0.25)
    assert scaled([pred[0]], [_meta(truth[0], (0.5, 2.0))]).item() == pytest.approx(2.0)  # photograph pixels in mm
    with pytest.raises(TypeError, match="not a MetaTensor"):
        metric(pred, truth)


def test_label_spacing_reads_a_resize_from_the_affine():
    label = _meta(torch.zeros(2, 1, 8, 8), (8.0, 8.0))
    assert label_spacing(label, affine_unit_mm=[0.2, 0.3]) == [pytest.approx((1.6, 2.4))] * 2
    with pytest.raises(ValueError, match="one number or 2"):
        label_spacing(label, affine_unit_mm=[1.0, 1.0, 1.0])


# ------------------------------------------------------------------------------------- Synapse 8-organ protocol


def test_synapse8_organs_are_the_papers_columns_with_btcv_ids():
    assert SYNAPSE8_ORGANS == {
        "aorta": 8,
        "gallbladder": 4,
        "left kidney": 3,
        "right kidney": 2,
        "liver": 6,
        "pancreas": 11,
        "spleen": 1,
        "stomach": 7,
    }


def test_hd95_medpy_pools_both_directions_unlike_monai():
    pred = np.zeros((1, 12), bool)
    truth = np.zeros((1, 12), bool)
    pred[0, [0, 10]] = True
    truth[0, 0] = True
    # surface distances: pred -> truth [0, 10], truth -> pred [0]; pooled and sorted [0, 0, 10]:
    # 95th percentile at position 0.95 * 2 = 1.9 -> 0 + 0.9 * (10 - 0) = 9
    assert hd95_medpy(pred, truth) == pytest.approx(9.0)
    # MONAI: the larger of the directed 95th percentiles, quantile([0, 10], 0.95) = 9.5
    monai = HausdorffDistanceMetric(include_background=True, percentile=95)(
        torch.from_numpy(pred)[None, None].float(), torch.from_numpy(truth)[None, None].float()
    )
    assert monai.item() == pytest.approx(9.5)
    assert hd95_medpy(pred, truth, spacing=(2.0, 0.5)) == pytest.approx(4.5)  # distances along axis 1 x 0.5 mm


def _brute_force_hd95(pred: np.ndarray, truth: np.ndarray, spacing) -> float:
    """medpy's hd95 written out: surfaces by erosion, all pairwise distances, both directions pooled."""
    structure = ndimage.generate_binary_structure(pred.ndim, 1)
    surfaces = [np.argwhere(m ^ ndimage.binary_erosion(m, structure)) * np.asarray(spacing) for m in (pred, truth)]
    distances = cdist(surfaces[0], surfaces[1])
    return float(np.percentile(np.hstack((distances.min(1), distances.min(0))), 95))


def test_hd95_medpy_matches_the_definition_on_anisotropic_3d_blobs():
    rng = np.random.default_rng(0)
    for _ in range(3):
        noise = ndimage.gaussian_filter(rng.normal(size=(2, 20, 18, 10)), sigma=(0, 2, 2, 1))
        pred, truth = noise[0] > 0.05, noise[1] > 0.05
        pred[0] = True  # an object touching the volume edge: the edge counts as background for the erosion
        spacing = (0.7, 0.9, 2.5)
        assert hd95_medpy(pred, truth, spacing) == pytest.approx(_brute_force_hd95(pred, truth, spacing), rel=1e-9)


def test_transunet_rules_per_case():
    truth = np.zeros((4, 4), bool)
    truth[0, :2] = True
    pred = np.zeros((4, 4), bool)
    pred[0, :4] = True
    dice, hd95 = transunet_case_metrics(pred, truth)
    assert dice == pytest.approx(2 * 2 / (4 + 2))  # 0.6667
    assert hd95 == pytest.approx(hd95_medpy(pred, truth))
    empty = np.zeros_like(truth)
    assert transunet_case_metrics(pred, empty) == (1.0, 0.0), "organ predicted but absent from the ground truth"
    assert transunet_case_metrics(empty, truth) == (0.0, 0.0), "organ missed: Dice 0 and HD95 0"
    assert transunet_case_metrics(empty, empty) == (0.0, 0.0), "organ absent from both"


def test_synapse_protocol_metric_scores_the_8_organs_in_column_order():
    shape = (13, 6, 6, 4)
    truth = torch.zeros(2, *shape)
    pred = torch.zeros(2, *shape)
    liver, aorta, spleen = SYNAPSE8_ORGANS["liver"], SYNAPSE8_ORGANS["aorta"], SYNAPSE8_ORGANS["spleen"]
    truth[:, liver, :2, :2, :2] = 1
    pred[0, liver, :2, :2, :2] = 1  # case 0: perfect liver
    pred[1, liver, :2, :2, :1] = 1  # case 1: half the liver, Dice 2*4/(8+4)
    pred[0, aorta, 4, 4, 3] = 1  # case 0: aorta predicted, absent from the ground truth -> (1, 0)
    truth[1, spleen, 5, 5, 0] = 1  # case 1: spleen missed -> (0, 0)
    labels = MetaTensor(truth, affine=torch.diag(torch.tensor([0.8, 0.8, 3.0, 1.0], dtype=torch.float64)))
    dice = SynapseProtocolMetric("dice")
    dice(pred, labels)
    columns = list(SYNAPSE8_ORGANS)
    values = dice.get_buffer()
    assert values.shape == (2, 8)
    liver_column, aorta_column, spleen_column = (columns.index(o) for o in ("liver", "aorta", "spleen"))
    assert values[0, liver_column].item() == 1.0 and values[1, liver_column].item() == pytest.approx(2 / 3)
    assert values[0, aorta_column].item() == 1.0 and values[1, spleen_column].item() == 0.0
    assert dice.aggregate().item() == pytest.approx(values.mean().item())
    hd95 = SynapseProtocolMetric("hd95")
    hd95(pred, labels)
    assert hd95.get_buffer()[0].tolist() == [0.0] * 8  # perfect liver, the rest (1, 0) or (0, 0)
    half = truth[1, liver].numpy() > 0, pred[1, liver].numpy() > 0
    expected = hd95_medpy(half[1], half[0], (0.8, 0.8, 3.0))
    assert expected > 0 and hd95.get_buffer()[1, columns.index("liver")].item() == pytest.approx(expected)
    voxels = SynapseProtocolMetric("hd95", hd95_unit="voxel")
    voxels(pred, truth)  # unit spacing needs no metadata
    assert voxels.get_buffer()[1, columns.index("liver")].item() == pytest.approx(hd95_medpy(half[1], half[0]))


def _write_organ_csv(path, rows: list[list[float]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", *(f"class{i}" for i in range(8)), "mean"])
        for i, row in enumerate(rows):
            writer.writerow([f"case{i}", *row, float(np.mean(row))])


def test_synapse8_table_averages_organs_over_cases_then_over_organs(tmp_path):
    raw_dice = [[0.9, 0.5, 0.8, 0.8, 0.95, 0.6, 0.9, 0.7], [0.7, 0.0, 0.8, 0.8, 0.95, 0.4, 0.9, 0.7]]
    refined_dice = [[0.92, 0.6, 0.8, 0.8, 0.95, 0.6, 0.9, 0.8]] * 2
    _write_organ_csv(tmp_path / "raw_synapse8_dice_raw.csv", raw_dice)
    _write_organ_csv(tmp_path / "refined_synapse8_dice_raw.csv", refined_dice)
    _write_organ_csv(tmp_path / "raw_synapse8_hd95_mm_raw.csv", [[10.0] * 8, [20.0] * 8])
    _write_organ_csv(tmp_path / "refined_synapse8_hd95_mm_raw.csv", [[5.0] * 8, [5.0] * 8])
    rows, cases, unit = synapse8_table(tmp_path)
    assert cases == 2 and unit == "mm"
    raw = next(r for r in rows if r["model"] == "base model (raw)" and r["metric"] == "Dice")
    assert raw["aorta"] == pytest.approx(0.8) and raw["gallbladder"] == pytest.approx(0.25)
    assert raw["mean"] == pytest.approx(np.mean(raw_dice))
    csv_path, md_path = write_synapse8_table(tmp_path)
    table = list(csv.DictReader(open(csv_path)))
    assert [(r["model"], r["metric"], r["unit"]) for r in table] == [
        ("base model (raw)", "Dice", "fraction"),
        ("base model (raw)", "HD95", "mm"),
        ("RefNet (refined)", "Dice", "fraction"),
        ("RefNet (refined)", "HD95", "mm"),
    ]
    assert float(table[1]["mean"]) == pytest.approx(15.0)
    text = md_path.read_text()
    assert "standard 8-organ protocol" in text and "| model | DSC (%) | HD95 (mm) | Aorta | Gallbladder |" in text
    assert f"| base model (raw) | {100 * np.mean(raw_dice):.2f} | 15.00 | 80.00 | 25.00 |" in text

    (tmp_path / "raw_synapse8_hd95_mm_raw.csv").rename(tmp_path / "raw_synapse8_hd95_voxel_raw.csv")
    with pytest.raises(ValueError, match="units"):
        synapse8_table(tmp_path)
    _write_organ_csv(tmp_path / "raw_synapse8_dice_raw.csv", [[math.nan] * 8])
    with pytest.raises(ValueError, match="NaN or infinity"):
        synapse8_table(tmp_path, models={"raw": "base"})
