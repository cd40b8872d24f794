"""Ablation runner: expand a grid of settings into bundle config overlays, train and evaluate each, tabulate.

    python -m common.ablation --bundle-root bundles/cohra_unet_brats \\
        --grid bundles/cohra_unet_brats/configs/ablation.json --out runs/cohra_ablation [--base overlay.json]
        [--mode one_at_a_time|full] [--axes activation norm] [--seeds 3] [--curves train_loss val_mean_dice]
        [--figure-note "T1ce student; phantoms"] [--record studies/cohra] [--dry-run]

A grid file (JSON or YAML) names axes and, for each, its settings as MONAI config overlays::

    {
        "base": {"epochs": 300},                       stacked on every run (e.g. data paths, budget)
        "mode": "one_at_a_time",                       or "full" (the Cartesian product of all axes)
        "axes": {
            "activation": {"id": "network_def#act", "values": ["relu", "leakyrelu", "gelu"], "default": "leakyrelu"},
            "network": {"default": "cohra_unet", "settings": {
                "cohra_unet": {}, "segresnet": {"network_def": "%configs/segresnet.json#network_def"}}},
            "protocol": {"default": "ours", "settings": {
                "ours": {}, "faithful": "configs/faithful.json",
                "faithful_short": ["configs/faithful.json", {"epochs": 5}]}}
        }
    }

``"id"`` + ``"values"`` is shorthand for one setting per value, named by the value, that sets that config id.
A setting is an overlay object, the path of an overlay file relative to the bundle root (so a study names the
bundle's own overlay files instead of copying their content), or a list of both, merged in order.
``"default"`` names the setting that equals the bundle's own configuration. In ``one_at_a_time`` mode (the
thesis-style study: change one axis, keep the rest at the default) the runs are ``baseline`` plus every
non-default setting of every axis; in ``full`` mode every combination runs.

A run's overlay is merged from, in this order (top-level keys; a later one wins, and is moved after the others
so that MONAI, which applies an overlay's keys in order, applies it last, e.g. ``network_def`` then
``network_def#act``):

1. the grid's ``base``;
2. every ``--base`` file, in the order given;
3. the run's setting: in ``full`` mode one per axis, in the grid's axis order; a list setting's files and
   objects in list order;
4. the run's own ids: ``seed`` (with ``--seeds`` above 1), ``bundle_root``, ``ckpt_dir`` and ``output_dir``.

The overlay is stacked last on the bundle's ``train.json`` (and ``evaluate.json``), so it wins over them. A
top-level string of a setting may name another run's folder as ``{run_dir:NAME}`` (``<out>/NAME``, at the same
seed: ``<out>/NAME/seed<s>``), for an arm that starts from what an earlier arm of the same seed wrote, e.g.
``"teachers_from": "{run_dir:baseline}/models/teachers.pt"``; runs go in grid order within a seed.

Each run lives in ``<out>/<run>/``: ``overlay.json``, ``train.log``, ``evaluate.log``, ``models/``, ``eval/``
and ``result.json``. Training is ``python -m monai.bundle run --config_file "[train.json, overlay.json]"`` and
evaluation stacks ``evaluate.json`` as well, both from the bundle root, exactly as a user runs them; config paths
in overlays (``%configs/...``) are therefore relative to the bundle root. A run whose ``result.json`` records the
same overlay and success is not repeated, so an interrupted study continues where it stopped; a run whose training
was interrupted (killed, the machine stopped) with the same overlay resumes from its newest epoch checkpoint (the
bundle's ``resume`` id), its log appended to, its curves kept, and ``result.json`` naming the epochs it resumed
from (``resumed_from_epochs``; ``train_seconds`` counts the kept work, not the redone part or the pause). A resumed
run draws other random patches after the checkpoint than an uninterrupted one would: the same recipe, not the
same numbers. Any other run trained again first loses the TensorBoard event files and checkpoints of its earlier
attempt, so that its curves show one training. A failed run is recorded with its log and the study goes on; the
command exits non-zero if any run failed.

A study longer than one machine's life (``--record DIR``): every finished run's ``result.json``, ``overlay.json``,
metrics (summary and per case) and TensorBoard event files (no weights, no logs) are copied to ``DIR`` at the same
relative place, with the working directory's path written as ``{study_root}``; a run missing from ``--out`` whose
record ran with the same overlay is restored from ``DIR`` instead of trained. Committed, the record lets the study's
command on a fresh clone go on where the last machine stopped and rebuild the whole table and curves. Records hold
no checkpoints, so a run interrupted midway starts again on the next machine; a run whose models a later arm reads
(``{run_dir:NAME}``) is never restored. Each result names the machine that trained it (``machine``): times from
different machines are not comparable.

The results table (``<out>/results.csv`` and ``<out>/results.md``) has one row per run: axis, setting,
parameter count, training and evaluation wall time, and every aggregated metric of the evaluation's
``metrics_summary.json`` (``common.metrics.write_metrics_summary``), printed by ``common.metrics.format_metric``: a
metric with no finite case reads ``n/a (0 of N cases)``, never 0.

Seeds (``--seeds N``, N > 1): every run of the grid is trained and evaluated once per seed ``0 .. N-1`` (the
bundle's ``seed`` id, which ``train.json`` hands to ``monai.utils.set_determinism``; a bundle without it is
refused before any run), seed after seed, so that an interrupted study has every arm at the first seeds. A
run's folder is then ``<out>/<run>/seed<s>/``. ``runs.csv`` has one row per run and seed; ``results.csv`` and
``results.md`` have one row per run (arm): every metric as the mean ± sample SD (``n - 1``) over the seeds that
finished and had it, each seed's figure being its mean over the evaluated cases, printed as by
:mod:`common.crossval` (:func:`format_mean_sd`), and ``n``, the seeds that finished. With one seed (the default)
nothing of the above changes: the bundle's own ``seed``, the same folders and tables.

Training curves (``--curves TAG ...``): for every TensorBoard scalar tag the bundle's ``train.json`` writes to
its ``output_dir`` (``train_loss``, ``val_mean_dice``, state attributes such as ``teacher_weight_0``),
``<out>/curves_<tag>.png`` and ``.csv``: one line per run, the mean over seeds with a ± SD band (see
:mod:`common.curves`).
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
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import records as study_records
from common.bundle_run import monai_bundle_run
from common.cpu import cpu_model, hardware_kind
from common.io import atomic_write_bytes, atomic_write_json
from common.metrics.summary import format_metric

__all__ = [
    "Run",
    "count_parameters",
    "expand_grid",
    "format_mean_sd",
    "load_grid",
    "mean_sd",
    "read_structured",
    "resolve_setting",
    "results_table",
    "run_study",
    "scored_split",
    "seed_results_table",
    "with_seeds",
]

MODES = ("one_at_a_time", "full")
BASELINE = "baseline"


@dataclass
class Run:
    """One configuration of the study: a name, the setting chosen per varied axis, and its config overlay.

    ``seed``, when set, is the bundle's ``seed`` id for this run, which then lives in ``<out>/<name>/seed<seed>/``.
    """

    name: str
    settings: dict[str, str]
    overlay: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None

    @property
    def label(self) -> str:
        return self.name if self.seed is None else f"{self.name} seed {self.seed}"


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


def _is_setting(value: Any) -> bool:
    """An overlay object, an overlay file path, or a list of those."""
    if isinstance(value, list):
        return all(isinstance(part, (dict, str)) for part in value)
    return isinstance(value, (dict, str))


def resolve_setting(value: Any, bundle_root: str | os.PathLike, where: str = "setting") -> dict[str, Any]:
    """The overlay a setting stands for: an object as is, a file (path relative to ``bundle_root``) by its content,
    a list of both merged in order (top-level keys; a later one wins).

    Raises:
        ValueError: naming ``where`` and the file for a missing file or one that is not an object of overrides.
    """
    overlays = []
    for part in value if isinstance(value, list) else [value]:
        if isinstance(part, dict):
            overlays.append(part)
            continue
        path = Path(bundle_root) / part
        if not path.is_file():
            raise ValueError(f"{where}: overlay file {part!r} not found in the bundle root {bundle_root}")
        content = read_structured(path)
        if not isinstance(content, dict):
            raise ValueError(f"{where}: {path} is not an object of config overrides")
        overlays.append(content)
    return _merge(*overlays)


def load_grid(path: str | os.PathLike, bundle_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read and check a grid file; return ``{"base", "mode", "axes": {axis: {"settings": {...}, "default"}}}``.

    Every setting comes back as one overlay object: settings that name overlay files are read relative to
    ``bundle_root``, by default the bundle whose ``configs/`` folder holds the grid file.

    Raises:
        ValueError: naming the file and the axis for anything malformed.
    """
    path = Path(path)
    if bundle_root is None and path.resolve().parent.name == "configs":
        bundle_root = path.resolve().parent.parent
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
            if not isinstance(settings, dict) or not all(_is_setting(v) for v in settings.values()):
                raise ValueError(
                    f"{where}: 'settings' must map setting names to config overlay objects, overlay file paths "
                    "(relative to the bundle root) or lists of them"
                )
            named_files = [n for n, v in settings.items() if not isinstance(v, dict)]
            if named_files and bundle_root is None:
                raise ValueError(
                    f"{where}: settings {named_files} name overlay files, read relative to the bundle root; "
                    "give the bundle root"
                )
            settings = {n: resolve_setting(v, bundle_root, f"{where}, setting {n!r}") for n, v in settings.items()}
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
    """Top-level keys of the overlays, a later one winning and moving last: MONAI applies an overlay's keys in
    order, so a later ``network_def`` must come after an earlier ``network_def#act`` to replace it."""
    merged: dict[str, Any] = {}
    for overlay in overlays:
        for key, value in overlay.items():
            merged.pop(key, None)
            merged[key] = value
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


