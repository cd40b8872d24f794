"""Training curves of a study: TensorBoard scalars of every run, one line per arm, mean over seeds ± SD.

The bundles' ``train.json`` write TensorBoard scalars to their ``output_dir`` (``TensorBoardStatsHandler`` with
``log_dir: @output_dir``), which the study runners set to ``<run>/eval`` (``<run>/seed<s>/eval`` with seeds):
``train_loss`` per iteration, the training key metric, the validation metrics (``val_*``, on the validation fold
that chooses the model) and the logged state attributes (``teacher_weight_0`` ...) per epoch. Every event file
under a run's ``output_dir`` is read, oldest first; a later file wins at a step both hold.

For a tag, :func:`write_curves` writes ``<out>/curves_<tag>.png`` and ``<out>/curves_<tag>.csv``:

- the CSV has one row per arm and step: ``arm``, the step (column ``epoch``, ``iteration`` or ``step``), ``mean``,
  ``sd`` (sample SD, ``n - 1``; empty for one value), ``n`` (the seeds that logged this step), and each seed's
  value (``seed0``, ``seed1``, ...; ``value`` for a study without seeds), as TensorBoard stored it;
- the figure draws the mean per arm with a shaded ± SD band, titled with the study folder, the tag, the cases it is
  computed on (a ``val_*`` tag: the validation fold, i.e. the model-selection fold, not held-out test cases) and the
  caller's note (modalities, metric definition, ...), with the data named in a footnote (``synthetic phantoms`` by
  default).

The x axis is the epoch when every step of the tag lies within its run's ``epochs`` (the bundle id, read from the
run's config stack), else the iteration: ``TensorBoardStatsHandler`` logs iteration-level values at the global
iteration and epoch-level ones at the epoch. Only runs that finished count; a tag missing in some run is reported
in one line and left out for that run, not an error.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from common.ablation import mean_sd
from common.io import atomic_write_bytes

__all__ = ["read_scalars", "split_description", "summarise_curves", "training_epochs", "write_curves"]

EPOCH, ITERATION, STEP = "epoch", "iteration", "step"


def read_scalars(log_dir: str | os.PathLike) -> dict[str, dict[int, float]]:
    """Every scalar series (tag -> {step: value}) in the TensorBoard event files under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    series: dict[str, dict[int, float]] = {}
    for events in sorted(Path(log_dir).rglob("events.out.tfevents.*")):  # names start with the creation time
        accumulator = EventAccumulator(str(events), size_guidance={SCALARS: 0})  # 0: keep every value
        accumulator.Reload()
        for tag in accumulator.Tags()[SCALARS]:
            series.setdefault(tag, {}).update((e.step, e.value) for e in accumulator.Scalars(tag))
    return series


def training_epochs(bundle_root: str | os.PathLike, config_files: Sequence[str | os.PathLike]) -> int | None:
    """The ``epochs`` id of a config stack (read from the bundle root, as a run is), or ``None`` without one."""
    from monai.bundle import ConfigParser

    try:
        with contextlib.chdir(bundle_root):
            parser = ConfigParser()
            parser.read_config([str(f) for f in config_files])
            return int(parser.get_parsed_content("epochs"))
    except Exception:  # no such id, or one that needs more than the configs: the x axis says "step"
        return None


def split_description(tag: str) -> str:
    """Which cases a logged scalar is computed on, for a figure's title."""
    if tag.startswith("val_"):
        return "validation metric: computed on the validation fold (model-selection fold), not on test cases"
    if tag.startswith("train_"):
        return "computed on the training batches"
    return "training state"


def summarise_curves(
    arms: Mapping[str, Mapping[str, Mapping[int, float]]],
) -> dict[str, list[tuple[int, float, float | None, int, dict[str, float]]]]:
    """Per arm (``{arm: {seed label: {step: value}}}``), per step: ``(step, mean, sd, n, {seed label: value})``."""
    curves = {}
    for arm, runs in arms.items():
        steps = sorted({step for series in runs.values() for step in series})
        rows = []
        for step in steps:
            values = {label: series[step] for label, series in runs.items() if step in series}
            mean, sd = mean_sd(list(values.values()))
            rows.append((step, mean, sd, len(values), values))
        curves[arm] = rows
    return curves


def _file_name(tag: str) -> str:
    return "curves_" + re.sub(r"[^A-Za-z0-9._=,+-]+", "_", tag)


def _seed_label(record: Mapping[str, Any]) -> str:
    return "value" if record.get("seed") is None else f"seed{record['seed']}"


