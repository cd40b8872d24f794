"""FCT next to MONAI BasicUNet 2D on Visible Korean phantoms: the Dice each reaches with the same training budget.

Part of ``make bench-full`` (about 3.5 minutes; ``make bench`` has a 20-minute budget and measures speed and memory:
the training step of both networks at the bundle's 256 x 256 input is in :mod:`bench.training`).

Both networks are trained and evaluated through ``python -m monai.bundle run`` with the bundle's own
``configs/train.json`` / ``configs/evaluate.json`` (BasicUNet adds ``configs/basicunet.json``) and one small overlay:
the same phantoms, split, preprocessing and augmentation, loss, optimizer, schedule, number of steps and seed. Only
the network differs. FCT runs at a reduced width (the demo's filters 8-128, one head: 1.6 M parameters, next to
BasicUNet's 2.0 M) so that the run fits the benchmark's minutes on two CPU cores.

The Dice is scored on held-out phantoms (the prepared split's ``quality_check`` slices: in neither training nor
validation), with the final weights (validation runs once, after the last epoch, so nothing is selected on it).
Phantom Dice says the pipeline learns; it says nothing about real Visible Korean data.

    python -m bench.run --only bench.fct_comparison
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass
from pathlib import Path

from bench.harness import REPO_ROOT, Context, figure
from bench.training import Phantoms, prepare_phantoms
from common.bundle_run import monai_bundle_run
from common.io import atomic_write_json
from common.metrics.summary import DELIMITER

BUNDLE = REPO_ROOT / "bundles" / "fct_visible_korean"
COMMAND = "make bench-full  (or: .venv/bin/python -m bench.run --only bench.fct_comparison)"

# 1/4 of the real 1216 x 2048 slices: the bundle resizes every slice to image_size anyway, and smaller files keep
# loading out of the way of a budget counted in minutes.
PHANTOMS = Phantoms(
    "visible_korean",
    40,
    (304, 512),
    ("common.data.visible_korean", "prepare", "--dataset-dir", "{dataset_dir}", "--out", "{out}",
     "--quality-check", "8", "--block-size", "1", "--val-fraction", "0.1", "--test-fraction", "0"),
)  # fmt: skip
PHANTOMS_QUICK = Phantoms(
    "visible_korean",
    8,
    (64, 96),
    ("common.data.visible_korean", "prepare", "--dataset-dir", "{dataset_dir}", "--out", "{out}",
     "--quality-check", "2", "--block-size", "1", "--test-fraction", "0"),
)  # fmt: skip


@dataclass(frozen=True)
class Budget:
    """What both networks get: input size, epochs, learning rate (the demo's, for short runs)."""

    image_size: int
    epochs: int
    learning_rate: float = 0.003


# 30 epochs of ~15 steps: the whole module took 206 s on two quiet cores. Shorter runs do not get FCT past
# predicting background (4 epochs: bone and muscle Dice 0; BasicUNet 0.62 / 0.87), which would compare nothing.
# BENCH_FCT_EPOCHS changes it.
BUDGET = Budget(image_size=128, epochs=int(os.environ.get("BENCH_FCT_EPOCHS", "30")))
BUDGET_QUICK = Budget(image_size=64, epochs=1)

FCT_SMALL = {"network_def#filters": [8, 16, 32, 64, 128, 64, 32, 16, 8], "network_def#heads": [1] * 9}
NETWORKS = {
    # name: (extra config files, overrides in the Dice run, overrides of the smoke mode)
    "FCT": ((), FCT_SMALL, FCT_SMALL),
    "MONAI BasicUNet 2D": (("basicunet.json",), {}, {"network_def#features": [8, 8, 16, 32, 64, 8]}),
}


def _progress(start: float, message: str) -> None:
    print(f"[fct_comparison +{time.perf_counter() - start:5.0f} s] {message}", flush=True)


def _per_case(eval_dir: Path, metric: str) -> list[float]:
    """Per-case values of ``metric`` from MONAI's ``MetricsSaver`` ``<metric>_raw.csv`` (last column: the mean)."""
    path = eval_dir / f"{metric}_raw.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; evaluate.json's MetricsSaver should have written it.")
    with open(path) as f:
        rows = list(csv.reader(f, delimiter=DELIMITER))
    return [float(row[-1]) for row in rows[1:] if row]


