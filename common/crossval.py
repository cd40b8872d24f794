"""Cross-validation as one command: every fold and seed trained and scored on the held-out test cases, mean ± SD.

    python -m common.crossval --bundle-root bundles/cohra_unet_brats --folds 5 --seeds 3 \\
        --base my_data.json --out runs/cohra_cv [--variants variants.json] [--ensemble] [--dry-run]

Fold ``k`` of a run is the bundle's ``fold`` (the model-selection fold of its split file: BraTS split files from
``python -m common.data.brats make-split --folds K``), seed ``s`` its ``seed`` (``monai.utils.set_determinism``).
Each of the ``folds x seeds`` runs is trained with ``configs/train.json`` and scored with ``configs/evaluate.json``
on the split the bundle's ``eval_split`` names, the held-out test cases by default, through
``python -m monai.bundle run`` from the bundle root: the machinery of the ablation runner (:mod:`common.ablation`),
so a finished run is reused when the command is repeated, a failed one is recorded and the others go on.

Written to ``--out``:

- ``fold<k>_seed<s>/``: each run's overlay, logs, ``models/`` and ``eval/`` (``metrics_summary.json`` and the per-case
  CSV files of ``MetricsSaver``);
- ``runs.csv``: one row per run, every metric of its evaluation;
- ``crossval.csv`` and ``crossval.md``: one row per metric (region), the mean ± SD over the seeds of every fold,
  then the pooled mean ± SD over all runs and the number of runs that had the metric. The SD is the sample SD
  (``n - 1``) over runs, each run's figure being its mean over the evaluated cases. A metric no run could compute
  prints ``n/a``, never a number.

Evaluation variants (``--variants variants.json --ensemble``) score the same trained models again, without
retraining: ``variants.json`` maps a name to an overlay stacked on each run's evaluation (e.g.
``{"tta": {"tta_mirroring": true}, "small_et_10": {"postprocess_small_et": 10}}``), and ``--ensemble`` scores, per
seed, the average of that seed's fold models (``ensemble_checkpoints``). Their results go to
``<run>/eval_<variant>/`` and ``ensemble_seed<s>/``, and ``variants.csv`` / ``variants.md`` set every arm side by
side as mean ± SD **over seeds**, a seed's figure for a single-model arm being the mean over its folds, so that
the ensemble (one model per seed) and the single models are compared on the same footing.

A bundle takes part when its ``train.json`` defines ``fold`` and ``seed``; the others are refused before any run.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.ablation import Run, finite, format_mean_sd, mean_sd, read_structured, run_study, scored_split
from common.bundle_run import monai_bundle_run
from common.io import atomic_write_bytes, atomic_write_json

__all__ = ["crossval_runs", "evaluate_variants", "summarise", "write_tables", "write_variant_tables", "main"]

REQUIRED_IDS = ("fold", "seed")


def crossval_runs(folds: int, seeds: Sequence[int], base: Mapping[str, Any]) -> list[Run]:
    """One run per (fold, seed): ``base`` plus ``{"fold": k, "seed": s}``, fold-major."""
    return [
        Run(f"fold{k}_seed{s}", {"fold": str(k), "seed": str(s)}, {**base, "fold": k, "seed": s})
        for k in range(folds)
        for s in seeds
    ]


def summarise(results: Sequence[Mapping[str, Any]], folds: int) -> list[dict[str, Any]]:
    """Per metric: ``{"metric", "folds": [(mean, sd, n) per fold], "pooled": (mean, sd, n), "runs": total}``.

    Only runs that finished count; a run whose evaluation left a metric empty (``null``) does not count for it.
    """
    ok = [r for r in results if r.get("status") == "ok"]
    names = sorted({m for r in ok for m in r.get("metrics", {})})
    rows = []
    for name in names:
        per_fold = []
        for k in range(folds):
            values = [
                r["metrics"][name] for r in ok if r["settings"]["fold"] == str(k) and finite(r["metrics"].get(name))
            ]
            per_fold.append((*mean_sd(values), len(values)))
        pooled = [r["metrics"][name] for r in ok if finite(r["metrics"].get(name))]
        rows.append({"metric": name, "folds": per_fold, "pooled": (*mean_sd(pooled), len(pooled)), "runs": len(ok)})
    return rows


def write_tables(
    results: Sequence[Mapping[str, Any]], folds: int, seeds: Sequence[int], out: Path, split: str
) -> tuple[Path, Path]:
    """Write ``runs.csv``, ``crossval.csv`` and ``crossval.md`` under ``out`` (atomically); return the last two."""
    metric_names = sorted({m for r in results for m in r.get("metrics", {})})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", "fold", "seed", "status", "train_seconds", "eval_seconds", *metric_names])
    for r in results:
        metrics = r.get("metrics", {})
        writer.writerow(
            [r["run"], r["settings"]["fold"], r["settings"]["seed"], r.get("status"), r.get("train_seconds"),
             r.get("eval_seconds"), *("" if metrics.get(m) is None else metrics[m] for m in metric_names)]
        )  # fmt: skip
    atomic_write_bytes(out / "runs.csv", buffer.getvalue().encode())

    rows = summarise(results, folds)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    fold_columns = [f"fold{k}_{stat}" for k in range(folds) for stat in ("mean", "sd", "n")]
    writer.writerow(["metric", *fold_columns, "pooled_mean", "pooled_sd", "pooled_n"])
    for row in rows:
        cells = [v for stats in [*row["folds"], row["pooled"]] for v in stats]
        writer.writerow([row["metric"], *("" if v is None else v for v in cells)])
    atomic_write_bytes(out / "crossval.csv", buffer.getvalue().encode())

    header = ["metric", *(f"fold {k}" for k in range(folds)), f"pooled ({folds} folds x {len(seeds)} seeds)", "n"]
    lines = [
        f"Cross-validation: {folds} folds x seeds {list(seeds)}; every run scored on the {split} split "
        f"(evaluate.json's eval_split). Cells: mean ± sample SD over runs of each run's mean over cases; "
        f"n: runs that had the metric.",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for row in rows:
        cells = [format_mean_sd(mean, sd, n, len(seeds)) for mean, sd, n in row["folds"]]
        cells.append(format_mean_sd(*row["pooled"], row["runs"]))
        lines.append(f"| {row['metric']} | " + " | ".join(cells) + f" | {row['pooled'][2]} |")
    failed = [r["run"] for r in results if r.get("status") != "ok"]
    if failed:
        lines += ["", f"Failed runs (left out): {', '.join(failed)}; see their train.log / evaluate.log."]
    atomic_write_bytes(out / "crossval.md", ("\n".join(lines) + "\n").encode())
    return out / "crossval.csv", out / "crossval.md"


SINGLE = "single model"
ENSEMBLE = "fold ensemble"


def _evaluation(
    bundle_root: Path, stack: Sequence[Path], overlay: dict[str, Any], out_dir: Path, log: Any
) -> dict[str, float | None] | None:
    """Evaluate ``stack`` + ``overlay`` into ``out_dir`` (reused when done before with the same overlay); the
    metrics, or ``None`` when the evaluation failed (its log stays in ``out_dir``)."""
    record_file = out_dir / "result.json"
    if record_file.is_file():
        previous = json.loads(record_file.read_text())
        if previous.get("status") == "ok" and previous.get("overlay") == overlay:
            log(f"{out_dir.name}: done before, reusing {record_file}")
            return previous["metrics"]
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "overlay.json", overlay)
    record: dict[str, Any] = {"overlay": overlay}
    try:
        monai_bundle_run([*stack, out_dir / "overlay.json"], cwd=bundle_root, log_file=out_dir / "evaluate.log")
        record["metrics"] = json.loads((Path(overlay["output_dir"]) / "metrics_summary.json").read_text())["metrics"]
        record["status"] = "ok"
    except Exception as e:  # one failed evaluation must not stop the others
        record["status"], record["error"] = "failed", str(e).splitlines()[0]
        log(f"{out_dir}: FAILED, {record['error']}")
    atomic_write_json(record_file, record)
    return record.get("metrics")


def evaluate_variants(
    bundle_root: str | os.PathLike,
    results: Sequence[Mapping[str, Any]],
    variants: Mapping[str, Mapping[str, Any]],
    ensemble: bool,
    out: str | os.PathLike,
    log: Any = print,
) -> dict[str, dict[int, list[dict[str, float | None]]]]:
    """Score the trained runs again under each variant overlay, and each seed's fold ensemble.

    Returns ``{arm: {seed: [metrics of each evaluation]}}`` with the arms :data:`SINGLE` (the runs' own
    evaluations), every variant, and :data:`ENSEMBLE` when asked for.
    """
    bundle_root, out = Path(bundle_root).resolve(), Path(out).resolve()
    stack = [bundle_root / "configs" / "train.json", bundle_root / "configs" / "evaluate.json"]
    ok = [r for r in results if r.get("status") == "ok"]
    arms: dict[str, dict[int, list[dict[str, float | None]]]] = {SINGLE: {}}
    for r in ok:
        arms[SINGLE].setdefault(int(r["settings"]["seed"]), []).append(r["metrics"])
    for name, variant in variants.items():
        arms[name] = {}
        for r in ok:
            run_dir = out / r["run"]
            overlay = {**r["overlay"], **variant, "output_dir": str(run_dir / f"eval_{name}")}
            log(f"{r['run']}: evaluating variant {name} ...")
            metrics = _evaluation(bundle_root, stack, overlay, run_dir / f"eval_{name}", log)
            if metrics is not None:
                arms[name].setdefault(int(r["settings"]["seed"]), []).append(metrics)
    if ensemble:
        arms[ENSEMBLE] = {}
        for seed in sorted({int(r["settings"]["seed"]) for r in ok}):
            members = sorted(
                (r for r in ok if int(r["settings"]["seed"]) == seed), key=lambda r: int(r["settings"]["fold"])
            )
            run_dir = out / f"ensemble_seed{seed}"
            checkpoints = [str(Path(r["overlay"]["ckpt_dir"]) / "model.pt") for r in members]
            overlay = {
                **members[0]["overlay"],
                "ensemble_checkpoints": checkpoints,
                "output_dir": str(run_dir / "eval"),
            }
            log(f"seed {seed}: evaluating the ensemble of {len(members)} fold models ...")
            metrics = _evaluation(bundle_root, stack, overlay, run_dir, log)
            if metrics is not None:
                arms[ENSEMBLE][seed] = [metrics]
    return arms


def write_variant_tables(
    arms: Mapping[str, Mapping[int, Sequence[Mapping[str, float | None]]]], out: Path, split: str
) -> tuple[Path, Path]:
    """``variants.csv`` and ``variants.md``: per metric, each arm's mean ± SD over seeds (module docstring)."""
    names = sorted({m for per_seed in arms.values() for runs in per_seed.values() for r in runs for m in r})
    stats: dict[str, dict[str, tuple[float | None, float | None, int]]] = {}
    for arm, per_seed in arms.items():
        for name in names:
            seed_means = []
            for runs in per_seed.values():
                values = [r[name] for r in runs if finite(r.get(name))]
                if values:
                    seed_means.append(statistics.fmean(values))
            stats.setdefault(name, {})[arm] = (*mean_sd(seed_means), len(seed_means))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["metric", *(f"{arm} {stat}" for arm in arms for stat in ("mean", "sd", "seeds"))])
    for name in names:
        cells = [v for arm in arms for v in stats[name][arm]]
        writer.writerow([name, *("" if v is None else v for v in cells)])
    atomic_write_bytes(out / "variants.csv", buffer.getvalue().encode())
    seeds = max((len(per_seed) for per_seed in arms.values()), default=0)
    lines = [
        f"Evaluation variants of the same trained models, scored on the {split} split. Cells: mean ± sample SD "
        "over seeds; a seed's figure is the mean over its folds (single-model arms) or its fold ensemble's.",
        "",
        "| metric | " + " | ".join(arms) + " |",
        "|---|" + "---:|" * len(arms),
    ]
    for name in names:
        lines.append(
            f"| {name} | " + " | ".join(format_mean_sd(*stats[name][arm], seeds, "seeds") for arm in arms) + " |"
        )
    atomic_write_bytes(out / "variants.md", ("\n".join(lines) + "\n").encode())
    return out / "variants.csv", out / "variants.md"