def with_seeds(runs: Sequence[Run], seeds: Sequence[int]) -> list[Run]:
    """Every run once per seed, seed-major: an interrupted study has every run at the first seeds."""
    return [Run(r.name, r.settings, r.overlay, seed=s) for s in seeds for r in runs]


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


def _remove_event_files(output_dir: Path) -> None:
    """TensorBoard event files of an earlier attempt: the training that follows writes its own next to them."""
    for events in output_dir.rglob("events.out.tfevents.*"):
        events.unlink()


RUN_DIR_FIELD = re.compile(r"\{run_dir:([^{}]+)\}")


def _with_run_dirs(overlay: Mapping[str, Any], out: Path, seed: int | None) -> dict[str, Any]:
    """``overlay`` with ``{run_dir:NAME}`` in its top-level strings replaced by the folder of run ``NAME`` at the
    same seed, so that one arm can start from what an earlier arm wrote (e.g. its trained teachers)."""

    def folder(match: re.Match) -> str:
        run_dir = out / _run_dir_name(match.group(1))
        return str(run_dir if seed is None else run_dir / f"seed{seed}")

    return {k: RUN_DIR_FIELD.sub(folder, v) if isinstance(v, str) else v for k, v in overlay.items()}


ATTEMPT_FILE = "training_attempt.json"


