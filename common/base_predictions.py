"""RefNet's training data: base-model predictions made by running the ``refnet_synapse`` bundle's configs.

RefNet (seed paper 003) learns to refine what a base model (Swin UNETR) gets wrong, so its training inputs are
base-model predictions of cases whose ground truth is known. Four commands make them::

    python -m common.base_predictions base-oof --bundle-root bundles/refnet_synapse --dataset-dir /data/BTCV \\
        --out runs/base --folds 3 --seeds 0 1 [--in-sample] [--probabilities] [--overlay base_settings.json]
    python -m common.base_predictions base-in-sample --bundle-root bundles/refnet_synapse --dataset-dir /data/BTCV \\
        --out runs/base --seeds 0 1 2 [--probabilities] [--overlay base_settings.json]
    python -m common.base_predictions base-test --bundle-root bundles/refnet_synapse --dataset-dir /data/BTCV \\
        --out runs/base [--seed 0] [--base-ckpt models/base_model.pt] [--probabilities]
    python -m common.base_predictions corrupt-gt --dataset-dir /data/BTCV --out runs/corrupted [--copies 2] \\
        [--probabilities]

- ``base-oof`` splits the 18 Synapse training cases into ``--folds`` folds for every seed in ``--seeds``
  (:func:`common.data.btcv.kfold_cases`; each seed reshuffles the folds, so a case's K predictions come from base
  models trained on different subsets), trains one base model per (fold, seed) with the bundle's
  ``configs/train_base.json`` through ``python -m monai.bundle run`` and predicts the fold it did not train on
  (``configs/predict_base.json``). These out-of-fold predictions have the errors a base model makes on unseen CT,
  which is what RefNet meets at test time (the nnU-Net cascade trains its second stage the same way; research notes
  ``fct_refnet.md`` section 5). ``--in-sample`` adds each model's predictions of its own training cases, which is
  what the paper's Algorithm 1 collects (nearly perfect predictions, so a refiner trained only on them learns
  little more than the identity). K seeds multiply the training data, as in the paper.
- ``base-in-sample`` is the paper's Algorithm 1 as written: K base models (one per seed in ``--seeds``), each
  trained on all training cases, each predicting those same cases. The first seed's model also predicts the test
  cases (the datalist's ``test`` section, what ``base-test`` would write with that seed), so the study of the two
  kinds of training data refines one set of raw test segmentations.
- ``base-test`` trains one base model on all training cases (or takes ``--base-ckpt``) and predicts the 12 test
  cases: the raw segmentations that RefNet refines and the evaluation compares against.
- ``corrupt-gt`` needs no training: it corrupts the ground truth with
  :mod:`common.transforms.refinement` (boundaries moved, organ ids swapped, slices dropped) and writes the results
  as stand-in base predictions (``--probabilities``: with stand-in probabilities, the corrupted map one-hot
  encoded and smoothed). The bundle's demo uses it, because even a toy Swin UNETR takes minutes to train on a CPU,
  too long for the shared one-epoch checks; it is no substitute for real base predictions.

Every command merges what it makes into ``<out>/datalist.json``, the refinement datalist that the bundle's
``train.json`` reads (:func:`common.data.refinement.write_datalist`: a command replaces its own training entries of
an earlier run and keeps the other commands'; the test section is replaced whole); train.json's
``training_sources`` selects among in-sample, out-of-fold and corrupted entries. :mod:`common.data.refinement`
describes the format.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common import records
from common.bundle_run import monai_bundle_run
from common.data.btcv import BTCVDataError, btcv_case_paths, find_raw_data_dir, kfold_cases, synapse_split
from common.data.refinement import NUM_CLASSES, datalist_entry, require_file, write_datalist
from common.engines.checkpoints import CHECKPOINT_GLOB, CheckpointNotFoundError, latest_checkpoint
from common.io import atomic_write_bytes, atomic_write_json

__all__ = ["base_in_sample", "base_oof", "base_test", "corrupt_gt", "main"]

# ---------------------------------------------------------------------------------------------------------------
# base-model predictions through the bundle's configs
# ---------------------------------------------------------------------------------------------------------------


def _read_overlays(files: Sequence[str | os.PathLike]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for f in files:
        path = Path(f)
        try:
            content = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"'{path}': not a readable JSON overlay ({e})") from e
        if not isinstance(content, dict):
            raise ValueError(f"'{path}': expected a JSON object of config overrides")
        merged.update(content)
    return merged


def _bundle_configs(bundle_root: Path) -> tuple[Path, Path]:
    configs = (bundle_root / "configs" / "train_base.json", bundle_root / "configs" / "predict_base.json")
    for config in configs:
        if not config.is_file():
            raise FileNotFoundError(f"'{config}' does not exist: --bundle-root must be the refnet_synapse bundle.")
    return configs


def _train_and_predict(
    bundle_root: Path,
    run_dir: Path,
    prediction_dir: Path,
    settings: dict[str, Any],
    predict_settings: dict[str, Any],
    base_ckpt: Path | None,
    log: Callable[[str], Any],
    record: Path | None = None,
) -> None:
    """Train a base model in ``run_dir`` (unless ``base_ckpt`` is given) and predict into ``prediction_dir``.

    One ``python -m monai.bundle run`` of ``train_base.json`` + ``predict_base.json`` + ``run_dir/overlay.json``;
    when it trains, the overlay's ``run`` is ``train_base.json``'s run followed by ``predict_base.json``'s (read
    from the two files), which saves starting a second process. Log: ``run_dir/run.log``. A run whose
    ``prediction_dir/done.json`` records the same settings is not repeated; a training stopped midway with the same
    settings goes on from its newest epoch checkpoint (``resume``); with ``record`` (a folder of
    :mod:`common.records`), the predictions are kept there too, and restored from there when it holds them for the
    same settings (the base model's weights are not kept: a later run that needs them trains again).
    """
    train_config, predict_config = _bundle_configs(bundle_root)
    settings_record = {
        "settings": settings,
        "predict": predict_settings,
        "base_ckpt": str(base_ckpt) if base_ckpt else None,
    }
    done = prediction_dir / "done.json"
    root = str(Path.cwd().resolve())
    if record is not None and not done.is_file():
        if records.restore(record, prediction_dir, "done.json", lambda recorded: recorded == settings_record, root):
            log(f"{prediction_dir}: restored from the record {record}")
    if done.is_file() and json.loads(done.read_text()) == settings_record:
        log(f"{prediction_dir}: done before, reusing")
        _keep_in_record(prediction_dir, record, root)
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    overlay = {
        **settings,
        **predict_settings,
        "ckpt_dir": str(run_dir / "models"),
        "output_dir": str(run_dir / "logs"),
        "prediction_dir": str(prediction_dir),
        "base_ckpt": str(base_ckpt or run_dir / "models" / "base_model.pt"),
    }
    checkpoint = None
    if base_ckpt is None:
        runs = [json.loads(config.read_text())["run"] for config in (train_config, predict_config)]
        overlay["run"] = [step for run in runs for step in run]
        checkpoint = _interrupted_checkpoint(run_dir, overlay)
        log(f"training base model -> {overlay['base_ckpt']}, then predicting -> {prediction_dir}")
    else:
        log(f"predicting with {base_ckpt} -> {prediction_dir}")
    stack = [train_config, predict_config, run_dir / "overlay.json"]
    if checkpoint is None:
        for stale in (run_dir / "models").glob(CHECKPOINT_GLOB):  # another overlay's: a later resume must not pick them
            stale.unlink()
        atomic_write_json(run_dir / "overlay.json", overlay)
    else:
        log(f"  interrupted before with the same settings: resuming from {checkpoint.name}")
        atomic_write_json(run_dir / "resume.json", {"resume": True})
        stack.append(run_dir / "resume.json")
    log(f"  log: {run_dir / 'run.log'}")
    monai_bundle_run(stack, cwd=bundle_root, log_file=run_dir / "run.log", append=checkpoint is not None)
    atomic_write_json(done, settings_record)
    _keep_in_record(prediction_dir, record, root)


def _interrupted_checkpoint(run_dir: Path, overlay: dict[str, Any]) -> Path | None:
    """The newest intact epoch checkpoint that an earlier training in ``run_dir`` with the same ``overlay`` left
    (it stopped before its predictions were written), else ``None``: a base model takes an hour on a CPU."""
    previous = run_dir / "overlay.json"
    if not previous.is_file() or json.loads(previous.read_text()) != overlay:
        return None
    try:
        return Path(latest_checkpoint(run_dir / "models"))
    except CheckpointNotFoundError:
        return None


def _keep_in_record(prediction_dir: Path, record: Path | None, root: str) -> None:
    if record is not None:
        records.save(sorted(p for p in prediction_dir.iterdir() if p.is_file()), prediction_dir, record, root)


def _record_of(record: str | os.PathLike | None, out: Path, prediction_dir: Path) -> Path | None:
    """Where the record folder ``record`` keeps the predictions of ``prediction_dir`` (same place as under ``out``)."""
    return None if record is None else Path(record).resolve() / prediction_dir.relative_to(out)


def _settings(
    user: dict[str, Any],
    bundle_root: Path,
    raw_dir: Path,
    allow_partial: bool,
    seed: int,
    fold: int = 0,
    folds: int = 1,
) -> dict[str, Any]:
    """train_base.json overrides of one base model: the user's, then the data, the split and the seed."""
    return {
        **user,
        "bundle_root": str(bundle_root),
        "dataset_dir": str(raw_dir),
        "allow_partial_split": allow_partial,
        "fold": fold,
        "num_folds": folds,
        "seed": seed,
    }


def _prediction_file(prediction_dir: Path, case: str) -> Path:
    path = prediction_dir / f"img{case}_base.nii.gz"
    if not path.is_file():
        raise FileNotFoundError(f"'{path}' does not exist: the base model's prediction of case {case} is missing.")
    return path


def base_oof(
    bundle_root: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    out: str | os.PathLike,
    folds: int = 3,
    seeds: Sequence[int] = (0,),
    in_sample: bool = False,
    probabilities: bool = False,
    overlays: Sequence[str | os.PathLike] = (),
    allow_partial: bool = False,
    log: Callable[[str], Any] = print,
    record: str | os.PathLike | None = None,
) -> Path:
    """Train ``folds x len(seeds)`` base models and collect their out-of-fold predictions (module docstring).

    Layout under ``out``: ``base_models/seed<s>_fold<f>/`` (overlays, logs, ``models/base_model.pt``),
    ``predictions/seed<s>_fold<f>/img00NN_base.nii.gz`` and ``datalist.json`` (its ``training`` section).
    ``overlays`` are JSON files of config overrides for ``train_base.json`` (epochs, sizes, ...).

    Returns:
        the path of ``datalist.json``.
    """
    if folds < 2:
        raise ValueError(f"base-oof needs at least 2 folds (1 fold holds nothing out), got {folds}.")
    if not seeds:
        raise ValueError("base-oof needs at least one seed.")
    bundle_root, out = Path(bundle_root).resolve(), Path(out).resolve()
    raw_dir = find_raw_data_dir(dataset_dir).resolve()
    train_cases, _ = synapse_split(raw_dir, allow_partial=allow_partial)
    user = _read_overlays(overlays)
    entries = []
    for seed in seeds:
        for fold in range(folds):
            train, held_out = kfold_cases(train_cases, folds, fold, seed=seed)
            name = f"seed{seed}_fold{fold}"
            log(f"[base-oof {name}] trains on {', '.join(train)}; predicts {', '.join(held_out)}")
            settings = _settings(user, bundle_root, raw_dir, allow_partial, seed, fold, folds)
            predict = {"in_sample": in_sample, "save_probabilities": probabilities}
            prediction_dir = out / "predictions" / name
            _train_and_predict(bundle_root, out / "base_models" / name, prediction_dir, settings, predict, None, log,
                               _record_of(record, out, prediction_dir))  # fmt: skip
            for case in held_out:
                base = _prediction_file(prediction_dir, case)
                entries.append(datalist_entry(raw_dir, out, case, base, seed=seed, fold=fold, source="out_of_fold"))
            for case in train if in_sample else []:
                base = _prediction_file(prediction_dir, case)
                entries.append(datalist_entry(raw_dir, out, case, base, seed=seed, fold=fold, source="in_sample"))
    description = (
        f"RefNet training data: Swin UNETR predictions of the Synapse training cases, {folds}-fold out-of-fold "
        f"for seeds {list(seeds)}" + (" plus in-sample" if in_sample else "") + "; made by common.base_predictions."
    )
    return write_datalist(out, {"training": entries}, description, made_by="base-oof")


def base_in_sample(
    bundle_root: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    out: str | os.PathLike,
    seeds: Sequence[int] = (0, 1, 2),
    probabilities: bool = False,
    overlays: Sequence[str | os.PathLike] = (),
    allow_partial: bool = False,
    log: Callable[[str], Any] = print,
    record: str | os.PathLike | None = None,
) -> Path:
    """The paper's Algorithm 1: one base model per seed on all training cases, predicting them (module docstring).

    Layout under ``out``: ``base_models/seed<s>_all/`` (as ``base-test``: overlays, logs, ``models/base_model.pt``),
    ``predictions/in_sample_seed<s>/`` (the training and test cases) and ``datalist.json``: every model's training
    cases as ``in_sample`` training entries, the first seed's test cases as the ``test`` section.

    Returns:
        the path of ``datalist.json``.
    """
    if not seeds:
        raise ValueError("base-in-sample needs at least one seed.")
    bundle_root, out = Path(bundle_root).resolve(), Path(out).resolve()
    raw_dir = find_raw_data_dir(dataset_dir).resolve()
    train_cases, test_cases = synapse_split(raw_dir, allow_partial=allow_partial)
    user = _read_overlays(overlays)
    training, test = [], []
    for seed in seeds:
        log(f"[base-in-sample seed{seed}] trains on all {len(train_cases)} training cases and predicts them")
        settings = _settings(user, bundle_root, raw_dir, allow_partial, seed)
        predict = {"in_sample": True, "save_probabilities": probabilities}  # num_folds 1: plus the test cases
        prediction_dir = out / "predictions" / f"in_sample_seed{seed}"
        _train_and_predict(bundle_root, out / "base_models" / f"seed{seed}_all", prediction_dir, settings, predict,
                           None, log, _record_of(record, out, prediction_dir))  # fmt: skip
        for case in train_cases:
            base = _prediction_file(prediction_dir, case)
            training.append(datalist_entry(raw_dir, out, case, base, seed=seed, source="in_sample"))
        if seed == seeds[0]:
            test = [
                datalist_entry(raw_dir, out, case, _prediction_file(prediction_dir, case), seed=seed, source="test")
                for case in test_cases
            ]
    description = (
        f"RefNet training data as in the paper's Algorithm 1: {len(seeds)} Swin UNETR base models (seeds "
        f"{list(seeds)}), each trained on all training cases and predicting them; the test cases predicted by the "
        f"seed-{seeds[0]} model; made by common.base_predictions base-in-sample."
    )
    return write_datalist(out, {"training": training, "test": test}, description, made_by="base-in-sample")


def base_test(
    bundle_root: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    out: str | os.PathLike,
    seed: int = 0,
    base_ckpt: str | os.PathLike | None = None,
    probabilities: bool = False,
    overlays: Sequence[str | os.PathLike] = (),
    allow_partial: bool = False,
    log: Callable[[str], Any] = print,
) -> Path:
    """Train a base model on all training cases (or use ``base_ckpt``) and predict the test cases.

    Layout under ``out``: ``base_models/seed<s>_all/models/base_model.pt`` (the model inference.json expects in
    the bundle's ``models/``), ``predictions/test_seed<s>/`` and the ``test`` section of ``datalist.json``.

    Returns:
        the path of ``datalist.json``.
    """
    bundle_root, out = Path(bundle_root).resolve(), Path(out).resolve()
    raw_dir = find_raw_data_dir(dataset_dir).resolve()
    _, test_cases = synapse_split(raw_dir, allow_partial=allow_partial)
    checkpoint = Path(require_file(base_ckpt, "base model weights")).resolve() if base_ckpt else None
    settings = _settings(_read_overlays(overlays), bundle_root, raw_dir, allow_partial, seed)
    prediction_dir = out / "predictions" / f"test_seed{seed}"
    predict = {"in_sample": False, "save_probabilities": probabilities}
    run_dir = out / "base_models" / f"seed{seed}_all"
    _train_and_predict(bundle_root, run_dir, prediction_dir, settings, predict, checkpoint, log)
    entries = [
        datalist_entry(raw_dir, out, case, _prediction_file(prediction_dir, case), seed=seed, source="test")
        for case in test_cases
    ]
    if checkpoint is None:
        log(f"base model trained on all training cases: {run_dir / 'models' / 'base_model.pt'}")
    description = f"Swin UNETR (seed {seed}) predictions of the test cases; made by common.base_predictions base-test."
    return write_datalist(out, {"test": entries}, description, made_by="base-test")


def _write_nifti(path: Path, array: Any, like: Any) -> None:
    """``array`` as a uint8 NIfTI with the affine of the image ``like``, written atomically."""
    import nibabel as nib
    import numpy as np

    image = nib.Nifti1Image(array, like.affine)
    image.set_data_dtype(np.uint8)
    image.set_qform(like.affine, code=1)
    image.set_sform(like.affine, code=1)
    atomic_write_bytes(path, gzip.compress(image.to_bytes(), compresslevel=6))


def corrupt_gt(
    dataset_dir: str | os.PathLike,
    out: str | os.PathLike,
    copies: int = 2,
    seed: int = 0,
    probabilities: bool = False,
    allow_partial: bool = False,
    log: Callable[[str], Any] = print,
) -> Path:
    """Write corrupted ground truth as stand-in base predictions, and their datalist (module docstring).

    Every training case gets ``copies`` independently corrupted copies (``seed`` = 0..copies-1 in the datalist),
    every test case one. The corruptions: each organ eroded or dilated by 1-2 voxels with probability 0.5, one
    connected component given a wrong organ id with probability 0.5, one to three slices dropped with probability
    0.5 (:mod:`common.transforms.refinement`). Labels are mapped to the 12-organ convention first. With
    ``probabilities``, stand-in class probabilities are written too: the corrupted map one-hot encoded, smoothed
    with a Gaussian of 1 voxel per class and renormalised (uncertain only near boundaries, like a real softmax).

    Returns:
        the path of ``datalist.json``.
    """
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    from common.data.btcv import btcv_to_synapse12
    from common.transforms.refinement import RandDropSlicesd, RandLabelErosionDilationd, RandLabelSwapd

    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}.")
    out = Path(out).resolve()
    raw_dir = find_raw_data_dir(dataset_dir).resolve()
    train_cases, test_cases = synapse_split(raw_dir, allow_partial=allow_partial)
    corruptions = [
        RandLabelErosionDilationd("base", prob=1.0, organ_prob=0.5, radius=(1, 2)),
        RandLabelSwapd("base", prob=0.5, num_classes=NUM_CLASSES),
        RandDropSlicesd("base", prob=0.5, num_slices=(1, 3)),
    ]
    sections: dict[str, list[dict[str, Any]]] = {"training": [], "test": []}
    jobs = [("training", c, k) for k in range(copies) for c in train_cases] + [("test", c, 0) for c in test_cases]
    for index, (section, case, copy) in enumerate(jobs):
        label_file = btcv_case_paths(raw_dir, case).label
        label = nib.load(str(label_file))
        # rounded, not truncated: the check accepts ids within 1e-3 of a whole number (5.9997 is the liver, 6)
        ids = np.rint(btcv_to_synapse12(np.asarray(label.dataobj), name=str(label_file))).astype(np.uint8)
        for i, transform in enumerate(corruptions):
            transform.set_random_state(seed=(seed * 1_000_003 + index) * len(corruptions) + i)
        data = {"base": ids[None]}
        for transform in corruptions:
            data = transform(data)
        target = out / "corrupted_gt" / f"{section}_copy{copy}" / f"img{case}_base.nii.gz"
        corrupted = np.asarray(data["base"][0], np.uint8)
        _write_nifti(target, corrupted, label)
        if probabilities:
            one_hot = np.stack(
                [ndimage.gaussian_filter((corrupted == c).astype(np.float32), 1.0) for c in range(NUM_CLASSES)]
            )
            one_hot /= np.maximum(one_hot.sum(0, keepdims=True), 1e-6)
            stored = np.rint(np.moveaxis(one_hot, 0, -1) * 255).astype(np.uint8)
            _write_nifti(target.with_name(target.name.replace("_base.nii", "_prob.nii")), stored, label)
        source = "test" if section == "test" else "corrupted_gt"
        sections[section].append(datalist_entry(raw_dir, out, case, target, seed=copy, source=source))
    log(f"corrupted ground truth of {len(train_cases)} training case(s) x {copies} and {len(test_cases)} test case(s)")
    description = (
        "Stand-in base predictions: corrupted ground truth (common.base_predictions corrupt-gt), for demos and tests "
        "only; real RefNet training data come from base-oof and base-test."
    )
    return write_datalist(out, sections, description, made_by="corrupt-gt")


