"""Train, evaluate and run every bundle briefly on synthetic phantoms, and write a report.

    python -m ci.demo [--out demo_output] [--bundles-dir bundles] [--data-dir data/synthetic]

Every bundle present under ``bundles/`` joins by carrying ``configs/demo.json``::

    {
        "synthetic": {"dataset": "brats", "cases": 8, "size": [64, 64, 48], "seed": 0},
        "prepare": [["python", "-m", "common.data.brats", "make-split", "--dataset-dir", "{dataset_dir}", ...]],
        "train": {"epochs": 3},            MONAI config overlay stacked on train.json
        "evaluate": {},                    overlay stacked on train.json + evaluate.json
        "inference": {},                   overlay stacked on inference.json
        "overlay": {"cases": [...], "image": "{dataset_dir}/{case}/...", "label": "...", "pred": "{output_dir}/..."},
        "demo_only": {"prepare": [...], "train": {...}, "evaluate": {...}, "inference": {...}}
    }

``synthetic`` holds the arguments of ``python -m common.synthetic``; the phantoms go to a folder named after
them, so bundles asking for the same data share it and a second run reuses it. ``prepare`` (optional) lists
commands run from the repository root, with ``{dataset_dir}``, ``{work_dir}`` and ``{bundle_root}`` filled in.
Every overlay also receives the standard ids ``bundle_root``, ``dataset_dir``, ``ckpt_dir``, ``output_dir`` and
``demo_work_dir``, so a section can refer to prepared files as ``"$@demo_work_dir + '/datalist.json'"``. The
three stages run as ``python -m monai.bundle run`` from the repository root, exactly as the README tells users to.

The sections above also serve the shared checks (``tests/``), which run every bundle on them with training cut
short. ``demo_only`` (optional) holds what the demo adds on top so that a newcomer sees the method do its job, and
which would make those checks too slow: more ``prepare`` commands (run after the others; e.g. training the base
model whose predictions a refiner learns from) and overlays stacked on each stage's section.

Output: ``<out>/report.md``; per bundle ``<out>/<name>/metrics.json`` (the evaluation's MetricsSaver files, read by
``common.metrics.summarize_metrics``: a metric without any finite case is null and the report prints it as
``n/a (0 of N cases)``),
``training_curve.png`` (from the TensorBoard events of training), ``overlay_<case>.png`` (image, ground truth,
prediction side by side), and ``logs/``. The numbers are phantom results and say nothing about real data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ci import zoo
from common.io import atomic_write_json
from common.metrics import format_metric, summarize_metrics

STAGES = ("train", "evaluate", "inference")
STAGE_CONFIGS = {
    "train": ["train.json"],
    "evaluate": ["train.json", "evaluate.json"],
    "inference": ["inference.json"],
}


def synthetic_dir(data_root: Path, spec: dict) -> Path:
    """Folder of the phantoms that ``spec`` describes: the same arguments give the same folder."""
    parts = [spec["dataset"]]
    for key in sorted(k for k in spec if k != "dataset"):
        value = spec[key]
        value = "x".join(map(str, value)) if isinstance(value, list) else value
        parts.append(f"{key}{value}")
    return data_root / "-".join(str(p) for p in parts)


def generate_phantoms(spec: dict, out: Path, log_file: Path) -> None:
    cmd = [sys.executable, "-m", "common.synthetic", spec["dataset"], "--out", str(out)]
    for key, value in spec.items():
        if key != "dataset":
            cmd += [f"--{key}", *map(str, value if isinstance(value, list) else [value])]
    _run_logged(cmd, log_file)


def with_demo_only(spec: dict) -> dict:
    """The spec as the demo runs it: its ``demo_only`` commands after ``prepare``, its overlays on the stages'."""
    extra = spec.get("demo_only", {})
    merged = {**spec, "prepare": [*spec.get("prepare", []), *extra.get("prepare", [])]}
    for stage in STAGES:
        merged[stage] = {**spec.get(stage, {}), **extra.get(stage, {})}
    return merged


def prepare_data(
    spec: dict, dataset_dir: Path, work_dir: Path, log_file: Path, bundle_root: Path | None = None
) -> None:
    """Generate (or reuse) the phantoms of a demo spec and run its ``prepare`` commands."""
    generate_phantoms(spec["synthetic"], dataset_dir, log_file)
    for command in spec.get("prepare", []):
        fill = {"dataset_dir": dataset_dir, "work_dir": work_dir, "bundle_root": bundle_root}
        cmd = [sys.executable if c == "python" else c.format(**fill) for c in command]
        _run_logged(cmd, log_file)


