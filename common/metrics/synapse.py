"""The standard 8-organ Synapse evaluation, the protocol of TransUNet, Swin-Unet and the tables that compare with them.

Synapse papers report, on the 12 test cases of the 18/12 split (:data:`common.data.btcv.SYNAPSE_TEST_CASES`), the
mean Dice (DSC, in %) and HD95 over 8 organs, with per-organ Dice columns in alphabetical order: aorta, gallbladder,
left kidney, right kidney, liver, pancreas, spleen, stomach (:data:`SYNAPSE8_ORGANS`; their ids are BTCV's, which
the Synapse12 convention of :mod:`common.data.btcv` keeps). This module reproduces the evaluation code that produced
those numbers, ``calculate_metric_percase`` and ``test_single_volume`` in ``utils.py`` and ``inference`` in
``test.py`` of Beckschen/TransUNet (read at commit ``2ffa29f``), which calls ``medpy.metric.binary.dc`` and ``hd95``:

- Per case and organ, on the whole 3D volume (:func:`transunet_case_metrics`):
  prediction and ground truth both contain the organ -> (Dice, HD95); only the prediction does -> (1, 0);
  otherwise (only the ground truth, or neither) -> (0, 0). So a missed organ scores Dice 0 but HD95 0, and a
  predicted organ that the ground truth lacks scores Dice 1; no case is ever left out.
- Dice: ``2 |P & G| / (|P| + |G|)`` (medpy ``dc``).
- HD95 (:func:`hd95_medpy`): medpy ``hd95``. The surface of a mask is the mask minus its binary erosion with the
  face-connected (connectivity 1) structuring element, outside the volume counting as background; the distances
  from every surface voxel of P to the nearest surface voxel of G and from every surface voxel of G to the nearest
  of P are **pooled into one set**, and HD95 is its 95th percentile (``numpy.percentile``, linear interpolation).
  This pooled definition is not MONAI's ``HausdorffDistanceMetric(percentile=95)``, which takes the 95th
  percentile of each directed set and then the larger of the two (:mod:`common.metrics.surface`); MONAI's is
  never smaller. The 12-organ RefNet table keeps MONAI's; this table uses medpy's, the literature's.
- Averages: each organ over all test cases, then the plain mean over the 8 organs (``test.py``); MONAI's ``mean``
  reduction of the per-case rows gives the same number, since no case is NaN.

Units. TransUNet calls ``hd95(pred, gt)`` without ``voxelspacing``, so the "HD95 (mm)" of the papers that reuse its
code is in fact measured in voxels of the original CT grid (512 x 512 in-plane, 0.54-0.98 mm; slices 2.5-5 mm
apart). This module computes HD95 in mm by default, from the voxel spacing of each case's label
(:func:`common.metrics.surface.label_spacing`), as medpy's ``voxelspacing`` would; ``hd95_unit="voxel"`` computes
TransUNet's literal figure instead (unit spacing, on the grid the evaluation runs on, which must then be the
original CT grid). The two are not comparable; the tables name their unit.

``SynapseProtocol`` is the handler a bundle config lists under ``validate#additional_metrics``; ``MetricsSaver``
then writes one row per case and one column per organ (``<name>_raw.csv``), and :func:`write_synapse8_table`
turns those files into ``synapse8_table.csv`` and ``synapse8_table.md``.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction, look_up_option

from common.data.btcv import SYNAPSE12_LABELS
from common.io import atomic_write_bytes
from common.metrics.summary import format_metric
from common.metrics.surface import label_spacing, pooled_hd95

__all__ = [
    "SYNAPSE8_ORGANS",
    "SYNAPSE8_TITLES",
    "HD95_UNITS",
    "hd95_medpy",
    "dice_medpy",
    "transunet_case_metrics",
    "SynapseProtocolMetric",
    "SynapseProtocol",
    "synapse8_table",
    "write_synapse8_table",
]


def _synapse12_id(name: str) -> int:
    ids = [i for i, label in SYNAPSE12_LABELS.items() if label == name]
    if len(ids) != 1:
        raise KeyError(f"'{name}' is not one organ of common.data.btcv.SYNAPSE12_LABELS")
    return ids[0]


#: Organ name -> label id (BTCV = Synapse12), in the column order of the papers' tables.
SYNAPSE8_ORGANS: dict[str, int] = {
    name: _synapse12_id(name)
    for name in ("aorta", "gallbladder", "left kidney", "right kidney", "liver", "pancreas", "spleen", "stomach")
}
#: The papers' column titles, same order.
SYNAPSE8_TITLES: tuple[str, ...] = (
    "Aorta",
    "Gallbladder",
    "Kidney (L)",
    "Kidney (R)",
    "Liver",
    "Pancreas",
    "Spleen",
    "Stomach",
)
#: HD95 units: ``mm`` (the label's voxel spacing) or ``voxel`` (unit spacing, TransUNet's code).
HD95_UNITS = ("mm", "voxel")
METRICS = ("dice", "hd95")


def hd95_medpy(pred: np.ndarray, gt: np.ndarray, spacing: float | Sequence[float] | None = None) -> float:
    """medpy's ``hd95``: the 95th percentile of both directed surface-distance sets pooled (see the module).

    Args:
        pred, gt: binary masks of the same shape, both non-empty.
        spacing: voxel size per axis (or one number); ``None`` = 1 (distances in voxels).

    Raises:
        ValueError: when the shapes differ or a mask is empty (medpy raises too; TransUNet never asks).
    """
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction and ground truth differ in shape: {pred.shape} and {gt.shape}")
    if not pred.any() or not gt.any():
        raise ValueError("HD95 needs a non-empty prediction and ground truth")
    # The bounding box of both masks plus one voxel holds every surface voxel, and erosion treats the outside as
    # background either way, so cropping changes no distance and spares a distance transform of the whole CT.
    corners = np.argwhere(pred | gt)
    box = tuple(slice(max(lo - 1, 0), hi + 2) for lo, hi in zip(corners.min(0), corners.max(0), strict=True))
    pred, gt = pred[box], gt[box]
    if spacing is not None:
        spacing = [float(s) for s in np.broadcast_to(np.asarray(spacing, dtype=np.float64), (pred.ndim,))]
    return pooled_hd95(pred, gt, spacing)


def dice_medpy(pred: np.ndarray, gt: np.ndarray) -> float:
    """medpy's ``dc``: ``2 |P & G| / (|P| + |G|)``; 1 when both are empty."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    total = int(pred.sum()) + int(gt.sum())
    return 2.0 * int((pred & gt).sum()) / total if total else 1.0