def _check_bundle(bundle_root: Path) -> None:
    """Refuse a bundle whose train.json lacks the ids a cross-validation run sets (before any run starts)."""
    train = bundle_root / "configs" / "train.json"
    if not train.is_file():
        raise ValueError(f"{bundle_root}: not a bundle folder (no configs/train.json)")
    missing = [i for i in REQUIRED_IDS if i not in json.loads(train.read_text())]
    if missing:
        raise ValueError(f"{train}: defines no {', '.join(repr(i) for i in missing)}; cross-validation sets them")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.crossval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle-root", required=True, help="the bundle folder (holding configs/)")
    parser.add_argument("--folds", type=int, required=True, help="number of folds: runs use fold 0 .. K-1")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds per fold: seeds 0 .. S-1 (default 1)")
    parser.add_argument("--base", action="append", default=[], help="overlay file stacked on every run (data, budget)")
    parser.add_argument("--out", required=True, help="folder for the runs and the tables")
    parser.add_argument("--variants", help="JSON file: variant name -> overlay stacked on each run's evaluation")
    parser.add_argument("--ensemble", action="store_true", help="also score each seed's fold ensemble")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their overlays, run nothing")
    args = parser.parse_args(argv)

    bundle_root = Path(args.bundle_root)
    try:
        if args.folds < 2 or args.seeds < 1:
            raise ValueError(f"--folds must be >= 2 and --seeds >= 1, got {args.folds} and {args.seeds}")
        _check_bundle(bundle_root)
        base: dict[str, Any] = {}
        for extra in args.base:
            overlay = read_structured(Path(extra))
            if not isinstance(overlay, dict):
                raise ValueError(f"{extra}: expected an object of config overrides")
            base.update(overlay)
        variants = read_structured(Path(args.variants)) if args.variants else {}
        if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
            raise ValueError(f"{args.variants}: expected an object mapping variant names to config overlays")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seeds = list(range(args.seeds))
    runs = crossval_runs(args.folds, seeds, base)
    if args.dry_run:
        for run in runs:
            print(run.name, json.dumps(run.overlay, sort_keys=True))
        return 0
    out = Path(args.out)
    results = run_study(bundle_root, runs, out)
    split = scored_split(results)
    csv_path, md_path = write_tables(results, args.folds, seeds, out, split)
    print(md_path.read_text(), end="")
    print(f"{len(results)} runs; tables: {md_path} and {csv_path}")
    if variants or args.ensemble:
        arms = evaluate_variants(bundle_root, results, variants, args.ensemble, out)
        csv_path, md_path = write_variant_tables(arms, out.resolve(), split)
        print(md_path.read_text(), end="")
        print(f"variants: {md_path} and {csv_path}")
    failed = [r["run"] for r in results if r.get("status") != "ok"]
    if failed:
        print(f"error: {len(failed)} of {len(results)} runs failed: {failed} (logs under {out})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