def train_and_evaluate(name: str, budget: Budget, data: dict, out: Path, quick: bool) -> dict:
    """Train ``name`` with the budget through ``monai.bundle run``, evaluate the final weights on held-out slices."""
    extra, overrides, quick_overrides = NETWORKS[name]
    common = {
        "bundle_root": str(BUNDLE),
        "ckpt_dir": str(out / "models"),
        "image_size": budget.image_size,
        "num_workers": 0,
        **data,
        **(quick_overrides if quick else overrides),
    }
    train = {
        **common,
        "output_dir": str(out / "train"),
        "epochs": budget.epochs,
        "warmup_epochs": 1,
        "lr_scheduler#cycles": 0,
        "val_interval": budget.epochs,  # once, at the end: model.pt holds the final weights, nothing is selected
        "learning_rate": budget.learning_rate,
    }
    evaluate = {
        **common,
        "output_dir": str(out / "evaluate"),
        "validate#dataset#data": "$common.data.visible_korean.load_datalist(@datalist_file, 'quality_check')",
    }
    configs = [BUNDLE / "configs" / f for f in ("train.json", *extra)]
    atomic_write_json(out / "train_overlay.json", train)
    atomic_write_json(out / "evaluate_overlay.json", evaluate)
    train_s = monai_bundle_run([*configs, out / "train_overlay.json"], log_file=out / "train.log")
    eval_configs = [BUNDLE / "configs" / "train.json", BUNDLE / "configs" / "evaluate.json"]
    eval_configs += [BUNDLE / "configs" / f for f in extra]
    monai_bundle_run([*eval_configs, out / "evaluate_overlay.json"], log_file=out / "evaluate.log")
    return {
        "train_s": train_s,
        "bone": _per_case(out / "evaluate", "val_dice_bone"),
        "muscle": _per_case(out / "evaluate", "val_dice_muscle"),
    }


def _train_command(name: str) -> str:
    extra = "".join(f",'configs/{f}'" for f in NETWORKS[name][0])
    return (
        f"{COMMAND}; per network: python -m monai.bundle run --config_file \"['configs/train.json'{extra},"
        "'<overlay>']\" then evaluate.json, overlays under bench/results/work/fct_comparison/"
    )


def run(ctx: Context) -> list[dict]:
    """Held-out bone and muscle Dice of FCT and BasicUNet after the same training."""
    start = time.perf_counter()
    spec, budget = (PHANTOMS_QUICK, BUDGET_QUICK) if ctx.quick else (PHANTOMS, BUDGET)
    _progress(start, f"visible_korean phantoms {spec.size[0]}x{spec.size[1]}, {spec.cases} slices")
    _, prepared = prepare_phantoms(spec, ctx.work_dir.resolve())
    data = {"datalist_file": str(prepared / "datalist.json")}
    root = (
        ctx.work_dir.resolve()
        / "fct_comparison"
        / ("quick" if ctx.quick else f"{budget.image_size}px-{budget.epochs}ep")
    )
    figures = []
    results = {}
    for name in NETWORKS:
        _progress(start, f"{name}: train {budget.epochs} epochs at {budget.image_size}^2, then evaluate")
        out = root / name.replace(" ", "_")
        results[name] = train_and_evaluate(name, budget, data, out, ctx.quick)
        _progress(start, f"{name}: trained in {results[name]['train_s']:.0f} s")
    setting = f"{budget.image_size}x{budget.image_size}, {budget.epochs} epochs, same data, pipeline, loss, schedule"
    for name, r in results.items():
        width = "reduced width: filters 8-128, 1 head, 1.6 M parameters" if name == "FCT" else "2.0 M parameters"
        if ctx.quick:
            width = "smoke mode: tiny widths"
        for organ in ("bone", "muscle"):
            figures.append(
                figure("fct_comparison", "fct_visible_korean", f"{name}: held-out {organ} Dice ({setting})", "Dice",
                       r[organ], reference=None if name != "FCT" else
                       f"MONAI BasicUNet 2D: held-out {organ} Dice ({setting})",
                       command=_train_command(name),
                       notes=f"{width}; one value per held-out phantom slice; training took {r['train_s']:.0f} s "
                       "wall (monai.bundle run, incl. start-up); synthetic phantoms, not real data")
            )  # fmt: skip
    _progress(start, "done")
    return figures
