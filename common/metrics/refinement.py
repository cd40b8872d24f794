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

A study trains every arm at several seeds (``python -m common.ablation --seeds N``, one evaluation folder per arm and
seed); :func:`write_seed_refinement_table` (``python -m common.metrics.refinement seeds RUNS_DIR``) gathers their
``refinement_table.csv`` into the same per-class form with mean ± SD over the seeds, and says for each arm whether
the refined mean organ Dice is above the raw one by more than the seed SD.

What RefNet learns from depends on the errors of the base predictions it trains on, so
:func:`write_base_quality` (``python -m common.metrics.refinement base DATALIST --dataset-dir DIR``) scores every
group of base predictions in a refinement datalist (out of fold, in sample per base model, test) against the
ground truth with the same Dice: the paper's in-sample predictions of a model's own training cases can be much
better than its predictions of new cases, which RefNet then never sees.

Dice is MONAI's (``compute_dice``, ``ignore_empty=True``, as the ``MeanDice`` handler of the evaluation): an organ
absent from a case's ground truth is left out of that case (even where the prediction has it), an organ the
prediction misses scores 0.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from common.data.btcv import SYNAPSE12_LABELS
from common.io import atomic_write_bytes
from common.metrics.summary import format_metric

__all__ = [
    "TABLE_COLUMNS",
    "base_quality",
    "read_per_class",
    "refinement_table",
    "seed_refinement_table",
    "write_base_quality",
    "write_refinement_table",
    "write_seed_refinement_table",
]

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


# ---------------------------------------------------------------------------------------------------------------
# over the seeds of a study
# ---------------------------------------------------------------------------------------------------------------

SEED_TABLE_COLUMNS = ("class", "raw Dice", "refined Dice", "change (Dice points)")