def _run_label(record: Mapping[str, Any]) -> str:
    return record["run"] if record.get("seed") is None else f"{record['run']} seed {record['seed']}"


def _write_csv(path: Path, curves: Mapping[str, Sequence[tuple]], x_kind: str, labels: Sequence[str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["arm", x_kind, "mean", "sd", "n", *labels])
    for arm, rows in curves.items():
        for step, mean, sd, n, values in rows:
            writer.writerow([arm, step, mean, "" if sd is None else sd, n, *(values.get(s, "") for s in labels)])
    atomic_write_bytes(path, buffer.getvalue().encode())


def _plot(
    path: Path,
    curves: Mapping[str, Sequence[tuple]],
    x_kind: str,
    tag: str,
    title: str,
    legend: str,
    note: str | None,
    footnote: str | None,
) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7.5, 4.8))
    FigureCanvasAgg(fig)  # the Agg backend, without pyplot's global state
    ax = fig.add_subplot()
    for arm, rows in curves.items():
        steps = [row[0] for row in rows]
        means = [row[1] for row in rows]
        runs = max((row[3] for row in rows), default=0)
        (line,) = ax.plot(steps, means, label=f"{arm} (n={runs})", marker="." if len(rows) < 30 else None)
        band = [(row[0], row[1] - row[2], row[1] + row[2]) for row in rows if row[2] is not None]
        if band:
            x, low, high = zip(*band, strict=True)
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(x_kind)
    ax.set_ylabel(tag)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title=legend, title_fontsize=8)
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=9)
    if footnote:
        fig.text(0.01, 0.01, footnote, fontsize=8, style="italic")
    fig.tight_layout(rect=(0, 0.04 if footnote else 0, 1, 1))
    fig.savefig(path, dpi=100)


def write_curves(
    results: Sequence[Mapping[str, Any]],
    tags: Sequence[str],
    out: str | os.PathLike,
    bundle_root: str | os.PathLike,
    train_configs: Sequence[str] = ("configs/train.json",),
    note: str | None = None,
    footnote: str | None = "synthetic phantoms",
    log: Callable[[str], Any] = print,
) -> list[Path]:
    """Write ``curves_<tag>.png`` and ``.csv`` under ``out`` for every tag some finished run logged (module
    docstring); return the PNG paths. ``results`` are the study runners' records (``run``, ``seed``, ``overlay``)."""
    out, bundle_root = Path(out), Path(bundle_root)
    ok = [r for r in results if r.get("status") == "ok"]
    scalars = {_run_label(r): read_scalars(r["overlay"]["output_dir"]) for r in ok}
    epochs: dict[str, int | None] = {}
    labels = sorted({_seed_label(r) for r in ok}, key=lambda s: (len(s), s))
    written, missing = [], []
    for tag in tags:
        arms: dict[str, dict[str, dict[int, float]]] = {}
        kinds = set()
        absent = []
        for r in ok:
            series = scalars[_run_label(r)].get(tag)
            if not series:
                absent.append(_run_label(r))
                continue
            arms.setdefault(r["run"], {})[_seed_label(r)] = series
            if _run_label(r) not in epochs:
                run_dir = Path(r.get("run_dir") or Path(r["overlay"]["output_dir"]).parent)
                stack = [bundle_root / c for c in train_configs] + [run_dir / "overlay.json"]
                epochs[_run_label(r)] = training_epochs(bundle_root, stack)
            limit = epochs[_run_label(r)]
            kinds.add(STEP if limit is None else EPOCH if max(series) <= limit else ITERATION)
        if absent:
            missing.append(f"{tag} in {'every run' if not arms else ', '.join(absent)}")
        if not arms:
            continue
        x_kind = ITERATION if ITERATION in kinds else STEP if STEP in kinds else EPOCH
        curves = summarise_curves(arms)
        png = out / f"{_file_name(tag)}.png"
        _write_csv(png.with_suffix(".csv"), curves, x_kind, labels)
        title = f"{out.name}: {tag} per {x_kind}\n{split_description(tag)}"
        seeds = ", ".join(label.removeprefix("seed") for label in labels)
        legend = "one run per arm" if labels == ["value"] else f"mean ± SD over seeds {seeds}"
        _plot(png, curves, x_kind, tag, title, legend, note, footnote)
        written.append(png)
    if missing:
        log(f"curves: tags not logged, skipped there: {'; '.join(missing)}")
    return written