# ---------------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.base_predictions", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset-dir", required=True, help="BTCV RawData folder (or the folder holding it)")
        p.add_argument("--out", required=True, help="output folder (predictions, models, datalist.json)")
        p.add_argument(
            "--partial-split", action="store_true", help="use the Synapse cases present instead of requiring all 30"
        )

    def base_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--bundle-root", required=True, help="the refnet_synapse bundle folder")
        data_args(p)
        p.add_argument("--probabilities", action="store_true", help="also save the base model's class probabilities")
        p.add_argument(
            "--overlay", action="append", default=[], help="JSON file of overrides for train_base.json (repeatable)"
        )

    def record_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--record",
            help="folder that keeps the predictions (no weights) and restores them on a machine that lacks them "
            "(a study continued over several machines; common.records)",
        )

    p = sub.add_parser("base-oof", help="out-of-fold base predictions of the training cases")
    base_args(p)
    record_arg(p)
    p.add_argument("--folds", type=int, default=3, help="folds per seed (default 3)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds, one set of folds each (default 0)")
    p.add_argument("--in-sample", action="store_true", help="also predict each model's own training cases")

    p = sub.add_parser("base-in-sample", help="the paper's Algorithm 1: K models on all training cases predict them")
    base_args(p)
    record_arg(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one base model per seed (default 0 1 2)")

    p = sub.add_parser("base-test", help="base predictions of the test cases")
    base_args(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the base model (default 0)")
    p.add_argument("--base-ckpt", help="use these base model weights instead of training")

    p = sub.add_parser("corrupt-gt", help="corrupted ground truth as stand-in base predictions (demo, tests)")
    data_args(p)
    p.add_argument("--copies", type=int, default=2, help="corrupted copies per training case (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corruptions (default 0)")
    p.add_argument("--probabilities", action="store_true", help="also write stand-in class probabilities")

    args = parser.parse_args(argv)
    try:
        if args.command == "base-oof":
            datalist = base_oof(
                args.bundle_root, args.dataset_dir, args.out, args.folds, args.seeds, args.in_sample,
                args.probabilities, args.overlay, args.partial_split, record=args.record,
            )  # fmt: skip
        elif args.command == "base-in-sample":
            datalist = base_in_sample(
                args.bundle_root, args.dataset_dir, args.out, args.seeds, args.probabilities, args.overlay,
                args.partial_split, record=args.record,
            )  # fmt: skip
        elif args.command == "base-test":
            datalist = base_test(
                args.bundle_root, args.dataset_dir, args.out, args.seed, args.base_ckpt, args.probabilities,
                args.overlay, args.partial_split,
            )  # fmt: skip
        else:
            datalist = corrupt_gt(
                args.dataset_dir, args.out, args.copies, args.seed, args.probabilities, args.partial_split
            )
    except (BTCVDataError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"datalist: {datalist}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
