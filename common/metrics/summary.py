"""One JSON summary of an evaluation, from the CSV files MONAI's ``MetricsSaver`` writes, and how to print a metric.

``MetricsSaver`` leaves ``metrics.csv`` (``name,value`` per aggregated metric), ``<metric>_raw.csv`` (one row
per case) and ``<metric>_summary.csv`` (one row per class with the requested statistics). Tools and people
want one machine-readable file; this writes ``metrics_summary.json`` next to them::

    {"metrics": {"val_mean_dice": 0.87, "val_hd95_et": null, ...},
     "counts": {"val_mean_dice": 12, "val_hd95_et": 0, ...},
     "summary": {"val_hd95_wt": {"mean": {"mean": 4.1, "median": 3.2, ...}, ...}, ...},
     "cases": 12}

``counts`` holds, for every metric with a per-case ``<name>_raw.csv``, the number of cases whose value is finite
(the file's ``mean`` column, MONAI's per-case mean over the classes, is neither NaN nor infinite). MONAI's
reductions leave NaN cases out of a mean, and they return **0** when every case is NaN (a region empty in every
case), which reads as a perfect or a worst score. Here a metric with a count of 0 is ``null``, whatever
``metrics.csv`` says; otherwise it is MONAI's aggregate, the mean over the ``count`` finite cases. An infinite
aggregate (a case with an infinite distance) is ``null`` too, since JSON has no infinity; its count still tells
how many cases were finite. Metrics without a per-case file keep their ``metrics.csv`` value and have no count.

:func:`format_metric` prints a value for reports and tables: ``n/a (0 of 3 cases)`` for a missing one, never
``0.000``.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

from common.io import atomic_write_json

__all__ = ["format_metric", "read_metrics_csv", "summarize_metrics", "write_metrics_summary"]


def _number(text: str) -> float | None:
    value = float(text)
    return None if math.isnan(value) or math.isinf(value) else value  # JSON has no NaN or infinity


DELIMITER = ","  # MetricsSaver's default delimiter


def format_metric(value: Any, count: int | None = None, cases: int | None = None, digits: int = 4) -> str:
    """A metric value as text: the number with ``digits`` decimals, or ``n/a`` when there is none.

    ``None``, NaN and infinity are "no value": they print as ``n/a``, followed by ``(count of cases cases)`` when
    both are given (e.g. ``n/a (0 of 3 cases)``, the counts of :func:`write_metrics_summary`), so an empty metric
    never reads as a score of 0.

    Raises:
        TypeError: when ``value`` is neither ``None`` nor a number.
    """
    if value is not None:
        try:
            value = float(value)
        except (TypeError, ValueError) as e:
            raise TypeError(f"format_metric expects a number or None, got {value!r}") from e
    if value is None or not math.isfinite(value):
        if count is not None and cases is not None:
            return f"n/a ({count} of {cases} case{'' if cases == 1 else 's'})"
        return "n/a"
    return f"{value:.{digits}f}"


def read_metrics_csv(path: str | os.PathLike) -> dict[str, float | None]:
    """The aggregated metrics of ``metrics.csv``; NaN and infinity (empty regions) become ``None``.

    These are MONAI's aggregates as written: a metric that is NaN in every case reads 0 here. Use
    :func:`summarize_metrics`, which checks the per-case files, to tell such a metric from a real 0.

    Raises:
        FileNotFoundError: when there is no such file (no ``MetricsSaver`` wrote there).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; the evaluation needs a MetricsSaver writing to {path.parent}")
    with open(path) as f:
        return {row[0]: _number(row[1]) for row in csv.reader(f, delimiter=DELIMITER) if len(row) >= 2}


def _finite_cases(path: Path) -> tuple[int, int]:
    """``(cases, cases with a finite value)`` of a ``MetricsSaver`` ``<metric>_raw.csv``.

    A case counts as finite when its ``mean`` column (MONAI's mean over the classes, NaN left out) is finite; a
    file without that column counts a case as finite when any of its class values is.
    """
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f, delimiter=DELIMITER) if row]
    if not rows:
        return 0, 0
    header, body = rows[0], rows[1:]
    columns = [header.index("mean")] if "mean" in header else list(range(1, len(header)))
    finite = 0
    for row in body:
        values = [float(row[c]) for c in columns if c < len(row) and row[c] != ""]
        finite += any(math.isfinite(v) for v in values)
    return len(body), finite


def summarize_metrics(output_dir: str | os.PathLike) -> dict[str, Any]:
    """The content of ``metrics_summary.json`` (see the module docstring) from ``MetricsSaver``'s files in a folder.

    Raises:
        FileNotFoundError: when ``output_dir`` holds no ``metrics.csv`` (no ``MetricsSaver`` ran there).
    """
    out = Path(output_dir)
    metrics = read_metrics_csv(out / "metrics.csv")
    summary: dict[str, dict] = {}
    for path in sorted(out.glob("*_summary.csv")):
        with open(path) as f:
            rows = list(csv.reader(f, delimiter=DELIMITER))
        header = rows[0][1:]
        summary[path.name[: -len("_summary.csv")]] = {
            row[0]: {op: _number(v) for op, v in zip(header, row[1:], strict=True)} for row in rows[1:]
        }
    counts: dict[str, int] = {}
    cases = 0
    for path in sorted(out.glob("*_raw.csv")):
        name = path.name[: -len("_raw.csv")]
        rows, counts[name] = _finite_cases(path)
        cases = max(cases, rows)
        if name in metrics and counts[name] == 0:
            metrics[name] = None  # MONAI's mean over no case at all is 0, not a score
    return {"metrics": metrics, "counts": counts, "summary": summary, "cases": cases}


def write_metrics_summary(
    output_dir: str | os.PathLike, split: str | None = None, filename: str = "metrics_summary.json"
) -> Path:
    """Collect ``MetricsSaver``'s CSV files in ``output_dir`` into ``output_dir/filename`` (written atomically).

    ``split`` names the cases that were scored (``"test"``, ``"validation"``; an evaluation's ``eval_split``) and
    is recorded as ``"split"``, so that no figure is read without knowing whether it chose the model.

    Raises:
        FileNotFoundError: when ``output_dir`` holds no ``metrics.csv`` (no ``MetricsSaver`` ran there).
    """
    target = Path(output_dir) / filename
    content = summarize_metrics(output_dir)
    if split is not None:
        content = {"split": split, **content}
    atomic_write_json(target, content)
    return target
