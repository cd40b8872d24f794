"""Raw vs refined segmentation quality per organ, in the form of the RefNet paper's Table 2.

The evaluation of bundle ``refnet_synapse`` (``configs/evaluate.json``) scores the base model's segmentation
("raw") and RefNet's refinement of it ("refined") on the same test cases with MONAI's ``MeanDice`` handler and
:class:`common.metrics.surface.HausdorffDistanceMM` (MONAI's ``HausdorffDistance`` with each case's voxel spacing),
and ``MetricsSaver`` writes one row per case and one column per class to ``<name>_raw.csv``.
:func:`write_refinement_table` reads four of those files,

- ``raw_dice_raw.csv`` and ``refined_dice_raw.csv``: 3D Dice per class, background included (the paper's rows);
- ``raw_hd95_mm_raw.csv`` and ``refined_hd95_mm_raw.csv``: 95th-percentile Hausdorff distance per organ in mm,
  MONAI's definition (the larger of the two directed 95th percentiles; background excluded; optional),

averages every class over the cases (NaN, i.e. a class absent from the prediction or the ground truth, is left
out; a class with no finite case prints ``n/a``), and writes ``refinement_table.csv`` and ``refinement_table.md``::

    | class | raw Dice | refined Dice | improvement (%) | change (Dice points) | raw HD95 (mm) | refined HD95 (mm) |

"improvement (%)" is the paper's column, the relative change ``100 * (refined - raw) / raw``. Two summary rows
follow: the mean over the 12 organs and the mean over all 13 classes with background. In the paper, the "+1.27 %"
of the Average row is the mean of the 13 per-class relative improvements (background included; it does not equal
the relative change of the two averages), so the markdown states that figure too.

Whether a file includes background is read from its number of class columns: ``len(class_names)`` columns
include it, one fewer exclude it.

The standard 8-organ Synapse table that other papers report (TransUNet's protocol) is written next to this one by
:func:`common.metrics.synapse.write_synapse8_table`.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping
from pathlib import Path

from common.data.btcv import SYNAPSE12_LABELS
from common.io import atomic_write_bytes
from common.metrics.summary import format_metric

__all__ = ["TABLE_COLUMNS", "read_per_class", "refinement_table", "write_refinement_table"]

TABLE_COLUMNS = (
    "class",
    "raw Dice",
    "refined Dice",
    "improvement (%)",
    "change (Dice points)",
    "raw HD95 (mm)",
    "refined HD95 (mm)",
)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def read_per_class(path: str | os.PathLike, num_classes: int) -> tuple[dict[int, float], int]:
    """Class id -> mean over cases (NaN ignored) from a ``MetricsSaver`` ``<metric>_raw.csv``, and the case count.

    Raises:
        FileNotFoundError: naming the file and what writes it.
        ValueError: when its class columns fit neither ``num_classes`` (with background) nor ``num_classes - 1``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"'{path}' does not exist: expected MetricsSaver's per-case file (metric_details) of the evaluation."
        )
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], [r for r in rows[1:] if r]
    class_columns = [i for i, name in enumerate(header) if name.startswith("class")]
    if len(class_columns) == num_classes:
        first_id = 0
    elif len(class_columns) == num_classes - 1:
        first_id = 1
    else:
        raise ValueError(
            f"'{path}' has {len(class_columns)} class columns; expected {num_classes} (background included) or "
            f"{num_classes - 1} (background excluded)."
        )
    means = {first_id + k: _nanmean([float(row[column]) for row in body]) for k, column in enumerate(class_columns)}
    return means, len(body)


def _improvement(raw: float, refined: float) -> float:
    return 100.0 * (refined - raw) / raw if raw > 0 else math.nan


