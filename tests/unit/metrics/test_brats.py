"""common.metrics.brats: the official BraTS package's figures, by hand on tiny cases and against the package itself.

Default tier: the figures of hand-built cases (empty regions, a shifted lesion, two lesions with one missed, a
false-positive blob, lesion connectivity and one-to-one matching) against values worked out by hand or by a
brute-force surface-distance oracle; ``BratsMetric`` on batches, MetaTensor spacing, and inside a
``SupervisedEvaluator`` with ``IgniteMetricHandler`` and ``MetricsSaver``.

Integration tier: perturbed brain-tumour phantoms (nested ET in TC in WT) are written as NIfTI pairs in both label
conventions, the official package (``brats-evaluation==0.0.10`` on ``panoptica==2.1.7`` in ``.venv-brats-eval``,
``make brats-eval-env``) scores them with its bundled ``config_gli.yaml`` and its own parser, and every figure of
every region must equal ours to 1e-6. BraTS 2021 files (ET = 4) go to the package converted to 2023 values, as a
bundle must convert them.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.handlers import IgniteMetricHandler, MetricsSaver, from_engine
from monai.metrics import compute_hausdorff_distance
from monai.transforms import Compose, ConvertToMultiChannelBasedOnBratsClasses, SplitDimd
from scipy import ndimage
from scipy.spatial.distance import cdist

from common.data.brats import BratsLabelError, convert_brats_labels
from common.metrics.brats import (
    FIGURES,
    HD95_PENALTY_MM,
    METRICS,
    REGIONS,
    BratsMetric,
    brats_figures,
    brats_figures_from_regions,
    brats_label_regions,
    brats_region_figures,
)
from tests.helpers import REPO_ROOT

NAN, INF = math.nan, math.inf


def _box(shape, *slices) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slices)] = True
    return mask


def _same(a: float, b: float, tol: float = 1e-6) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= tol


def _assert_figures(got, expected: dict, what: str = "") -> None:
    got = got.as_dict() if hasattr(got, "as_dict") else got
    for key, value in expected.items():
        assert _same(float(got[key]), float(value)), f"{what} {key}: got {got[key]}, expected {value}"


def _brute_force_hd95(ref: np.ndarray, pred: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> float:
    """Oracle: surfaces by looking at the 6 neighbours, distances by brute force, both directions pooled."""

    def surface(mask):
        padded = np.pad(mask, 1)
        inner = np.ones_like(mask)
        for axis in range(mask.ndim):
            for step in (-1, 1):
                inner &= np.roll(padded, step, axis=axis)[(slice(1, -1),) * mask.ndim]
        return np.argwhere(mask & ~inner) * np.asarray(spacing)

    a, b = surface(ref), surface(pred)
    d = cdist(a, b)
    return float(np.percentile(np.hstack((d.min(axis=1), d.min(axis=0))), 95))


# --------------------------------------------------------------------------- empty-region rules, by hand

S = (24, 24, 24)
CUBE = _box(S, slice(4, 10), slice(4, 10), slice(4, 10))
FAR_CUBE = _box(S, slice(16, 20), slice(16, 20), slice(16, 20))
EMPTY = np.zeros(S, dtype=bool)


@pytest.mark.parametrize(
    ("pred", "ref", "expected"),
    [
        pytest.param(EMPTY, EMPTY, (NAN, NAN, NAN, NAN, 0, 0, 0), id="absent-from-both"),
        pytest.param(EMPTY, CUBE, (0, HD95_PENALTY_MM, 0, INF, 0, 0, 1), id="missed"),
        pytest.param(CUBE, EMPTY, (0, HD95_PENALTY_MM, 0, INF, 0, 1, 0), id="false-positive-only"),
        pytest.param(FAR_CUBE, CUBE, (0, HD95_PENALTY_MM, 0, INF, 0, 1, 1), id="no-overlap"),
    ],
)
def test_empty_region_rules(pred, ref, expected):
    _assert_figures(brats_region_figures(pred, ref), dict(zip(FIGURES, expected, strict=True)))


# --------------------------------------------------------------------------- one lesion shifted


def test_shifted_plate_by_hand_and_spacing():
    """A plate two voxels thick moved by one voxel along its normal: every surface distance is 0 or 1 voxel."""
    shape = (24, 24, 24)
    ref = _box(shape, slice(10, 12), slice(4, 20), slice(4, 20))
    pred = _box(shape, slice(11, 13), slice(4, 20), slice(4, 20))
    # half of each pooled set is 0, half is 1 voxel: the 95th percentile is 1 voxel; Dice 1 layer of 2 + 2
    expected = {"legacy_dice": 0.5, "legacy_hd95": 1.0, "lesion_dice": 0.5, "lesion_hd95": 1.0, "tp": 1}
    _assert_figures(brats_region_figures(pred, ref), expected)
    # 2 mm along the shift: the lesion-wise HD95 doubles; the package's global HD95 stays in voxels
    _assert_figures(brats_region_figures(pred, ref, spacing=(2.0, 1.0, 1.0)), {**expected, "lesion_hd95": 2.0})
    # spacing along an axis the shift does not cross changes nothing
    _assert_figures(brats_region_figures(pred, ref, spacing=(1.0, 3.0, 1.0)), expected)


def test_shifted_cube_against_brute_force():
    ref = _box(S, slice(6, 12), slice(6, 12), slice(6, 12))
    pred = np.roll(ref, (2, 1, 0), axis=(0, 1, 2))
    dice = 2 * (4 * 5 * 6) / (2 * 216)  # overlap 4 x 5 x 6 of two 6^3 cubes
    spacing = (1.0, 1.5, 2.0)
    fig = brats_region_figures(pred, ref, spacing=spacing)
    _assert_figures(fig, {"legacy_dice": dice, "lesion_dice": dice, "tp": 1, "fp": 0, "fn": 0})
    assert fig.legacy_hd95 == pytest.approx(_brute_force_hd95(ref, pred), abs=1e-9)
    assert fig.lesion_hd95 == pytest.approx(_brute_force_hd95(ref, pred, spacing), abs=1e-9)


# --------------------------------------------------------------------------- lesions: missed, false positive

A = _box((32, 32, 32), slice(4, 8), slice(4, 8), slice(4, 8))  # 64 voxels, 56 on its surface
B = _box((32, 32, 32), slice(20, 22), slice(20, 22), slice(20, 22))  # 8 voxels, all surface
# Pooled distances: 112 zeros (A's surface both ways) and B's 8 distances to A's corner (7, 7, 7):
# sqrt(13^2 * 3) = sqrt(507), then 3 x sqrt(534), 3 x sqrt(561), sqrt(588). The 95th percentile of 120 values
# sits at index 0.95 * 119 = 113.05, between two copies of sqrt(534).
A_B_HD95 = math.sqrt(534)
A_B_DICE = 2 * 64 / (64 + 72)


def test_two_lesions_one_missed_by_hand():
    fig = brats_region_figures(A, A | B)
    # the missed lesion counts as FN only: lesion-wise figures average the matched pair alone
    _assert_figures(
        fig,
        {"legacy_dice": A_B_DICE, "legacy_hd95": A_B_HD95, "lesion_dice": 1.0, "lesion_hd95": 0.0, "tp": 1, "fn": 1},
    )
    assert fig.fp == 0


def test_false_positive_blob_by_hand():
    fig = brats_region_figures(A | B, A)
    _assert_figures(
        fig,
        {"legacy_dice": A_B_DICE, "legacy_hd95": A_B_HD95, "lesion_dice": 1.0, "lesion_hd95": 0.0, "tp": 1, "fp": 1},
    )
    assert fig.fn == 0


def test_lesions_are_26_connected():
    # two cubes sharing one corner only: one lesion in 3D (cc3d's default 26-connectivity), not two
    shape = (16, 16, 16)
    ref = _box(shape, slice(2, 6), slice(2, 6), slice(2, 6)) | _box(shape, slice(6, 10), slice(6, 10), slice(6, 10))
    _assert_figures(brats_region_figures(ref, ref), {"lesion_dice": 1.0, "tp": 1, "fp": 0, "fn": 0})


def test_matching_is_one_to_one():
    shape = (24, 16, 16)
    ref = _box(shape, slice(4, 20), slice(4, 12), slice(4, 12))  # 1024 voxels
    big = _box(shape, slice(4, 12), slice(4, 12), slice(4, 12))  # inside ref, Dice 1024 / 1536
    small = _box(shape, slice(14, 20), slice(4, 12), slice(4, 12))  # inside ref, Dice 768 / 1408
    fig = brats_region_figures(big | small, ref)
    # one reference lesion takes the better of the two predictions; the other is a false positive
    expected = {"lesion_dice": 2 / 3, "tp": 1, "fp": 1, "fn": 0, "legacy_dice": 2 * 896 / (1024 + 896)}
    _assert_figures(fig, expected)


# --------------------------------------------------------------------------- phantoms (also the integration tier's)


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
    return r2 <= 1.0


def tumour(shape, centre, size: float) -> np.ndarray:
    """BraTS 2023 labels of a glioma-like phantom: ET rim around a necrotic core (TC) inside lobed oedema (WT)."""
    c = np.asarray(centre, dtype=float)
    wt = _ellipsoid(shape, c, (size, 0.85 * size, 0.75 * size)) | _ellipsoid(
        shape, c + (0.5 * size, 0.4 * size, 0.0), (0.6 * size, 0.5 * size, 0.5 * size)
    )
    tc = _ellipsoid(shape, c + (-0.1 * size, 0.0, 0.0), (0.55 * size, 0.5 * size, 0.45 * size))
    core = _ellipsoid(shape, c + (-0.1 * size, 0.0, 0.0), (0.3 * size, 0.25 * size, 0.2 * size))
    labels = np.zeros(shape, dtype=np.uint8)
    labels[wt] = 2
    labels[tc] = 3
    labels[core] = 1
    return labels


def regions_to_labels(tc: np.ndarray, wt: np.ndarray, et: np.ndarray) -> np.ndarray:
    labels = np.zeros(wt.shape, dtype=np.uint8)
    labels[wt] = 2
    labels[tc] = 1
    labels[et] = 3
    return labels


def eroded(labels: np.ndarray) -> np.ndarray:
    """Each region eroded by one voxel (nesting kept: erosion is monotone)."""
    tc, wt, et = brats_label_regions(labels, "brats2023")
    return regions_to_labels(*(ndimage.binary_erosion(m) for m in (tc, wt, et)))


def with_blob(labels: np.ndarray, centre, radius: float, value: int) -> np.ndarray:
    out = labels.copy()
    out[_ellipsoid(labels.shape, centre, (radius,) * 3)] = value
    return out


def phantom_cases(shape=(48, 44, 40)) -> dict[str, tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    """name -> (prediction, reference, voxel size), BraTS 2023 labels."""
    ref = tumour(shape, (22, 20, 19), 11.0)
    no_et = np.where(ref == 3, 1, ref).astype(np.uint8)
    multi_ref = np.maximum.reduce(
        [tumour(shape, (12, 12, 12), 7.0), tumour(shape, (34, 30, 26), 8.0), tumour(shape, (12, 33, 30), 4.0)]
    )
    multi_pred = np.maximum.reduce(
        [
            np.roll(tumour(shape, (12, 12, 12), 7.0), 1, axis=1),  # found, moved by one voxel
            eroded(tumour(shape, (34, 30, 26), 8.0)),  # found, too small
            # the small third tumour is missed; a false-positive lesion appears elsewhere
            tumour(shape, (38, 10, 10), 3.5),
        ]
    )
    iso = (1.0, 1.0, 1.0)
    return {
        "shifted": (np.roll(ref, (3, -2, 1), axis=(0, 1, 2)), ref, iso),
        "eroded_fp": (with_blob(eroded(ref), (40, 36, 6), 3.0, 3), ref, iso),
        "missing_et": (no_et, ref, iso),
        "absent_both": (np.roll(no_et, 2, axis=2), no_et, iso),
        "spurious_et": (with_blob(no_et, (22, 20, 19), 2.5, 3), no_et, iso),  # ET predicted, none in the reference
        "disjoint": (tumour(shape, (6, 38, 34), 4.0), ref, iso),  # a tumour found in the wrong place
        # cut by the array's edge, where surfaces end on the border of the volume
        "at_edge": (np.roll(tumour(shape, (3, 20, 19), 9.0), 1, axis=1), tumour(shape, (3, 20, 19), 9.0), iso),
        "multi_lesion": (multi_pred, multi_ref, iso),
        "anisotropic": (np.roll(ref, (3, 0, 2), axis=(0, 1, 2)), ref, (1.0, 1.0, 2.0)),
    }


def test_phantoms_cover_the_cases_they_claim():
    cases = phantom_cases()
    figs = {name: brats_figures(pred, ref, spacing=sp) for name, (pred, ref, sp) in cases.items()}
    assert figs["missing_et"]["et"].legacy_hd95 == HD95_PENALTY_MM and figs["missing_et"]["et"].fn == 1
    assert all(math.isnan(v) for v in list(figs["absent_both"]["et"].as_dict().values())[:4])
    assert figs["eroded_fp"]["et"].fp >= 1 and figs["eroded_fp"]["wt"].fp == 1
    assert figs["spurious_et"]["et"].legacy_hd95 == HD95_PENALTY_MM and figs["spurious_et"]["et"].fp == 1
    assert all((f.legacy_dice, f.lesion_hd95, f.tp, f.fp, f.fn) == (0, INF, 0, 1, 1) for f in figs["disjoint"].values())
    multi = figs["multi_lesion"]["wt"]
    assert (multi.tp, multi.fp, multi.fn) == (2, 1, 1)
    assert figs["anisotropic"]["wt"].lesion_hd95 != brats_figures(*cases["anisotropic"][:2])["wt"].lesion_hd95


def test_labels_regions_and_conventions_agree():
    pred, ref, _ = phantom_cases()["eroded_fp"]
    by_2023 = brats_figures(pred, ref, "brats2023")
    pred21, ref21 = (convert_brats_labels(x, "brats2023", "brats2021") for x in (pred, ref))
    assert 4 in np.unique(ref21) and 3 not in np.unique(ref21)
    by_2021 = brats_figures(torch.as_tensor(pred21), torch.as_tensor(ref21), "brats2021")
    to_regions = ConvertToMultiChannelBasedOnBratsClasses(et_label=4)
    by_regions = brats_figures_from_regions(to_regions(pred21), to_regions(ref21))
    for r in REGIONS:
        assert by_2021[r] == by_2023[r] == by_regions[r]
    with pytest.raises(BratsLabelError):
        brats_figures(pred21, ref21, "brats2023")  # ET = 4 read as 2023: refused, not silently empty


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy")  # inside MONAI 1.6's own HD code
def test_monai_hd95_versus_official_legacy_hd95(capsys):
    """Sanity figure: MONAI's HD95 (max of the directed 95th percentiles) vs the package's pooled percentile."""
    pred, ref, _ = phantom_cases()["eroded_fp"]
    wt_pred, wt_ref = (brats_label_regions(x)[1] for x in (pred, ref))
    official = brats_region_figures(wt_pred, wt_ref).legacy_hd95
    monai_hd95 = float(
        compute_hausdorff_distance(
            torch.as_tensor(wt_pred)[None, None], torch.as_tensor(wt_ref)[None, None], True, percentile=95
        )
    )
    with capsys.disabled():
        print(f"\nWT, eroded prediction + false-positive blob: MONAI HD95 {monai_hd95:.4f}, official {official:.4f}")
    assert monai_hd95 > official


# --------------------------------------------------------------------------- BratsMetric and the handler path


def _batch(masks: list[np.ndarray]) -> torch.Tensor:
    return torch.as_tensor(np.stack(masks)[:, None], dtype=torch.float32)


def test_brats_metric_values_shape_and_nan_mean():
    preds, refs = [A, np.zeros_like(A), A | B], [A | B, np.zeros_like(A), A]
    metric = BratsMetric("legacy_hd95", "wt")
    values = metric(_batch(preds), _batch(refs))
    assert values.shape == (3, 1) and values.dtype == torch.float64
    expected = [brats_region_figures(p, r).legacy_hd95 for p, r in zip(preds, refs, strict=True)]
    assert all(_same(v, e, 0) for v, e in zip(values[:, 0].tolist(), expected, strict=True))
    assert math.isnan(expected[1])
    assert metric.aggregate().item() == pytest.approx(A_B_HD95, abs=1e-5)  # NaN case left out
    metric.reset()
    counted = BratsMetric("lesion_dice", "et", get_not_nans=True)
    counted(_batch(preds), _batch(refs))
    mean, not_nans = counted.aggregate()
    assert mean.item() == pytest.approx(1.0) and not_nans.item() == 2


def test_brats_metric_spacing_and_region_channels():
    shape = (24, 24, 24)
    ref = _box(shape, slice(10, 12), slice(4, 20), slice(4, 20))
    pred = _box(shape, slice(11, 13), slice(4, 20), slice(4, 20))
    y_pred, y = _batch([pred]), _batch([ref])
    lesion_hd95 = BratsMetric("lesion_hd95", "wt")
    assert lesion_hd95(y_pred, y).item() == 1.0  # plain tensors: 1 mm
    affine = torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0]))
    assert lesion_hd95(MetaTensor(y_pred, affine=affine), MetaTensor(y, affine=affine)).item() == 2.0
    assert lesion_hd95(y_pred, y, spacing=(3.0, 1.0, 1.0)).item() == 3.0
    assert BratsMetric("legacy_hd95", "wt")(MetaTensor(y_pred, affine=affine), MetaTensor(y, affine=affine)) == 1.0
    # three region channels (TC, WT, ET): the metric reads its own
    empty = np.zeros(shape, dtype=bool)
    three_pred = torch.as_tensor(np.stack([empty, pred, empty])[None], dtype=torch.float32)
    three_ref = torch.as_tensor(np.stack([empty, ref, empty])[None], dtype=torch.float32)
    assert BratsMetric("lesion_dice", "wt")(three_pred, three_ref).item() == 0.5
    assert math.isnan(BratsMetric("lesion_dice", "et")(three_pred, three_ref).item())
    with pytest.raises(ValueError, match="binary"):
        BratsMetric("lesion_dice", "wt")(y_pred * 0.7, y)
    with pytest.raises(ValueError):
        BratsMetric("hd95", "wt")


@pytest.mark.filterwarnings("ignore:Mean of empty slice")  # MetricsSaver averages the classes of a NaN case
def test_brats_metric_in_supervised_evaluator_with_metrics_saver(tmp_path: Path):
    cases = phantom_cases(shape=(32, 32, 28))
    names = ["shifted", "eroded_fp", "missing_et", "absent_both"]
    to_regions = ConvertToMultiChannelBasedOnBratsClasses(et_label=3)
    data = []
    for name in names:
        pred, ref = (np.asarray(x)[2:34, 2:34, 2:30] for x in cases[name][:2])
        meta = {"filename_or_obj": f"{name}.nii.gz"}
        data.append(
            {
                "image": MetaTensor(torch.as_tensor(to_regions(pred), dtype=torch.float32), meta=meta),
                "label": MetaTensor(torch.as_tensor(to_regions(ref), dtype=torch.float32), meta=dict(meta)),
            }
        )
    handlers = {
        f"{m}_{r}": IgniteMetricHandler(
            metric_fn=BratsMetric(m, r), output_transform=from_engine([f"pred_{r}", f"label_{r}"]), save_details=True
        )
        for m, r in [("lesion_dice", "wt"), ("legacy_hd95", "et"), ("lesion_hd95", "tc")]
    }
    key = next(iter(handlers))
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=2),
        network=torch.nn.Identity(),  # the "prediction" is the image: the perturbed phantom's regions
        postprocessing=Compose([SplitDimd(keys=["pred", "label"], output_postfixes=list(REGIONS))]),
        key_val_metric={key: handlers[key]},
        additional_metrics={k: h for k, h in handlers.items() if k != key},
        val_handlers=[
            MetricsSaver(
                save_dir=str(tmp_path),
                metrics="*",
                metric_details="*",
                batch_transform=lambda x: [xx["image"].meta for xx in x],
                summary_ops=["mean"],
            )
        ],
    )
    evaluator.run()
    for metric_name in handlers:
        figure, region = metric_name.rsplit("_", 1)
        expected = {
            f"{n}.nii.gz": getattr(brats_figures_from_regions(d["image"], d["label"])[region], figure)
            for n, d in zip(names, data, strict=True)
        }
        with open(tmp_path / f"{metric_name}_raw.csv") as f:
            rows = list(csv.reader(f))
        per_case = {row[0]: float(row[1]) for row in rows[1:] if row}
        assert per_case.keys() == expected.keys()
        # MetricsSaver writes four decimals
        assert all(_same(per_case[k], v, 5e-5) for k, v in expected.items()), (metric_name, per_case, expected)
        finite = [v for v in expected.values() if not math.isnan(v)]
        assert evaluator.state.metrics[metric_name] == pytest.approx(sum(finite) / len(finite), rel=1e-6)
    # the rules show through: a missed ET scores the penalty, an ET absent from both is left out
    with open(tmp_path / "legacy_hd95_et_raw.csv") as f:
        et = {row[0]: row[1] for row in csv.reader(f) if row}
    assert float(et["missing_et.nii.gz"]) == HD95_PENALTY_MM and et["absent_both.nii.gz"] == "nan"


# --------------------------------------------------------------------------- integration: the official package

BRATS_EVAL_PYTHON = REPO_ROOT / ".venv-brats-eval" / "bin" / "python"
TIMEOUT_S = 600

# Runs in .venv-brats-eval: the package's own per-case function and parser, then the parser's columns as JSON.
# "files" is the official flow on NIfTI paths; "arrays" passes the same voxels with voxelspacing = the NIfTI zooms
# in the array's axis order (the file flow reads with SimpleITK and applies (x, y, z) spacing to (z, y, x) axes).
DRIVER = r"""
import json, math, os, sys
import nibabel as nib
import numpy as np
import pandas as pd
from brats_evaluation import config_path, evaluate_single_exam, parse_seg_results
from panoptica import Panoptica_Evaluator