def _interrupted_checkpoint(run_dir: Path, overlay: Mapping[str, Any]) -> Path | None:
    """The checkpoint to resume ``run_dir``'s training from: its newest intact epoch checkpoint when an earlier
    attempt with the same overlay started (and left no result), else ``None``."""
    from common.engines.checkpoints import CheckpointNotFoundError, latest_checkpoint

    if not (run_dir / ATTEMPT_FILE).is_file() or not (run_dir / "overlay.json").is_file():
        return None
    if json.loads((run_dir / "overlay.json").read_text()) != overlay:
        return None
    try:
        return Path(latest_checkpoint(run_dir / "models"))
    except CheckpointNotFoundError:
        return None


def _start_attempt(run_dir: Path, checkpoint: Path | None) -> float:
    """Record the start of a training attempt in ``<run>/training_attempt.json``; return the training seconds
    that the kept work took before it: from the start of each earlier attempt to the checkpoint it left.

    The work an interrupted attempt did after its last checkpoint is done again, so it does not count; neither
    does the time the run lay interrupted.
    """
    attempt_file = run_dir / ATTEMPT_FILE
    seconds_before, resumed_from = 0.0, []
    if checkpoint is not None:
        previous = json.loads(attempt_file.read_text())
        seconds_before = previous["seconds_before"] + max(0.0, checkpoint.stat().st_mtime - previous["started"])
        resumed_from = [*previous["resumed_from_epochs"], int(checkpoint.stem.rsplit("=", 1)[-1])]
    atomic_write_json(
        attempt_file, {"started": time.time(), "seconds_before": seconds_before, "resumed_from_epochs": resumed_from}
    )
    return seconds_before