def transunet_case_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: float | Sequence[float] | None = None, with_hd95: bool = True
) -> tuple[float, float]:
    """TransUNet's ``calculate_metric_percase``: ``(Dice, HD95)`` of one organ in one case, with its empty-case rules.

    Both non-empty -> ``(dice_medpy, hd95_medpy)``; only the prediction non-empty -> ``(1, 0)``; otherwise ``(0, 0)``.
    Non-zero voxels are foreground, as in TransUNet (``pred[pred > 0] = 1``). ``with_hd95=False`` skips the distance
    transforms and gives NaN for HD95.
    """
    pred, gt = np.asarray(pred) > 0, np.asarray(gt) > 0
    if pred.any() and gt.any():
        return dice_medpy(pred, gt), (hd95_medpy(pred, gt, spacing) if with_hd95 else math.nan)
    if pred.any():
        return 1.0, 0.0
    return 0.0, 0.0


class SynapseProtocolMetric(CumulativeIterationMetric):
    """Per case and organ, Dice or HD95 under TransUNet's rules (:func:`transunet_case_metrics`).

    Args:
        metric: ``"dice"`` or ``"hd95"``.
        class_ids: the channels of the one-hot inputs to score, in output column order; default the 8 Synapse
            organs in the papers' order (:data:`SYNAPSE8_ORGANS`).
        hd95_unit: ``"mm"`` (spacing from ``y``'s affine, see :func:`common.metrics.surface.label_spacing`) or
            ``"voxel"`` (unit spacing, TransUNet's code).
        affine_unit_mm: length in mm of one unit of the label's affine (1 for NIfTI/DICOM).
        reduction, get_not_nans: as for MONAI's metrics; the ``mean`` of the (cases, organs) buffer is the mean
            over organs of the per-organ means, the papers' average.

    Inputs ``y_pred`` and ``y``: binarised one-hot (B, C, *spatial), or lists of channel-first tensors; a voxel
    belongs to a class where its channel is above 0.5. Output: (B, len(class_ids)).
    """

    def __init__(
        self,
        metric: str = "dice",
        class_ids: Sequence[int] = tuple(SYNAPSE8_ORGANS.values()),
        hd95_unit: str = "mm",
        affine_unit_mm: float | Sequence[float] = 1.0,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        self.metric = look_up_option(metric, METRICS)
        self.class_ids = tuple(int(c) for c in class_ids)
        self.hd95_unit = look_up_option(hd95_unit, HD95_UNITS)
        self.affine_unit_mm = affine_unit_mm
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        if y_pred.ndim < 3 or y_pred.shape != y.shape:
            raise ValueError(f"expected one-hot (B, C, *spatial) tensors of one shape, got {y_pred.shape}, {y.shape}")
        if max(self.class_ids) >= y.shape[1]:
            raise ValueError(f"class ids {self.class_ids} need {max(self.class_ids) + 1} channels, got {y.shape[1]}")
        needs_spacing = self.metric == "hd95" and self.hd95_unit == "mm"
        spacings = label_spacing(y, self.affine_unit_mm) if needs_spacing else [None] * y.shape[0]
        pred = (y_pred.detach() > 0.5).cpu().numpy()
        truth = (y.detach() > 0.5).cpu().numpy()
        hd95 = self.metric == "hd95"
        values = [
            [transunet_case_metrics(pred[b, c], truth[b, c], spacings[b], with_hd95=hd95)[hd95] for c in self.class_ids]
            for b in range(len(pred))
        ]
        return torch.tensor(values, dtype=torch.float32, device=y_pred.device)

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("the data to aggregate must be a PyTorch tensor")
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f


class SynapseProtocol(IgniteMetricHandler):
    """The handler of :class:`SynapseProtocolMetric` (same arguments), for ``validate#additional_metrics``."""

    def __init__(
        self,
        metric: str = "dice",
        class_ids: Sequence[int] = tuple(SYNAPSE8_ORGANS.values()),
        hd95_unit: str = "mm",
        affine_unit_mm: float | Sequence[float] = 1.0,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = SynapseProtocolMetric(
            metric=metric, class_ids=class_ids, hd95_unit=hd95_unit, affine_unit_mm=affine_unit_mm, reduction=reduction
        )
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


# ------------------------------------------------------------------------------------------------------- the table

#: Model prefix of the metric names -> row label; the evaluation of ``refnet_synapse`` scores both.
SYNAPSE8_MODELS: dict[str, str] = {"raw": "base model (raw)", "refined": "RefNet (refined)"}
CSV_COLUMNS = ("model", "metric", "unit", "cases", "mean", *SYNAPSE8_ORGANS)


def _read_organ_rows(path: Path) -> list[list[float]]:
    """The per-case rows (one value per organ) of a ``MetricsSaver`` ``<metric>_raw.csv`` of a SynapseProtocol."""
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    header, body = rows[0], rows[1:]
    columns = [i for i, name in enumerate(header) if name.startswith("class")]
    if len(columns) != len(SYNAPSE8_ORGANS):
        raise ValueError(f"'{path}' has {len(columns)} class columns; expected {len(SYNAPSE8_ORGANS)}, one per organ")
    values = [[float(row[c]) for c in columns] for row in body]
    if not values:
        raise ValueError(f"'{path}' holds no case")
    if any(not math.isfinite(v) for row in values for v in row):
        raise ValueError(f"'{path}' holds NaN or infinity; the Synapse protocol gives every case and organ a number")
    return values


def _hd95_file(out: Path, prefix: str) -> tuple[Path, str]:
    found = [(out / f"{prefix}_synapse8_hd95_{unit}_raw.csv", unit) for unit in HD95_UNITS]
    found = [(path, unit) for path, unit in found if path.is_file()]
    if len(found) != 1:
        names = " or ".join(f"{prefix}_synapse8_hd95_{unit}_raw.csv" for unit in HD95_UNITS)
        raise FileNotFoundError(
            f"{out}: expected exactly one of {names} (MetricsSaver's per-case file of the SynapseProtocol HD95 "
            f"metric), found {len(found)}"
        )
    return found[0]


def synapse8_table(
    output_dir: str | os.PathLike, models: Mapping[str, str] = SYNAPSE8_MODELS
) -> tuple[list[dict[str, Any]], int, str]:
    """Per model: mean Dice and HD95 per organ and over the 8 organs, from the per-case files in ``output_dir``.

    Reads ``<prefix>_synapse8_dice_raw.csv`` and ``<prefix>_synapse8_hd95_<unit>_raw.csv`` for every prefix of
    ``models``.

    Returns:
        ``(rows, cases, unit)``: one row per model and metric, ``{"model", "metric", "unit", "cases", "mean",
        <organ>: value, ...}`` (Dice as a fraction), the number of cases and the HD95 unit.

    Raises:
        FileNotFoundError: naming a missing file and what writes it.
        ValueError: when the models were scored on different numbers of cases or in different HD95 units.
    """
    out = Path(output_dir)
    rows: list[dict[str, Any]] = []
    cases: set[int] = set()
    units: set[str] = set()
    for prefix, label in models.items():
        dice_file = out / f"{prefix}_synapse8_dice_raw.csv"
        if not dice_file.is_file():
            raise FileNotFoundError(
                f"'{dice_file}' does not exist: expected MetricsSaver's per-case file of the SynapseProtocol Dice"
            )
        hd95_file, unit = _hd95_file(out, prefix)
        units.add(unit)
        for metric, path, row_unit in (("Dice", dice_file, "fraction"), ("HD95", hd95_file, unit)):
            values = _read_organ_rows(path)
            cases.add(len(values))
            per_organ = [float(np.mean(column)) for column in zip(*values, strict=True)]
            row = {"model": label, "metric": metric, "unit": row_unit, "cases": len(values)}
            row["mean"] = float(np.mean(per_organ))
            row.update(zip(SYNAPSE8_ORGANS, per_organ, strict=True))
            rows.append(row)
    if len(cases) != 1 or len(units) != 1:
        raise ValueError(f"{out}: the models were scored on {sorted(cases)} cases, {sorted(units)} units; expected one")
    return rows, cases.pop(), units.pop()


def write_synapse8_table(
    output_dir: str | os.PathLike, models: Mapping[str, str] = SYNAPSE8_MODELS
) -> tuple[Path, Path]:
    """Write ``synapse8_table.csv`` (6 significant digits) and ``synapse8_table.md`` into ``output_dir``, atomically.

    The markdown has the papers' layout: one row per model with the mean DSC (%) and HD95, then the DSC (%) of
    each organ; a second table gives HD95 per organ. Returns the two paths.
    """
    out = Path(output_dir)
    rows, cases, unit = synapse8_table(out, models)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([row[c] if c in ("model", "metric", "unit", "cases") else f"{row[c]:.6g}" for c in CSV_COLUMNS])
    atomic_write_bytes(out / "synapse8_table.csv", buffer.getvalue().encode())

    unit_text = "mm" if unit == "mm" else "voxels"
    dice = {r["model"]: r for r in rows if r["metric"] == "Dice"}
    hd95 = {r["model"]: r for r in rows if r["metric"] == "HD95"}
    organs = list(SYNAPSE8_ORGANS)
    hd95_definition = (
        "in mm, from each case's voxel spacing"
        if unit == "mm"
        else "in voxels of the evaluation grid (unit spacing, as TransUNet's code computes it; not mm)"
    )
    lines = [
        f"Synapse multi-organ segmentation, standard 8-organ protocol (TransUNet / Swin-Unet evaluation), mean over "
        f"{cases} test case(s). DSC: 3D Dice in %. HD95: medpy's hd95 (95th percentile of both directed surface "
        f"distance sets pooled), {hd95_definition}. Per case and organ: both present -> (Dice, HD95); only the "
        "prediction -> (1, 0); otherwise (0, 0), so a missed organ scores HD95 0. Each organ is averaged over all "
        "cases; DSC and HD95 are the means over the 8 organs. Written by common.metrics.synapse.write_synapse8_table.",
        "",
        "| model | DSC (%) | HD95 (" + unit_text + ") | " + " | ".join(SYNAPSE8_TITLES) + " |",
        "|---|" + "---:|" * (2 + len(organs)),
    ]
    for model in dice:
        cells = [format_metric(100 * dice[model]["mean"], digits=2), format_metric(hd95[model]["mean"], digits=2)]
        cells += [format_metric(100 * dice[model][o], digits=2) for o in organs]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"HD95 ({unit_text}) per organ:",
        "",
        "| model | mean | " + " | ".join(SYNAPSE8_TITLES) + " |",
        "|---|" + "---:|" * (1 + len(organs)),
    ]
    for model, row in hd95.items():
        cells = [format_metric(row[c], digits=2) for c in ("mean", *organs)]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    atomic_write_bytes(out / "synapse8_table.md", ("\n".join(lines) + "\n").encode())
    return out / "synapse8_table.csv", out / "synapse8_table.md"