cases_path, out_dir = sys.argv[1], sys.argv[2]
REGIONS = ("tc", "wt", "et")
cases = json.load(open(cases_path))
evaluator = Panoptica_Evaluator.load_from_config(str(config_path("gli")))
flows = {"files": {"metrics": [], "missings": []}, "arrays": {"metrics": [], "missings": []}}
for case in cases:
    result = evaluate_single_exam(case["pred"], case["ref"], case["name"], evaluator)
    if "error" in result:
        sys.exit(f"{case['name']}: {result['error']}")
    flows["files"]["metrics"].append(result)
    pred, ref = nib.load(case["pred"]), nib.load(case["ref"])
    spacing = tuple(float(z) for z in ref.header.get_zooms())
    groups = evaluator.evaluate(np.asanyarray(pred.dataobj), np.asanyarray(ref.dataobj), voxelspacing=spacing)
    flows["arrays"]["metrics"].append({**{k: r.to_dict(True) for k, r in groups.items()}, "subject_name": case["name"]})

columns = {"legacy_dice": "global_dsc_{}", "legacy_hd95": "global_hd95_{}", "lesion_dice": "lesionwise_dsc_mean_{}",
           "lesion_hd95": "lesionwise_hd95_mean_{}", "tp": "all_instance_tp_{}", "fp": "all_instance_fp_{}",
           "fn": "all_instance_fn_{}"}