RECORDED_FILES = ("result.json", "overlay.json", "eval/metrics_summary.json")
RECORDED_PATTERNS = ("eval/*.csv", "eval/**/events.out.tfevents.*")  # per-case metrics; the training curves


def _recorded_files(run_dir: Path) -> list[Path]:
    files = [run_dir / name for name in RECORDED_FILES if (run_dir / name).is_file()]
    return files + sorted(f for pattern in RECORDED_PATTERNS for f in run_dir.glob(pattern))


def _finished_with(overlay: Mapping[str, Any]) -> Any:
    return lambda result: result.get("status") == "ok" and result.get("overlay") == overlay


def run_study(
    bundle_root: str | os.PathLike,
    runs: Sequence[Run],
    out: str | os.PathLike,
    train_configs: Sequence[str] = ("configs/train.json",),
    evaluate_configs: Sequence[str] = ("configs/train.json", "configs/evaluate.json"),
    log: Any = print,
    record: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Train and evaluate every run; return one result record per run (also written to ``<run>/result.json``).

    A run with a ``seed`` lives in ``<out>/<run>/seed<seed>/`` and its overlay sets the bundle's ``seed`` id.

    ``record``: a folder that keeps what every finished run's table and curves need (``RECORDED_FILES``, the event
    files; no weights) at the same relative place as in ``out``, its paths under the working directory written as
    ``{study_root}``. A run missing from ``out`` whose record ran with the same overlay is restored from it instead
    of trained, so a study longer than one machine's life goes on where the record left it (on a fresh clone, from
    the same working directory layout). A run whose models a later arm reads (``{run_dir:NAME}``) is never restored.
    """
    bundle_root = Path(bundle_root).resolve()
    out = Path(out).resolve()
    root = str(Path.cwd().resolve())
    record = None if record is None else Path(record).resolve()
    needed_models = {m for run in runs for v in run.overlay.values() if isinstance(v, str)
                     for m in RUN_DIR_FIELD.findall(v)}  # fmt: skip
    results = []
    for i, run in enumerate(runs, 1):
        relative = Path(_run_dir_name(run.name))
        own_ids: dict[str, Any] = {}
        if run.seed is not None:
            relative = relative / f"seed{run.seed}"
            own_ids["seed"] = run.seed
        run_dir = out / relative
        own_ids |= {
            "bundle_root": str(bundle_root),
            "ckpt_dir": str(run_dir / "models"),
            "output_dir": str(run_dir / "eval"),
        }
        overlay = _merge(_with_run_dirs(run.overlay, out, run.seed), own_ids)
        result_file = run_dir / "result.json"
        if (
            record is not None
            and run.name not in needed_models
            and not result_file.is_file()
            and not (run_dir / ATTEMPT_FILE).is_file()
            and study_records.restore(record / relative, run_dir, "result.json", _finished_with(overlay), root)
        ):
            log(f"[{i}/{len(runs)}] {run.label}: restored from the record {record / relative}")
        if result_file.is_file():
            previous = json.loads(result_file.read_text())
            if previous.get("status") == "ok" and previous.get("overlay") == overlay:
                log(f"[{i}/{len(runs)}] {run.label}: done before, reusing {result_file}")
                results.append({**previous, "run_dir": str(run_dir)})
                if record is not None:
                    study_records.save(_recorded_files(run_dir), run_dir, record / relative, root)
                continue
        # a run that ended (failed, or with another overlay) starts again; one stopped midway has no result
        checkpoint = None if result_file.is_file() else _interrupted_checkpoint(run_dir, overlay)
        run_dir.mkdir(parents=True, exist_ok=True)
        # the earlier result goes with the curves it described: an interrupted retrain must not leave it reusable
        result_file.unlink(missing_ok=True)
        if checkpoint is None:
            if (run_dir / "eval").is_dir():
                _remove_event_files(run_dir / "eval")
            for stale in (run_dir / "models").glob("checkpoint_epoch=*.pt"):  # a later resume must not pick them
                stale.unlink()
            (run_dir / ATTEMPT_FILE).unlink(missing_ok=True)
            atomic_write_json(run_dir / "overlay.json", overlay)
        outcome: dict[str, Any] = {"run": run.name, "settings": run.settings, "overlay": overlay}
        if run.seed is not None:
            outcome["seed"] = run.seed
        outcome["run_dir"] = str(run_dir)
        # studies go on over several machines (``record``): say which one trained each run
        outcome["machine"] = {
            "cpu": cpu_model(),
            "kind": hardware_kind(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        }
        stack = [bundle_root / c for c in train_configs] + [run_dir / "overlay.json"]
        if checkpoint is None:
            log(f"[{i}/{len(runs)}] {run.label}: training ...")
        else:
            log(f"[{i}/{len(runs)}] {run.label}: interrupted before, resuming from {checkpoint.name} ...")
            atomic_write_json(run_dir / "resume.json", {"resume": True})
            stack.append(run_dir / "resume.json")
        try:
            outcome["parameters"] = count_parameters(stack, cwd=bundle_root)
            seconds_before = _start_attempt(run_dir, checkpoint)
            seconds = monai_bundle_run(
                stack, cwd=bundle_root, log_file=run_dir / "train.log", append=checkpoint is not None
            )
            outcome["train_seconds"] = round(seconds_before + seconds, 1)
            outcome["resumed_from_epochs"] = json.loads((run_dir / ATTEMPT_FILE).read_text())["resumed_from_epochs"]
            log(f"[{i}/{len(runs)}] {run.label}: evaluating ...")
            stack = [bundle_root / c for c in evaluate_configs] + [run_dir / "overlay.json"]
            seconds = monai_bundle_run(stack, cwd=bundle_root, log_file=run_dir / "evaluate.log")
            outcome["eval_seconds"] = round(seconds, 1)
            evaluation = _evaluation_summary(run_dir / "eval")
            outcome["metrics"] = dict(evaluation["metrics"])
            outcome["metric_counts"] = dict(evaluation.get("counts", {}))  # finite cases per metric
            outcome["cases"] = evaluation.get("cases")
            outcome["split"] = evaluation.get("split")  # which cases were scored: test or validation
            outcome["status"] = "ok"
        except Exception as e:  # one failed configuration must not stop the study
            outcome["status"] = "failed"
            outcome["error"] = _describe(e)
            log(f"[{i}/{len(runs)}] {run.label}: FAILED, {outcome['error']} (logs in {run_dir})")
        atomic_write_json(result_file, outcome)
        results.append(outcome)
        if record is not None and outcome["status"] == "ok":
            study_records.save(_recorded_files(run_dir), run_dir, record / relative, root)
    return results


def _format(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def finite(value: Any) -> bool:
    """Whether ``value`` is a finite number (a metric that counts in a mean; ``None`` and NaN do not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample SD (``n - 1``) of ``values``; no SD for one value, neither for none."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def format_mean_sd(mean: float | None, sd: float | None, n: int, of: int, unit: str = "runs") -> str:
    """``mean ± SD`` as the study tables print it (:func:`format_metric` digits; no SD for one value), or
    ``n/a (n of N runs)`` when no run had the metric: never a number for a metric nobody could compute."""
    if mean is None:
        return f"{format_metric(None)} ({n} of {of} {unit})"
    return format_metric(mean) + ("" if sd is None else f" ± {format_metric(sd)}")


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


def summarise_seeds(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One record per run (arm), in the order of the results, over its seeds.

    ``{"run", "settings", "seeds", "ok", "status", "parameters", "train_seconds", "eval_seconds",
    "metrics": {name: (mean, sd, n)}}``: ``ok`` counts the seeds that finished, ``n`` those of them that had the
    metric (a finite value); times are means over the finished seeds.
    """
    arms: dict[str, list[Mapping[str, Any]]] = {}
    for r in results:
        arms.setdefault(r["run"], []).append(r)
    names = sorted({m for r in results for m in r.get("metrics", {})})
    rows = []
    for arm, records in arms.items():
        ok = [r for r in records if r.get("status") == "ok"]
        status = "ok" if len(ok) == len(records) else "failed" if not ok else f"{len(ok)} of {len(records)} ok"
        row: dict[str, Any] = {
            "run": arm,
            "settings": records[0].get("settings", {}),
            "seeds": [r.get("seed") for r in records],
            "ok": len(ok),
            "status": status,
            "parameters": next((r["parameters"] for r in records if r.get("parameters") is not None), None),
        }
        for key in ("train_seconds", "eval_seconds"):
            mean = mean_sd([r[key] for r in ok if finite(r.get(key))])[0]
            row[key] = None if mean is None else round(mean, 1)
        row["metrics"] = {}
        for name in names:
            values = [r["metrics"][name] for r in ok if finite(r["metrics"].get(name))]
            row["metrics"][name] = (*mean_sd(values), len(values))
        rows.append(row)
    return rows


def seed_results_table(results: Sequence[Mapping[str, Any]], axes: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table over seeds: run, axes, size, mean times, status, ``n`` (seeds that
    finished) and every metric as mean ± SD over them; a metric fewer seeds had says how many."""
    rows = summarise_seeds(results)
    names = sorted({m for r in results for m in r.get("metrics", {})})
    header = ["run", *axes, "parameters", "train_seconds", "eval_seconds", "status", "n", *names]
    table = []
    for row in rows:
        cells = [row["run"], *(row["settings"].get(a, "(default)") for a in axes)]
        cells += [_format(row[k]) for k in ("parameters", "train_seconds", "eval_seconds", "status", "ok")]
        for name in names:
            mean, sd, n = row["metrics"][name]
            cell = format_mean_sd(mean, sd, n, row["ok"], "seeds")
            cells.append(cell if mean is None or n == row["ok"] else f"{cell} ({n} of {row['ok']} seeds)")
        table.append(cells)
    return header, table


def scored_split(results: Sequence[Mapping[str, Any]]) -> str:
    """The split the finished runs were scored on (``"test"``, ``"validation"``), or how they differ."""
    splits = sorted({str(r.get("split")) for r in results if r.get("status") == "ok"})
    return splits[0] if len(splits) == 1 else " / ".join(splits) or "(no finished run)"


def _csv_bytes(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]], intro: Sequence[str]) -> bytes:
    lines = [*intro, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return ("\n".join(lines) + "\n").encode()


def write_tables(results: Sequence[Mapping[str, Any]], axes: Sequence[str], out: Path) -> tuple[Path, Path]:
    """Write ``results.csv`` and ``results.md`` under ``out`` (atomically)."""
    header, rows = results_table(results, axes)
    atomic_write_bytes(out / "results.csv", _csv_bytes(header, rows))
    intro = [f"Metrics scored on the {scored_split(results)} split (evaluate.json's eval_split)."]
    atomic_write_bytes(out / "results.md", _markdown(header, rows, intro))
    return out / "results.csv", out / "results.md"


def write_seed_tables(
    results: Sequence[Mapping[str, Any]], axes: Sequence[str], seeds: Sequence[int], out: Path
) -> tuple[Path, Path]:
    """Write ``runs.csv`` (one row per run and seed), ``results.csv`` (per run: every metric's mean, SD and n over
    seeds, numbers) and ``results.md`` (the same as mean ± SD) under ``out``, atomically; return the last two."""
    names = sorted({m for r in results for m in r.get("metrics", {})})
    header = ["run", *axes, "seed", "status", "parameters", "train_seconds", "eval_seconds", *names]
    rows = []
    for r in results:
        metrics = r.get("metrics", {})
        rows.append(
            [r["run"], *(r.get("settings", {}).get(a, "(default)") for a in axes), r.get("seed"), r.get("status"),
             *("" if r.get(k) is None else r[k] for k in ("parameters", "train_seconds", "eval_seconds")),
             *("" if metrics.get(m) is None else metrics[m] for m in names)]
        )  # fmt: skip
    atomic_write_bytes(out / "runs.csv", _csv_bytes(header, rows))

    header = ["run", *axes, "parameters", "train_seconds", "eval_seconds", "status", "n"]
    header += [f"{m}_{stat}" for m in names for stat in ("mean", "sd", "n")]
    rows = []
    for row in summarise_seeds(results):
        cells = [row["run"], *(row["settings"].get(a, "(default)") for a in axes)]
        cells += ["" if row[k] is None else row[k] for k in ("parameters", "train_seconds", "eval_seconds")]
        cells += [row["status"], row["ok"]]
        cells += ["" if v is None else v for m in names for v in row["metrics"][m]]
        rows.append(cells)
    atomic_write_bytes(out / "results.csv", _csv_bytes(header, rows))

    header, rows = seed_results_table(results, axes)
    intro = [
        f"Metrics scored on the {scored_split(results)} split (evaluate.json's eval_split), over seeds "
        f"{list(seeds)}. Cells: mean ± sample SD (n - 1) over the seeds that finished, each seed's figure being its "
        "mean over the evaluated cases; n: seeds that finished; times: means. Per-seed figures: runs.csv."
    ]
    atomic_write_bytes(out / "results.md", _markdown(header, rows, intro))
    return out / "results.csv", out / "results.md"


def require_ids(train_config: Path, ids: Sequence[str], why: str) -> None:
    """Refuse a bundle whose ``train.json`` defines none of ``ids`` (before any run starts): a run sets them."""
    if not train_config.is_file():
        raise ValueError(f"{train_config.parent.parent}: not a bundle folder (no configs/{train_config.name})")
    content = read_structured(train_config)
    missing = [i for i in ids if not isinstance(content, dict) or i not in content]
    if missing:
        raise ValueError(f"{train_config}: defines no {', '.join(repr(i) for i in missing)}; {why}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.ablation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle-root", required=True, help="the bundle folder (holding configs/)")
    parser.add_argument("--grid", required=True, help="grid file, JSON or YAML")
    parser.add_argument("--out", required=True, help="folder for the runs and the results table")
    parser.add_argument("--base", action="append", default=[], help="extra overlay file stacked on every run")
    parser.add_argument("--mode", choices=MODES, help="override the grid's mode")
    parser.add_argument("--axes", nargs="+", help="only these axes")
    parser.add_argument(
        "--seeds", type=int, default=1, help="train every run with seeds 0 .. N-1 (default 1: the bundle's own seed)"
    )
    parser.add_argument(
        "--curves", nargs="+", default=[], metavar="TAG", help="TensorBoard scalar tags to plot over the runs"
    )
    parser.add_argument("--figure-note", help="free text printed under the curves' title (modalities, data, ...)")
    parser.add_argument(
        "--footnote", default="synthetic phantoms", help="the curves' footnote: the data (default: %(default)s)"
    )
    parser.add_argument(
        "--record",
        help="folder that keeps every finished run's results and curves (no weights) and restores them on a machine "
        "that lacks them (a study continued over several machines)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their overlays, run nothing")
    args = parser.parse_args(argv)

    bundle_root = Path(args.bundle_root)
    if not (bundle_root / "configs").is_dir():
        parser.error(f"{bundle_root}: not a bundle folder (no configs/)")
    try:
        if args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
        if args.seeds > 1:
            require_ids(bundle_root / "configs" / "train.json", ["seed"], "--seeds sets it per run")
        grid = load_grid(args.grid, bundle_root)
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
    seeds = list(range(args.seeds)) if args.seeds > 1 else []
    if seeds:
        runs = with_seeds(runs, seeds)
    if args.dry_run:
        for run in runs:
            print(run.label, json.dumps(run.overlay, sort_keys=True))
        return 0
    out = Path(args.out)
    results = run_study(bundle_root, runs, out, record=args.record)
    axes = [a for a in grid["axes"] if not args.axes or a in args.axes]
    if seeds:
        csv_path, md_path = write_seed_tables(results, axes, seeds, out.resolve())
        print(md_path.read_text(), end="")
    else:
        csv_path, md_path = write_tables(results, axes, out)
    print(f"{len(results)} runs; table: {md_path} and {csv_path}")
    if args.curves:
        from common.curves import write_curves

        written = write_curves(
            results, args.curves, out.resolve(), bundle_root.resolve(), note=args.figure_note, footnote=args.footnote
        )
        for png in written:
            print(f"curves: {png} and {png.with_suffix('.csv')}")
    failed = [
        r["run"] + ("" if r.get("seed") is None else f" seed {r['seed']}") for r in results if r.get("status") != "ok"
    ]
    if failed:
        print(f"failed runs: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
