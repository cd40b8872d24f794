"""One JSON summary of an evaluation, from the CSV files MONAI's ``MetricsSaver`` writes.

``MetricsSaver`` leaves ``metrics.csv`` (``name,value`` per aggregated metric), ``<metric>_raw.csv`` (one row
per case) and ``<metric>_summary.csv`` (one row per class with the requested statistics). Tools and people
want one machine-readable file; this writes ``metrics_summary.json`` next to them::

    {"metrics": {"val_mean_dice": 0.87, ...},
     "summary": {"val_hd95_wt": {"mean": {"mean": 4.1, "median": 3.2, ...}, ...}, ...},
     "cases": 12}
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from common.io import atomic_write_json


def _number(text: str) -> float | None:
    value = float(text)
    return None if math.isnan(value) or math.isinf(value) else value  # JSON has no NaN or infinity


DELIMITER = ","  # MetricsSaver's default delimiter


def read_metrics_csv(path: str | os.PathLike) -> dict[str, float | None]:
    """The aggregated metrics of ``metrics.csv``; NaN and infinity (empty regions) become ``None``.

    Raises:
        FileNotFoundError: when there is no such file (no ``MetricsSaver`` wrote there).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; the evaluation needs a MetricsSaver writing to {path.parent}")
    with open(path) as f:
        return {row[0]: _number(row[1]) for row in csv.reader(f, delimiter=DELIMITER) if len(row) >= 2}


def write_metrics_summary(output_dir: str | os.PathLike, filename: str = "metrics_summary.json") -> Path:
    """Collect ``MetricsSaver``'s CSV files in ``output_dir`` into ``output_dir/filename`` (written atomically).

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
    cases = 0
    raw_files = sorted(out.glob("*_raw.csv"))
    if raw_files:
        with open(raw_files[0]) as f:
            cases = max(sum(1 for _ in f) - 1, 0)
    target = out / filename
    atomic_write_json(target, {"metrics": metrics, "summary": summary, "cases": cases})
    return target
