"""Ablation runner: expand a grid of settings into bundle config overlays, train and evaluate each, tabulate.

    python -m common.ablation --bundle-root bundles/cohra_unet_brats \\
        --grid bundles/cohra_unet_brats/configs/ablation.json --out runs/cohra_ablation [--base overlay.json]
        [--mode one_at_a_time|full] [--axes activation norm] [--dry-run]

A grid file (JSON or YAML) names axes and, for each, its settings as MONAI config overlays::

    {
        "base": {"epochs": 300},                       stacked on every run (e.g. data paths, budget)
        "mode": "one_at_a_time",                       or "full" (the Cartesian product of all axes)
        "axes": {
            "activation": {"id": "network_def#act", "values": ["relu", "leakyrelu", "gelu"], "default": "leakyrelu"},
            "network": {"default": "cohra_unet", "settings": {
                "cohra_unet": {}, "segresnet": {"network_def": "%configs/segresnet.json#network_def"}}}
        }
    }

``"id"`` + ``"values"`` is shorthand for one setting per value, named by the value, that sets that config id.
``"default"`` names the setting that equals the bundle's own configuration. In ``one_at_a_time`` mode (the
thesis-style study: change one axis, keep the rest at the default) the runs are ``baseline`` plus every
non-default setting of every axis; in ``full`` mode every combination runs.

Each run lives in ``<out>/<run>/``: ``overlay.json`` (base + setting + the run's own ``ckpt_dir`` and
``output_dir``), ``train.log``, ``evaluate.log``, ``models/``, ``eval/`` and ``result.json``. Training is
``python -m monai.bundle run --config_file "[train.json, overlay.json]"`` and evaluation stacks
``evaluate.json`` as well, both from the bundle root, exactly as a user runs them; config paths in overlays
(``%configs/...``) are therefore relative to the bundle root. A run whose ``result.json`` records the same
overlay and success is not repeated, so an interrupted study continues where it stopped. A failed run is
recorded with its log and the study goes on; the command exits non-zero if any run failed.

The results table (``<out>/results.csv`` and ``<out>/results.md``) has one row per run: axis, setting,
parameter count, training and evaluation wall time, and every aggregated metric of the evaluation's
``metrics_summary.json`` (``common.metrics.write_metrics_summary``), printed by ``common.metrics.format_metric``: a
metric with no finite case reads ``n/a (0 of N cases)``, never 0.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.bundle_run import monai_bundle_run
from common.io import atomic_write_bytes, atomic_write_json
from common.metrics.summary import format_metric

__all__ = [
    "Run",
    "count_parameters",
    "expand_grid",
    "load_grid",
    "read_structured",
    "results_table",
    "run_study",
    "scored_split",
]

MODES = ("one_at_a_time", "full")
BASELINE = "baseline"


@dataclass
class Run:
    """One configuration of the study: a name, the setting chosen per varied axis, and its config overlay."""

    name: str
    settings: dict[str, str]
    overlay: dict[str, Any] = field(default_factory=dict)


def read_structured(path: Path) -> Any:
    """A JSON or YAML file's content (by its suffix); a malformed file raises ``ValueError`` naming it."""
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)
    except Exception as e:  # malformed file: name it
        raise ValueError(f"{path}: not a valid JSON or YAML file ({e})") from e


