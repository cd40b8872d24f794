"""The foreground crop of the BraTS bundles (``crop_foreground`` in their ``inference.json``): windows, time, agreement.

Run: ``python -m bench.foreground_crop --out DIR [--cases 3] [--first-case K] [--networks ...] [--without PATH ...]``;
writes ``DIR/crop.json`` (rewritten after every measurement, so an interrupted run keeps what it measured) and
``DIR/crop.md``. ``--first-case`` and ``--without`` continue a stopped run in another ``--out``.

* **Windows** (no network runs): the sliding-window count (:func:`common.fast_inference.sliding_window_count`, 128^3
  windows) of the whole 240 x 240 x 155 grid and of the box the crop keeps, at overlap 0.5 and 0.25, for the
  default phantoms and for brain extents of real BraTS cases (about 140 x 170 x 140 voxels).
* **Whole cases**: for each network (COHRA-UNet and SegResNet on the 4 modalities, the MTCM-KD student on T1ce) and
  each phantom case (``make_brats_case((240, 240, 155), case_rng(7, k))``, the seed of ``bench.inference``'s test
  case): the bundle's own ``preprocessing`` (without the file-reading transforms), ``inferer`` and ``postprocessing``
  (without ``SaveImaged``), built from its ``inference.json``, timed from the raw image to the label map on the full
  grid. Paths: the model zoo's fp32 eager path without the crop (the reference), ``fast_cpu`` without and with the crop
  at overlap 0.5, ``fast_cpu`` with the crop at overlap 0.25, and ``fast_cpu`` with the crop in one window
  (``one_window``: the box padded to a multiple of 16), then without the crop and with it in one window on OpenVINO
  (``fast_cpu_runtime``; the one-off conversion and the check of each window shape, kept in ``--work-dir``/openvino,
  are left out by timing a second pass; the first pass is reported as ``first_pass_seconds``). Agreement: Dice of
  every BraTS label of the label map against the reference's (1 if neither has the label); next to it, each label
  map's Dice against the phantom's own truth, which says how well trained the weights are (agreement on weights
  that segment nothing says little).

Weights are those of ``make bench-weights`` (:mod:`bench.weights`) where it ran, else the few-step ones of ``make
bench`` (:func:`bench.inference.train_weights`), in ``--work-dir``; the report says which. One process, torch threads
fixed by ``--threads``, freed memory kept from the start (:func:`common.allocator.retain_freed_memory`, for the fp32
eager reference too: same values, half the time); on a shared machine read times as ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from bench.harness import REPO_ROOT, machine_info, set_threads
from bench.inference import SEGRESNET
from common.allocator import retain_freed_memory

ROI = (128, 128, 128)
GRID = (240, 240, 155)
#: Brain extents (voxels) of real BraTS cases to count windows for: the typical one and a smaller and larger one.
REAL_EXTENTS = {"typical BraTS brain": (140, 170, 140), "small": (125, 155, 125), "large": (155, 190, 150)}
#: key: (bundle whose inference.json runs it, its overlap key, network_def replacing the bundle's or None). SegResNet
#: (the model zoo's brats_mri_segmentation network, as bench.inference builds it) runs in COHRA-UNet's pipeline: the
#: same four modalities, normalisation and three sigmoid region heads.
NETWORKS = {
    "cohra": ("cohra_unet_brats", "inferer#inferer#overlap", None),
    "student": ("mtcm_kd_t1ce_student", "volume_inferer#overlap", None),
    "segresnet": ("cohra_unet_brats", "inferer#inferer#overlap", {"_target_": "SegResNet", **SEGRESNET}),
}
#: (name, fast_cpu, crop_foreground, overlap, one_window, fast_cpu_runtime); the first is the agreement's reference.
PATHS = (
    ("fp32 eager, no crop, overlap 0.5", False, False, 0.5, False, "torch"),
    ("fast_cpu, no crop, overlap 0.5", True, False, 0.5, False, "torch"),
    ("fast_cpu, crop, overlap 0.5", True, True, 0.5, False, "torch"),
    ("fast_cpu, crop, overlap 0.25", True, True, 0.25, False, "torch"),
    ("fast_cpu, crop, one window", True, True, 0.5, True, "torch"),
    ("fast_cpu openvino, no crop, overlap 0.5", True, False, 0.5, False, "openvino"),
    ("fast_cpu openvino, crop, one window", True, True, 0.5, True, "openvino"),
)
#: BraTS 2021 label of each phantom region code (1 NCR, 2 ED, 3 ET).
PHANTOM_LABELS = {1: 1, 2: 2, 3: 4}
LABELS = (1, 2, 4)  # BraTS 2021 labels of the written label map: NCR, ED, ET
#: Where a path's label map differs from the reference's: the share on the brain's edge (outside the brain, or inside
#: within this many voxels of the background), where the windows of the uncropped grid mix brain and background.
EDGE_WIDTH = 10


def window_count(shape: tuple[int, ...], overlap: float) -> int:
    from monai.inferers import SlidingWindowInferer

    from common.fast_inference import sliding_window_count

    inferer = SlidingWindowInferer(ROI, overlap=overlap)
    return sliding_window_count(inferer, torch.zeros((1, 1, *shape)))


def phantom(k: int):
    from common.synthetic._fields import case_rng
    from common.synthetic.brats import make_brats_case

    return make_brats_case(GRID, case_rng(7, k))


def window_table(cases: range) -> list[dict]:
    """Window counts of the whole grid and of the crop of each phantom and of real brain extents."""
    from common.inferers.foreground import foreground_box

    rows = []
    for k in cases:
        case = phantom(k)
        image = torch.from_numpy(np.stack([case.images[m] for m in ("t1", "t1ce", "t2", "flair")]))
        box = foreground_box(image)
        rows.append(
            {"what": f"phantom case {k}", "box": [s.stop - s.start for s in box], "start": [s.start for s in box]}
        )
    rows += [{"what": name, "box": list(extent)} for name, extent in REAL_EXTENTS.items()]
    for row in rows:
        for overlap in (0.5, 0.25):
            row[f"windows_full_{overlap}"] = window_count(GRID, overlap)
            row[f"windows_crop_{overlap}"] = window_count(tuple(row["box"]), overlap)
    return rows


def bundle_pipeline(key: str, fast: bool, crop: bool, overlap: float, one_window: bool, runtime: str, state: dict):
    """The bundle's preprocessing (no file reading), network with the phantom weights, inferer, postprocessing (no
    writing), from its inference.json."""
    from monai.transforms import Compose, LoadImaged, SaveImaged

    from bench.inference import _bundle_parser
    from common.transforms.validation import ValidateImaged, ValidateImageFilesd

    bundle, overlap_key, network_def = NETWORKS[key]
    parser = _bundle_parser(bundle, quick=False, fast=fast)
    parser["crop_foreground"] = crop
    parser["one_window"] = one_window
    parser["fast_cpu_runtime"] = runtime
    parser[overlap_key] = overlap
    parser["progress"] = False
    parser["et_label"] = 4
    if network_def is not None:
        parser["network_def"] = network_def
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(state["net"])
    network.eval()
    skip = (ValidateImageFilesd, LoadImaged, ValidateImaged)
    preprocessing = Compose(
        [t for t in parser.get_parsed_content("preprocessing").transforms if not isinstance(t, skip)]
    )
    post = Compose([t for t in parser.get_parsed_content("postprocessing").transforms if not isinstance(t, SaveImaged)])
    return preprocessing, network, parser.get_parsed_content("inferer"), post


def run_case(key: str, image, pipeline) -> tuple[np.ndarray, float, int]:
    """The label map, the seconds from raw image to label map, and the windows the network ran."""
    from common.fast_inference import sliding_window_count

    preprocessing, network, inferer, post = pipeline
    start = time.perf_counter()
    d = preprocessing({"image": image.clone()})
    with torch.no_grad():  # as SupervisedEvaluator runs its inferer
        pred = inferer(d["image"][None], network)[0]
    d["pred"] = pred
    d = post(d)
    seconds = time.perf_counter() - start
    labels = np.asarray(d["pred"]).astype(np.uint8)[0]
    return labels, seconds, sliding_window_count(inferer.inferer, d["image"][None])


def brain_edge(image: np.ndarray, width: int = EDGE_WIDTH) -> np.ndarray:
    """Voxels outside the brain (all modalities 0) or inside it within ``width`` voxels of the background."""
    from scipy import ndimage

    brain = np.abs(image).sum(0) > 0
    return ~brain | (ndimage.distance_transform_edt(brain) <= width)


def edge_share(labels: np.ndarray, reference: np.ndarray, edge: np.ndarray) -> float | None:
    """The share of the voxels whose label differs from the reference's that lie on :func:`brain_edge`."""
    differ = labels != reference
    return float((differ & edge).sum() / differ.sum()) if differ.any() else None