out = {}
for flow, data in flows.items():
    json_path, csv_path = os.path.join(out_dir, flow + ".json"), os.path.join(out_dir, flow + ".csv")
    with open(json_path, "w") as f:
        json.dump(data, f)
    parse_seg_results(json_path, csv_path)
    table = pd.read_csv(csv_path)
    rows = [row for _, row in table.iterrows() if row["subject_id"] not in ("mean", "std", "median")]
    out[flow] = {
        str(row["subject_id"]): {r: {k: float(row[c.format(r)]) for k, c in columns.items()} for r in REGIONS}
        for row in rows
    }
with open(os.path.join(out_dir, "official.json"), "w") as f:
    json.dump(out, f)
"""


def _brats_eval_python() -> Path:
    if not BRATS_EVAL_PYTHON.is_file():
        pytest.fail(
            f"no {BRATS_EVAL_PYTHON}: the official BraTS package lives in its own environment; "
            "run `make brats-eval-env`"
        )
    return BRATS_EVAL_PYTHON


def _save(labels: np.ndarray, spacing, path: Path) -> None:
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), np.diag([*spacing, 1.0])), path)


@pytest.mark.integration
def test_figures_equal_the_official_package(tmp_path: Path):
    python = _brats_eval_python()
    cases, ours_args = [], {}
    for name, (pred23, ref23, spacing) in phantom_cases().items():
        for convention in ("brats2023", "brats2021"):
            case = f"{name}_{convention}"
            pred, ref = pred23, ref23
            if convention == "brats2021":
                pred, ref = (convert_brats_labels(x, "brats2023", "brats2021") for x in (pred23, ref23))
                assert not np.isin(3, ref) and not np.isin(3, pred)
            # what the package reads: 2021 label maps converted to 2023 values, as a bundle must convert them
            to_package = [convert_brats_labels(x, convention, "brats2023") for x in (pred, ref)]
            paths = [tmp_path / f"{case}_{kind}.nii.gz" for kind in ("pred", "ref")]
            for labels, path in zip(to_package, paths, strict=True):
                _save(labels, spacing, path)
            cases.append({"name": case, "pred": str(paths[0]), "ref": str(paths[1])})
            ours_args[case] = (pred, ref, convention, spacing)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    run = subprocess.run(
        [str(python), str(driver), str(tmp_path / "cases.json"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert run.returncode == 0, (
        f"the official package failed ({run.returncode}):\n{run.stdout[-3000:]}{run.stderr[-4000:]}"
    )
    official = json.loads((tmp_path / "official.json").read_text())

    mismatches = []
    for case, (pred, ref, convention, spacing) in ours_args.items():
        for flow, flow_spacing in (("arrays", spacing), ("files", spacing[::-1])):
            ours = brats_figures(pred, ref, convention, spacing=flow_spacing)
            for region in REGIONS:
                theirs = official[flow][case][region]
                for figure in FIGURES:
                    mine = float(getattr(ours[region], figure))
                    if not _same(mine, theirs[figure]):
                        mismatches.append(f"{flow} {case} {region} {figure}: ours {mine}, official {theirs[figure]}")
    assert not mismatches, "\n".join(mismatches)
    # every figure was compared on real numbers somewhere, and the rules were exercised
    values = [official["arrays"][c][r][f] for c in ours_args for r in REGIONS for f in METRICS]
    assert any(math.isnan(v) for v in values) and HD95_PENALTY_MM in values and math.inf in values
    # the anisotropic case: the spacing changes the lesion-wise HD95, and the file flow applies it to reversed axes
    pred, ref, convention, _ = ours_args["anisotropic_brats2023"]
    aniso = official["arrays"]["anisotropic_brats2023"]["wt"]["lesion_hd95"]
    assert aniso != brats_figures(pred, ref, convention)["wt"].lesion_hd95
    assert aniso != official["files"]["anisotropic_brats2023"]["wt"]["lesion_hd95"]