def _setting_name(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def load_grid(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a grid file; return ``{"base", "mode", "axes": {axis: {"settings": {...}, "default"}}}``.

    Raises:
        ValueError: naming the file and the axis for anything malformed.
    """
    path = Path(path)
    grid = read_structured(path)
    if not isinstance(grid, dict) or not isinstance(grid.get("axes"), dict) or not grid["axes"]:
        raise ValueError(f"{path}: expected an object with a non-empty 'axes' object")
    mode = grid.get("mode", "one_at_a_time")
    if mode not in MODES:
        raise ValueError(f"{path}: 'mode' must be one of {MODES}, got {mode!r}")
    base = grid.get("base", {})
    if not isinstance(base, dict):
        raise ValueError(f"{path}: 'base' must be an object of config overrides")
    axes: dict[str, dict[str, Any]] = {}
    for axis, spec in grid["axes"].items():
        where = f"{path}: axis {axis!r}"
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: expected an object with 'settings' or 'id' + 'values'")
        if "settings" in spec:
            settings = spec["settings"]
            if not isinstance(settings, dict) or not all(isinstance(v, dict) for v in settings.values()):
                raise ValueError(f"{where}: 'settings' must map setting names to config overlay objects")
        elif "id" in spec and isinstance(spec.get("values"), list):
            settings = {_setting_name(v): {spec["id"]: v} for v in spec["values"]}
        else:
            raise ValueError(f"{where}: expected 'settings' or 'id' + a list of 'values'")
        if not settings:
            raise ValueError(f"{where}: no settings")
        default = spec.get("default")
        default = None if default is None else _setting_name(default)
        if default is not None and default not in settings:
            raise ValueError(f"{where}: default {default!r} is not one of its settings {list(settings)}")
        if mode == "one_at_a_time" and default is None:
            raise ValueError(f"{where}: one_at_a_time mode needs a 'default' setting (the bundle's own choice)")
        axes[axis] = {"settings": settings, "default": default}
    return {"base": base, "mode": mode, "axes": axes}


def _merge(*overlays: Mapping[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for overlay in overlays:
        merged.update(overlay)
    return merged


def expand_grid(grid: Mapping[str, Any], axes: Sequence[str] | None = None) -> list[Run]:
    """The runs of a grid (as returned by :func:`load_grid`), restricted to ``axes`` if given."""
    chosen = {a: s for a, s in grid["axes"].items() if not axes or a in axes}
    unknown = set(axes or ()) - set(grid["axes"])
    if unknown:
        raise ValueError(f"unknown axes {sorted(unknown)}; the grid has {list(grid['axes'])}")
    runs: list[Run] = []
    if grid["mode"] == "one_at_a_time":
        runs.append(Run(BASELINE, {}, _merge(grid["base"])))
        for axis, spec in chosen.items():
            for name, overlay in spec["settings"].items():
                if name != spec["default"]:
                    runs.append(Run(f"{axis}={name}", {axis: name}, _merge(grid["base"], overlay)))
        return runs
    names = [list(spec["settings"]) for spec in chosen.values()]
    for combination in itertools.product(*names):
        settings = dict(zip(chosen, combination, strict=True))
        overlays = [chosen[a]["settings"][n] for a, n in settings.items()]
        name = ",".join(f"{a}={n}" for a, n in settings.items())
        runs.append(Run(name, settings, _merge(grid["base"], *overlays)))
    return runs


def _run_dir_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "_", name)


def count_parameters(
    config_files: Sequence[str | os.PathLike], cwd: str | os.PathLike = ".", network_id: str = "network_def"
) -> int:
    """Parameters of the network a stack of bundle configs defines, built on the ``meta`` device (no memory) when
    its constructor allows, else on the CPU.

    ``cwd`` is where relative config paths (``%configs/...`` macros) resolve: the bundle root.
    """
    import torch
    from monai.bundle import ConfigParser

    with contextlib.chdir(cwd):
        parser = ConfigParser()
        parser.read_config([str(f) for f in config_files])
        try:
            with torch.device("meta"):
                network = parser.get_parsed_content(network_id, instantiate=True)
        except Exception:  # some constructors compute with tensors (SwinUNETR calls .item()): build on the CPU
            network = parser.get_parsed_content(network_id, instantiate=True, lazy=False)
    return int(sum(p.numel() for p in network.parameters()))


def _evaluation_summary(output_dir: Path) -> dict[str, Any]:
    summary = output_dir / "metrics_summary.json"
    if not summary.is_file():
        raise FileNotFoundError(f"{summary}: the evaluation wrote no metrics summary")
    return json.loads(summary.read_text())


def _describe(error: BaseException) -> str:
    """First line of an error, and of its root cause: MONAI wraps the real reason in 'Failed to instantiate ...'."""

    def first_line(e: BaseException) -> str:
        return (str(e).splitlines() or [type(e).__name__])[0]

    root = error
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__
    return first_line(error) if root is error else f"{first_line(error)} ({first_line(root)})"


def run_study(
    bundle_root: str | os.PathLike,
    runs: Sequence[Run],
    out: str | os.PathLike,
    train_configs: Sequence[str] = ("configs/train.json",),
    evaluate_configs: Sequence[str] = ("configs/train.json", "configs/evaluate.json"),
    log: Any = print,
) -> list[dict[str, Any]]:
    """Train and evaluate every run; return one result record per run (also written to ``<run>/result.json``)."""
    bundle_root = Path(bundle_root).resolve()
    out = Path(out).resolve()
    results = []
    for i, run in enumerate(runs, 1):
        run_dir = out / _run_dir_name(run.name)
        overlay = _merge(
            run.overlay,
            {"bundle_root": str(bundle_root), "ckpt_dir": str(run_dir / "models"), "output_dir": str(run_dir / "eval")},
        )
        result_file = run_dir / "result.json"
        if result_file.is_file():
            previous = json.loads(result_file.read_text())
            if previous.get("status") == "ok" and previous.get("overlay") == overlay:
                log(f"[{i}/{len(runs)}] {run.name}: done before, reusing {result_file}")
                results.append(previous)
                continue
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "overlay.json", overlay)
        record: dict[str, Any] = {"run": run.name, "settings": run.settings, "overlay": overlay}
        log(f"[{i}/{len(runs)}] {run.name}: training ...")
        try:
            stack = [bundle_root / c for c in train_configs] + [run_dir / "overlay.json"]
            record["parameters"] = count_parameters(stack, cwd=bundle_root)
            seconds = monai_bundle_run(stack, cwd=bundle_root, log_file=run_dir / "train.log")
            record["train_seconds"] = round(seconds, 1)
            log(f"[{i}/{len(runs)}] {run.name}: evaluating ...")
            stack = [bundle_root / c for c in evaluate_configs] + [run_dir / "overlay.json"]
            seconds = monai_bundle_run(stack, cwd=bundle_root, log_file=run_dir / "evaluate.log")
            record["eval_seconds"] = round(seconds, 1)
            evaluation = _evaluation_summary(run_dir / "eval")
            record["metrics"] = dict(evaluation["metrics"])
            record["metric_counts"] = dict(evaluation.get("counts", {}))  # finite cases per metric
            record["cases"] = evaluation.get("cases")
            record["split"] = evaluation.get("split")  # which cases were scored: test or validation
            record["status"] = "ok"
        except Exception as e:  # one failed configuration must not stop the study
            record["status"] = "failed"
            record["error"] = _describe(e)
            log(f"[{i}/{len(runs)}] {run.name}: FAILED, {record['error']} (logs in {run_dir})")
        atomic_write_json(result_file, record)
        results.append(record)
    return results


def _format(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def results_table(results: Sequence[Mapping[str, Any]], axes: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table: run, one column per axis, size, times, status, every metric."""
    metric_names = sorted({m for r in results for m in r.get("metrics", {})})
    header = ["run", *axes, "parameters", "train_seconds", "eval_seconds", "status", *metric_names]
    rows = []
    for r in results:
        settings = r.get("settings", {})
        row = [r["run"], *(settings.get(a, "(default)") for a in axes)]
        row += [_format(r.get(k)) for k in ("parameters", "train_seconds", "eval_seconds", "status")]
        counts = r.get("metric_counts", {})
        row += [format_metric(r.get("metrics", {}).get(m), counts.get(m), r.get("cases")) for m in metric_names]
        rows.append(row)
    return header, rows


def scored_split(results: Sequence[Mapping[str, Any]]) -> str:
    """The split the finished runs were scored on (``"test"``, ``"validation"``), or how they differ."""
    splits = sorted({str(r.get("split")) for r in results if r.get("status") == "ok"})
    return splits[0] if len(splits) == 1 else " / ".join(splits) or "(no finished run)"


def write_tables(results: Sequence[Mapping[str, Any]], axes: Sequence[str], out: Path) -> tuple[Path, Path]:
    """Write ``results.csv`` and ``results.md`` under ``out`` (atomically)."""
    header, rows = results_table(results, axes)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_bytes(out / "results.csv", buffer.getvalue().encode())
    lines = [f"Metrics scored on the {scored_split(results)} split (evaluate.json's eval_split).", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    atomic_write_bytes(out / "results.md", ("\n".join(lines) + "\n").encode())
    return out / "results.csv", out / "results.md"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.ablation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle-root", required=True, help="the bundle folder (holding configs/)")
    parser.add_argument("--grid", required=True, help="grid file, JSON or YAML")
    parser.add_argument("--out", required=True, help="folder for the runs and the results table")
    parser.add_argument("--base", action="append", default=[], help="extra overlay file stacked on every run")
    parser.add_argument("--mode", choices=MODES, help="override the grid's mode")
    parser.add_argument("--axes", nargs="+", help="only these axes")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their overlays, run nothing")
    args = parser.parse_args(argv)

    bundle_root = Path(args.bundle_root)
    if not (bundle_root / "configs").is_dir():
        parser.error(f"{bundle_root}: not a bundle folder (no configs/)")
    try:
        grid = load_grid(args.grid)
        for extra in args.base:
            base = read_structured(Path(extra))
            if not isinstance(base, dict):
                raise ValueError(f"{extra}: expected an object of config overrides")
            grid["base"] = _merge(grid["base"], base)
        if args.mode:
            grid["mode"] = args.mode
        runs = expand_grid(grid, args.axes)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for run in runs:
            print(run.name, json.dumps(run.overlay, sort_keys=True))
        return 0
    out = Path(args.out)
    results = run_study(bundle_root, runs, out)
    axes = [a for a in grid["axes"] if not args.axes or a in args.axes]
    csv_path, md_path = write_tables(results, axes, out)
    print(f"{len(results)} runs; table: {md_path} and {csv_path}")
    failed = [r["run"] for r in results if r.get("status") != "ok"]
    if failed:
        print(f"failed runs: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