def dice_per_label(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    out = {}
    for label in LABELS:
        p, q = a == label, b == label
        total = int(p.sum() + q.sum())
        out[str(label)] = 1.0 if total == 0 else float(2.0 * (p & q).sum() / total)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--first-case", type=int, default=0, help="start at this phantom case (resume a stopped run)")
    parser.add_argument(
        "--without", nargs="+", default=[], choices=[p[0] for p in PATHS[1:]], metavar="PATH",
        help="leave out these paths (the reference always runs); e.g. the OpenVINO one-window path, whose conversion "
        "of COHRA-UNet at a whole brain box needs many GiB",
    )  # fmt: skip
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "bench" / "results" / "work")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    cases = range(args.first_case, args.first_case + args.cases)
    # Freed memory kept from the start, for the fp32 eager reference too: it changes where memory comes from, not
    # one value of the label map, and halves an fp32 pass (the allocator ablation of make bench-full). The fast path
    # keeps it anyway, so the first measurement would otherwise be the only one without it.
    retain_freed_memory()
    os.environ.setdefault("ZOO_OPENVINO_CACHE", str(args.work_dir / "openvino"))
    args.out.mkdir(parents=True, exist_ok=True)
    from monai.data import MetaTensor

    from bench.inference import CASES, _weights_path, train_weights, weights_description
    from common.synthetic.brats import brats_affine

    result: dict = {"machine": machine_info(), "load_average": os.getloadavg(), "windows": window_table(cases)}
    result["runs"] = []

    def save() -> None:
        (args.out / "crop.json").write_text(json.dumps(result, indent=1))
        (args.out / "crop.md").write_text(markdown(result))

    save()
    for key in args.networks:
        trained = train_weights(key, quick=False, work_dir=str(args.work_dir))
        print(f"{key}: weights {'trained' if trained['trained'] else 'cached'}", flush=True)
        result.setdefault("weights", {})[key] = weights_description(args.work_dir, CASES[key], quick=False)
        state = torch.load(_weights_path(args.work_dir, CASES[key], False), map_location="cpu")
        for k in cases:
            case = phantom(k)
            modalities = ("t1ce",) if key == "student" else ("t1", "t1ce", "t2", "flair")
            raw = np.stack([case.images[m].astype(np.float32) for m in modalities])
            image = MetaTensor(torch.from_numpy(raw), affine=torch.from_numpy(brats_affine(GRID)))
            reference = None
            edge = brain_edge(raw)
            truth = np.zeros(GRID, np.uint8)
            for code, label in PHANTOM_LABELS.items():
                truth[case.regions == code] = label
            for name, fast, crop, overlap, one_window, runtime in (p for p in PATHS if p[0] not in args.without):
                pipeline = bundle_pipeline(key, fast, crop, overlap, one_window, runtime, state)
                labels, seconds, windows = run_case(key, image, pipeline)
                first_pass = None
                if runtime == "openvino":  # the first pass converted or checked the network: time a second one
                    first_pass = seconds
                    labels, seconds, windows = run_case(key, image, pipeline)
                assert labels.shape == GRID, f"{key} {name}: label map {labels.shape}, expected {GRID}"
                if reference is None:
                    reference = labels
                dice = dice_per_label(labels, reference)
                row = {"network": key, "case": k, "path": name, "seconds": seconds, "windows": windows, "dice": dice,
                       "dice_to_truth": dice_per_label(labels, truth), "foreground_voxels": int((labels > 0).sum()),
                       "differing_voxels": int((labels != reference).sum()),
                       "differing_on_brain_edge": edge_share(labels, reference, edge), "first_pass_seconds": first_pass,
                       "load_average": os.getloadavg()}  # fmt: skip
                result["runs"].append(row)
                save()
                print(f"{key} case {k} {name}: {seconds:.1f} s, {windows} windows, Dice {dice}", flush=True)
    save()