def refinement_table(
    output_dir: str | os.PathLike,
    class_names: Mapping[int, str] = SYNAPSE12_LABELS,
    raw: str = "raw",
    refined: str = "refined",
) -> tuple[list[list[float | str]], dict[str, float | int]]:
    """The rows of the raw vs refined table (see the module docstring) and summary figures.

    Returns:
        ``(rows, summary)``: rows of :data:`TABLE_COLUMNS` values (class rows, then the two mean rows), and
        ``{"cases", "mean_improvement_percent_all_classes", "mean_improvement_percent_organs"}``.
    """
    out = Path(output_dir)
    num_classes = len(class_names)
    raw_dice, cases = read_per_class(out / f"{raw}_dice_raw.csv", num_classes)
    refined_dice, _ = read_per_class(out / f"{refined}_dice_raw.csv", num_classes)
    hd95_files = (out / f"{raw}_hd95_mm_raw.csv", out / f"{refined}_hd95_mm_raw.csv")
    if all(f.is_file() for f in hd95_files):
        raw_hd95, refined_hd95 = (read_per_class(f, num_classes)[0] for f in hd95_files)
    else:
        raw_hd95 = refined_hd95 = {}
    rows: list[list[float | str]] = []
    for class_id, name in sorted(class_names.items()):
        a, b = raw_dice.get(class_id, math.nan), refined_dice.get(class_id, math.nan)
        rows.append(
            [
                name,
                a,
                b,
                _improvement(a, b),
                b - a,
                raw_hd95.get(class_id, math.nan),
                refined_hd95.get(class_id, math.nan),
            ]
        )
    class_rows = list(rows)
    organ_rows = [r for r, class_id in zip(class_rows, sorted(class_names), strict=True) if class_id != 0]
    groups = ((f"mean ({len(organ_rows)} organs)", organ_rows), ("mean (all classes, background included)", class_rows))
    for label, group in groups:
        a, b = _nanmean([r[1] for r in group]), _nanmean([r[2] for r in group])
        hd95 = [_nanmean([r[5] for r in group]), _nanmean([r[6] for r in group])]
        rows.append([label, a, b, _improvement(a, b), b - a, *hd95])
    summary = {
        "cases": cases,
        "mean_improvement_percent_all_classes": _nanmean([r[3] for r in class_rows]),
        "mean_improvement_percent_organs": _nanmean([r[3] for r in organ_rows]),
    }
    return rows, summary


def _cell(value: float | str, digits: int) -> str:
    return value if isinstance(value, str) else format_metric(value, digits=digits)


def write_refinement_table(
    output_dir: str | os.PathLike,
    class_names: Mapping[int, str] = SYNAPSE12_LABELS,
    raw: str = "raw",
    refined: str = "refined",
) -> tuple[Path, Path]:
    """Write ``refinement_table.csv`` (6 significant digits) and ``refinement_table.md`` into ``output_dir``.

    Both are written atomically. Returns their paths.
    """
    out = Path(output_dir)
    rows, summary = refinement_table(out, class_names, raw, refined)
    digits = (None, 4, 4, 2, 4, 2, 2)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(TABLE_COLUMNS)
    writer.writerows(
        [[v if isinstance(v, str) else (f"{v:.6g}" if math.isfinite(v) else "n/a") for v in row] for row in rows]
    )
    atomic_write_bytes(out / "refinement_table.csv", buffer.getvalue().encode())
    lines = [
        f"Raw (base model) vs refined (RefNet) segmentation, mean over {summary['cases']} case(s). Dice: 3D, per "
        "class; HD95: 95th-percentile Hausdorff distance in mm (MONAI's definition, the larger of the two directed "
        "95th percentiles; n/a: the organ missing from the prediction or the ground truth in every case); "
        "improvement: 100 x (refined - raw) / raw. The standard 8-organ Synapse table is synapse8_table.md.",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|---|" + "---:|" * (len(TABLE_COLUMNS) - 1),
    ]
    for row in rows:
        cells = [_cell(v, d or 0) for v, d in zip(row, digits, strict=True)]
        if str(row[0]).startswith("mean"):
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean of the per-class relative improvements (the paper's Average improvement): "
        f"{_cell(summary['mean_improvement_percent_all_classes'], 2)} % over all classes, "
        f"{_cell(summary['mean_improvement_percent_organs'], 2)} % over the organs.",
    ]
    atomic_write_bytes(out / "refinement_table.md", ("\n".join(lines) + "\n").encode())
    return out / "refinement_table.csv", out / "refinement_table.md"