def _run_logged(cmd: list[str], log_file: Path) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, cwd=zoo.REPO_ROOT, env=zoo.bundle_env(), stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "\n".join(log_file.read_text().splitlines()[-30:])
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode} (log: {log_file})\n{tail}")


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the TensorBoard event files under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(log_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})  # one file: the folder holds several
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            series.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return {tag: sorted(set(points)) for tag, points in series.items()}


def plot_training_curve(series: dict[str, list[tuple[int, float]]], title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = {t: s for t, s in series.items() if "loss" in t.lower()}
    others = {t: s for t, s in series.items() if t not in losses}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, group, xlabel in ((axes[0], losses, "iteration"), (axes[1], others, "epoch")):
        for tag, points in group.items():
            ax.plot(*zip(*points, strict=True), label=tag, marker="." if len(points) < 30 else None)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if group:
            ax.legend(fontsize=8)
    axes[0].set_title("training loss")
    axes[1].set_title("validation")
    fig.suptitle(f"{title} (synthetic phantoms)")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def _load_array(path: Path):
    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"{path}: expected by demo.json overlay, not found")
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return np.asarray(nib.load(str(path)).dataobj)
    from PIL import Image

    return np.asarray(Image.open(path))


def plot_overlay(image_path: Path, label_path: Path, pred_path: Path, title: str, out: Path) -> None:
    """Image, ground truth and prediction side by side, on the slice with the most ground truth (3D)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    image, label, pred = (_load_array(p) for p in (image_path, label_path, pred_path))
    label, pred = np.squeeze(label), np.squeeze(pred)
    if label.shape != pred.shape:
        raise ValueError(f"{pred_path}: prediction shape {pred.shape} differs from ground truth {label.shape}")
    is_rgb = image.ndim == 3 and image.shape[-1] in (3, 4) and label.ndim == 2
    if label.ndim == 3:  # volumes: the axial slice (last axis) where the ground truth is largest
        z = int(np.argmax((label > 0).reshape(-1, label.shape[-1]).sum(0)))
        image, label, pred = np.squeeze(image)[..., z], label[..., z], pred[..., z]
        image, label, pred = np.rot90(image), np.rot90(label), np.rot90(pred)
    if not is_rgb:
        low, high = np.percentile(image, (1, 99))
        image = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    n_classes = int(max(label.max(), pred.max(), 1))
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.7))
    for ax, (name, mask) in zip(axes, (("image", None), ("ground truth", label), ("prediction", pred)), strict=True):
        ax.imshow(image, cmap=None if is_rgb else "gray")
        if mask is not None:
            ax.imshow(np.ma.masked_equal(mask, 0), cmap="tab10", vmin=0, vmax=max(n_classes, 9), alpha=0.55)
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def run_bundle(
    bundle: Path,
    out_root: Path,
    data_root: Path,
    step: str = "",
    train_overrides: dict | None = None,
    demo_only: bool = True,
) -> dict:
    """All stages of one bundle's demo; returns the summary that the report shows.

    ``train_overrides`` go on top of the demo spec's train overlay (the tests shorten training with them);
    ``demo_only=False`` leaves out the spec's ``demo_only`` section (the tests' shared checks).
    """
    spec = zoo.load_json(bundle / "configs" / "demo.json")
    if demo_only:
        spec = with_demo_only(spec)
    spec["train"] = {**spec.get("train", {}), **(train_overrides or {})}
    out = out_root / bundle.name
    logs = out / "logs"
    dataset_dir = synthetic_dir(data_root, spec["synthetic"]).resolve()
    work_dir = (out / "work").resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"bundle": bundle.name, "synthetic": spec["synthetic"], "dataset_dir": str(dataset_dir)}
    summary["version"] = zoo.load_json(bundle / "configs" / "metadata.json").get("version")
    timings = summary.setdefault("timings_s", {})

    start = time.perf_counter()
    print(f"{step} {bundle.name}: synthetic {spec['synthetic']['dataset']} phantoms -> {dataset_dir}", flush=True)
    prepare_data(spec, dataset_dir, work_dir, logs / "data.log", bundle.resolve())
    timings["data"] = round(time.perf_counter() - start, 1)

    for stage in STAGES:
        stage_out = (out / stage).resolve()
        # this run's outputs only: an inference folder holding an earlier model's predictions is refused otherwise
        shutil.rmtree(stage_out, ignore_errors=True)
        overlay = {
            "bundle_root": str(bundle.resolve()),
            "dataset_dir": str(dataset_dir),
            "ckpt_dir": str((out / "models").resolve()),
            "output_dir": str(stage_out),
            "demo_work_dir": str(work_dir),
            **spec.get(stage, {}),
        }
        overlay_file = work_dir / f"demo_{stage}.json"
        atomic_write_json(overlay_file, overlay)
        configs = [bundle / "configs" / name for name in STAGE_CONFIGS[stage]] + [overlay_file]
        print(f"{step} {bundle.name}: {stage} (log: {logs / (stage + '.log')})", flush=True)
        timings[stage] = round(zoo.monai_bundle_run(configs, log_file=logs / f"{stage}.log"), 1)
        print(f"{step} {bundle.name}: {stage} done in {timings[stage]:.1f} s", flush=True)

    evaluation = summarize_metrics(out / "evaluate")  # MONAI's 0 for a metric without any finite case becomes None
    summary["metrics"] = evaluation["metrics"]
    summary["metric_counts"] = evaluation["counts"]
    summary["cases"] = evaluation["cases"]
    written = out / "evaluate" / "metrics_summary.json"  # the bundle's own summary names the split it scored
    summary["split"] = json.loads(written.read_text()).get("split") if written.is_file() else None
    atomic_write_json(out / "metrics.json", summary)
    plot_training_curve(read_scalars(out / "train"), bundle.name, out / "training_curve.png")
    overlay_spec = spec["overlay"]
    summary["overlays"] = []
    for case in overlay_spec["cases"]:
        paths = {
            key: Path(
                overlay_spec[key].format(
                    case=case, dataset_dir=dataset_dir, work_dir=work_dir, output_dir=(out / "inference").resolve()
                )
            )
            for key in ("image", "label", "pred")
        }
        png = out / f"overlay_{case}.png"
        title = f"{bundle.name}: synthetic phantom {case}, not real data"
        plot_overlay(paths["image"], paths["label"], paths["pred"], title, png)
        summary["overlays"].append(png.name)
    return summary


def write_report(out_root: Path, summaries: list[dict], failures: dict[str, str]) -> Path:
    import monai
    import torch

    lines = [
        "# Bundle zoo demo",
        "",
        "Every bundle trained, was evaluated and ran inference through `python -m monai.bundle run`, on",
        "**synthetic phantoms** generated by `python -m common.synthetic`, with a budget that lets each method do",
        "its job on them. Every figure is a phantom result, on the held-out phantoms named in the `scored` column;",
        "none is a result on real data. Produced by `make demo` (`python -m ci.demo`).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), MONAI {monai.__version__}.",
        "",
    ]
    if not summaries and not failures:
        lines += ["No bundle is present under `bundles/` yet.", ""]
    if summaries:
        lines += ["| bundle | version | data (s) | train (s) | evaluate (s) | inference (s) | scored | metrics |"]
        lines += ["|---" * 8 + "|"]
        for s in summaries:
            t = s["timings_s"]
            counts = s.get("metric_counts", {})
            metrics = ", ".join(
                f"{k} {format_metric(v, counts.get(k), s.get('cases'), digits=3)}" for k, v in s["metrics"].items()
            )
            lines.append(
                f"| {s['bundle']} | {s['version']} | {t['data']} | {t['train']} | {t['evaluate']} "
                f"| {t['inference']} | {' '.join(str(w) for w in (s.get('cases'), s.get('split')) if w)} cases "
                f"| {metrics} |"
            )
        lines.append("")
    for name, error in failures.items():
        lines += [f"## {name}: FAILED", "", "```", error, "```", ""]
    for s in summaries:
        name = s["bundle"]
        lines += [f"## {name}", "", f"Phantoms: `{json.dumps(s['synthetic'])}`.", ""]
        lines += [f"![training curve]({name}/training_curve.png)", ""]
        lines += [f"![{png}]({name}/{png})" for png in s["overlays"]] + [""]
    report = out_root / "report.md"
    report.write_text("\n".join(lines))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=zoo.REPO_ROOT / "demo_output")
    parser.add_argument("--bundles-dir", type=Path, default=zoo.BUNDLES_DIR)
    parser.add_argument("--data-dir", type=Path, default=zoo.REPO_ROOT / "data" / "synthetic")
    args = parser.parse_args(argv)
    bundles = zoo.find_bundles(args.bundles_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"demo: {len(bundles)} bundle(s) in {args.bundles_dir}: {', '.join(b.name for b in bundles) or 'none'}")
    summaries, failures = [], {}
    start = time.perf_counter()
    for i, bundle in enumerate(bundles, 1):
        try:
            summaries.append(run_bundle(bundle, args.out, args.data_dir, f"[{i}/{len(bundles)}]"))
        except Exception as e:  # one broken bundle must not hide the others' results
            failures[bundle.name] = f"{type(e).__name__}: {e}"
            print(f"[{i}/{len(bundles)}] {bundle.name}: FAILED {failures[bundle.name]}", flush=True)
    report = write_report(args.out, summaries, failures)
    print(f"demo: report at {report} ({time.perf_counter() - start:.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