def markdown(result: dict) -> str:
    weights = [f"- {key}: {text}" for key, text in result.get("weights", {}).items()]
    lines = [*weights, ""] if weights else []
    lines += ["| extent (voxels) | windows 0.5 full -> crop | windows 0.25 full -> crop |", "|---|---|---|"]
    for row in result["windows"]:
        extent = "x".join(map(str, row["box"]))
        lines.append(
            f"| {row['what']}: {extent} | {row['windows_full_0.5']} -> {row['windows_crop_0.5']} | "
            f"{row['windows_full_0.25']} -> {row['windows_crop_0.25']} |"
        )
    lines += [
        "",
        "| network | case | path | windows | s | Dice NCR / ED / ET vs fp32 eager no crop | voxels differing (share on "
        "the brain's edge) | vs the phantom's truth |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        dice = " / ".join(f"{r['dice'][str(label)]:.4f}" for label in LABELS)
        truth = " / ".join(f"{r['dice_to_truth'][str(label)]:.3f}" for label in LABELS)
        share = r.get("differing_on_brain_edge")
        differing = f"{r.get('differing_voxels', '')}" + (f" ({share:.2f})" if share is not None else "")
        lines.append(
            f"| {r['network']} | {r['case']} | {r['path']} | {r['windows']} | {r['seconds']:.1f} | {dice} | "
            f"{differing} | {truth} |"
        )
    summary = {}
    for r in result["runs"]:
        summary.setdefault((r["network"], r["path"]), []).append(r)
    lines += [
        "",
        "| network | path | cases | median s | windows | min Dice over labels and cases | mean Dice NCR / ED / ET vs "
        "the phantom's truth |",
        "|---|---|---|---|---|---|---|",
    ]
    for (network, path), rows in summary.items():
        median = float(np.median([r["seconds"] for r in rows]))
        worst = min(min(r["dice"].values()) for r in rows)
        windows = "/".join(sorted({str(r["windows"]) for r in rows}))
        truth = " / ".join(f"{np.mean([r['dice_to_truth'][str(label)] for r in rows]):.3f}" for label in LABELS)
        lines.append(f"| {network} | {path} | {len(rows)} | {median:.1f} | {windows} | {worst:.4f} | {truth} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