def _read_table(path: Path) -> dict[str, tuple[float, float]]:
    """Row label -> (raw Dice, refined Dice) of one ``refinement_table.csv``."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))

    def number(cell: str) -> float:
        return math.nan if cell == "n/a" else float(cell)

    return {r["class"]: (number(r["raw Dice"]), number(r["refined Dice"])) for r in rows}


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else math.nan)


def _mean_sd_cell(mean: float, sd: float, n: int) -> str:
    if math.isnan(mean):
        return f"n/a (0 of {n} seeds)"
    return f"{mean:.4f}" + ("" if math.isnan(sd) else f" ± {sd:.4f}")


def seed_refinement_table(seed_dirs: Sequence[str | os.PathLike]) -> list[list[float | str]]:
    """Per class of the refinement table: raw, refined and change as (mean, SD) pairs over ``seed_dirs``.

    Each of ``seed_dirs`` is an evaluation folder holding ``refinement_table.csv`` (one seed of one arm). The change
    is taken per seed, then averaged. Returns rows ``[label, (raw mean, SD), (refined mean, SD), (change mean, SD)]``
    in the order of the tables' rows.
    """
    if not seed_dirs:
        raise ValueError("seed_refinement_table needs at least one evaluation folder.")
    tables = []
    for d in seed_dirs:
        path = Path(d) / "refinement_table.csv"
        if not path.is_file():
            raise FileNotFoundError(f"'{path}' does not exist: expected the refinement table of an evaluation.")
        tables.append(_read_table(path))
    rows: list[list[float | str]] = []
    for label in tables[0]:
        pairs = [t[label] for t in tables if label in t]
        raw, refined = [p[0] for p in pairs], [p[1] for p in pairs]
        rows.append([label, _mean_sd(raw), _mean_sd(refined), _mean_sd([b - a for a, b in pairs])])
    return rows


def _arms(runs_dir: Path) -> dict[str, list[Path]]:
    """Arm name -> its seeds' evaluation folders, from an ablation study's ``<run>/seed<s>/eval`` layout."""
    arms: dict[str, list[Path]] = {}
    for table in sorted(runs_dir.glob("*/seed*/eval/refinement_table.csv")):
        arms.setdefault(table.parents[2].name, []).append(table.parent)
    return dict(sorted(arms.items(), key=lambda item: (item[0] != "baseline", item[0])))


def write_seed_refinement_table(runs_dir: str | os.PathLike, note: str = "") -> tuple[Path, Path]:
    """Write ``refinement_seeds.csv`` and ``refinement_seeds.md`` into a study's ``runs_dir``; return their paths.

    One block per arm (a folder ``runs_dir/<arm>/seed<s>/eval`` with a refinement table): every class, the means
    over the 12 organs and over all classes, as mean ± sample SD over the arm's seeds, and the outcome on the organ
    mean: refined above raw by more than the SD of the change over seeds, below it by more, or neither.
    """
    runs_dir = Path(runs_dir)
    arms = _arms(runs_dir)
    if not arms:
        raise FileNotFoundError(
            f"'{runs_dir}' holds no <arm>/seed<s>/eval/refinement_table.csv: expected the runs of a study made "
            "with python -m common.ablation --seeds N on the refnet_synapse bundle."
        )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["arm", "seeds", "class", *(f"{c} {s}" for c in SEED_TABLE_COLUMNS[1:] for s in ("mean", "sd"))])
    lines = [
        "Raw (base model) vs refined (RefNet) 3D Dice per class on the test cases, mean ± sample SD (n - 1) over "
        "seeds; each seed's figure is its mean over the test cases (MONAI Dice: a class absent from a case's ground "
        "truth is left out of that case; one the prediction misses scores 0). change: refined - raw per seed, then "
        "averaged." + (f" {note}" if note else ""),
    ]
    for arm, seed_dirs in arms.items():
        rows = seed_refinement_table(seed_dirs)
        n = len(seed_dirs)
        lines += ["", f"### {arm} ({n} seed{'s' if n > 1 else ''})", ""]
        lines += ["| " + " | ".join(SEED_TABLE_COLUMNS) + " |", "|---|" + "---:|" * (len(SEED_TABLE_COLUMNS) - 1)]
        for label, *pairs in rows:
            cells = [_mean_sd_cell(mean, sd, n) for mean, sd in pairs]
            name = f"**{label}**" if str(label).startswith("mean") else str(label)
            lines.append("| " + " | ".join([name, *cells]) + " |")
            writer.writerow([arm, n, label, *(f"{v:.6g}" for pair in pairs for v in pair)])
        organ_mean = next(r for r in rows if str(r[0]).startswith("mean") and "organs" in str(r[0]))
        change, sd = organ_mean[3]
        if math.isnan(change) or math.isnan(sd):
            verdict = "cannot be judged (fewer than 2 seeds with a finite organ mean)"
        elif change > sd:
            verdict = f"refined above raw by more than the seed SD ({change:+.4f} > {sd:.4f})"
        elif change < -sd:
            verdict = f"refined **below** raw by more than the seed SD ({change:+.4f}, SD {sd:.4f})"
        else:
            verdict = f"no change beyond the seed SD ({change:+.4f}, SD {sd:.4f})"
        lines += ["", f"Mean organ Dice: {verdict}."]
    atomic_write_bytes(runs_dir / "refinement_seeds.csv", buffer.getvalue().encode())
    atomic_write_bytes(runs_dir / "refinement_seeds.md", ("\n".join(lines) + "\n").encode())
    return runs_dir / "refinement_seeds.csv", runs_dir / "refinement_seeds.md"


# ---------------------------------------------------------------------------------------------------------------
# the base predictions RefNet learns from
# ---------------------------------------------------------------------------------------------------------------


def _group(item: Mapping[str, object]) -> str:
    """``in_sample seed 0``, ``out_of_fold seed 0``, ``test seed 0``: a case has one prediction in each group."""
    source = str(item.get("source", "unknown"))
    return f"{source} seed {item['seed']}" if "seed" in item else source


def base_quality(
    datalist_file: str | os.PathLike, dataset_dir: str | os.PathLike
) -> list[tuple[str, int, dict[int, float]]]:
    """Per organ Dice of each group of base predictions in a refinement datalist against the ground truth.

    Returns ``(group, cases, {organ id: mean Dice over the cases})`` per group (:func:`_group`), training groups
    first, then the test group; NaN for an organ absent from every case's ground truth.

    Raises:
        FileNotFoundError, ValueError: from :func:`common.data.refinement.load_refinement_datalist`, or for a base
            prediction whose shape differs from its ground truth's (both named).
    """
    import torch
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot
    from monai.transforms import LoadImage

    from common.data.btcv import btcv_to_synapse12
    from common.data.refinement import NUM_CLASSES, RefinementDataError, load_refinement_datalist

    load = LoadImage(image_only=True)
    per_case: dict[str, list[list[float]]] = {}
    for items in load_refinement_datalist(datalist_file, dataset_dir).values():
        for item in items:
            base = torch.as_tensor(load(item["base"])).round().long()
            label = torch.as_tensor(btcv_to_synapse12(load(item["label"]), name=item["label"])).round().long()
            if base.shape != label.shape:
                raise RefinementDataError(
                    f"'{item['base']}' has shape {tuple(base.shape)}, its ground truth '{item['label']}' "
                    f"{tuple(label.shape)}: expected a base prediction on the CT's grid."
                )
            dice = compute_dice(
                one_hot(base[None, None], NUM_CLASSES),
                one_hot(label[None, None], NUM_CLASSES),
                include_background=False,
                ignore_empty=True,
            )
            per_case.setdefault(_group(item), []).append(dice[0].tolist())
    return [
        (group, len(rows), {organ + 1: _nanmean([r[organ] for r in rows]) for organ in range(NUM_CLASSES - 1)})
        for group, rows in per_case.items()
    ]


def write_base_quality(datalist_file: str | os.PathLike, dataset_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``base_quality.csv`` and ``base_quality.md`` beside the datalist (:func:`base_quality`); their paths."""
    groups = base_quality(datalist_file, dataset_dir)
    organs = [SYNAPSE12_LABELS[i] for i in sorted(SYNAPSE12_LABELS) if i != 0]
    columns = ["base predictions", "cases", *organs, f"mean ({len(organs)} organs)"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    lines = [
        "Base predictions against the ground truth: 3D Dice per organ, mean over the cases of each group (MONAI "
        "Dice: an organ absent from a case's ground truth is left out of that case; one the prediction misses "
        "scores 0). in_sample: a base model's predictions of the cases it was trained on (the paper's Algorithm 1); "
        "out_of_fold: of cases it was not trained on; test: the held-out test cases RefNet refines.",
        "",
        "| " + " | ".join(columns) + " |",
        "|---|---:|" + "---:|" * (len(organs) + 1),
    ]
    for group, cases, dice in groups:
        values = [dice[i] for i in sorted(dice)]
        values.append(_nanmean(values))
        writer.writerow([group, cases, *(f"{v:.6g}" if math.isfinite(v) else "n/a" for v in values)])
        lines.append("| " + " | ".join([group, str(cases), *(format_metric(v, digits=3) for v in values)]) + " |")
    out = Path(datalist_file).parent
    atomic_write_bytes(out / "base_quality.csv", buffer.getvalue().encode())
    atomic_write_bytes(out / "base_quality.md", ("\n".join(lines) + "\n").encode())
    return out / "base_quality.csv", out / "base_quality.md"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.metrics.refinement", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("seeds", help="the per-class table over the seeds of a study (refinement_seeds.md)")
    p.add_argument("runs_dir", help="the study's runs folder (<arm>/seed<s>/eval/refinement_table.csv)")
    p.add_argument("--note", default="", help="a sentence added to the table's heading (split, phantoms, budget)")
    p = sub.add_parser("base", help="Dice of every group of base predictions in a datalist (base_quality.md)")
    p.add_argument("datalist", help="the datalist.json of python -m common.base_predictions")
    p.add_argument("--dataset-dir", required=True, help="the BTCV folder (RawData or the folder holding it)")
    args = parser.parse_args(argv)
    try:
        if args.command == "base":
            _, markdown = write_base_quality(args.datalist, args.dataset_dir)
        else:
            _, markdown = write_seed_refinement_table(args.runs_dir, args.note)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(markdown.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
