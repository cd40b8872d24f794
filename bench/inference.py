"""Inference at realistic size for every bundle: the model zoo's fp32 eager path next to the ``fast_cpu`` path.

Cases (full mode; ``--quick`` uses each bundle's ``configs/demo.json`` inference overlay and tiny inputs):

* ``cohra_unet_brats``: a full BraTS phantom case 4 x 240 x 240 x 155, sliding window 128^3, overlap 0.5, next to
  MONAI SegResNet (the model zoo's ``brats_mri_segmentation`` network) on the same case and inferer.
* ``mtcm_kd_t1ce_student``: the same case, T1ce channel only.
* ``fct_visible_korean``: a batch of 16 VK phantom slices 256 x 256, next to MONAI BasicUNet 2D on the same batch.
* ``refnet_synapse``: a BTCV phantom CT at the base model's training spacing (1.5 x 1.5 x 2.0 mm, 240 x 240 x 128
  voxels, the small end of BTCV), the whole cascade: Swin UNETR base (sliding window 96^3) then RefNet on every
  slice; the Swin UNETR base stage is also reported on its own (timed inside the same runs). With ``--full``
  (``make bench-full``; one run takes longer than the whole ``make bench`` budget on 2 cores) also the bundle's
  real command, ``python -m monai.bundle run --config_file configs/inference.json``, on a 512 x 512 x 400 phantom
  CT at 0.7 x 0.7 x 1.0 mm with random weights: its wall time and peak RSS (:func:`refnet_bundle_run`).

The bundles' networks and inferers come from their ``configs/inference.json`` (``fast_cpu`` false / true), so
this measures what the model zoo runs. Every figure runs in its own subprocess (``bench.harness.run_isolated``)
for its own peak RSS. The agreement check needs meaningful label maps, so every network first gets briefly
trained phantom weights (a fixed number of steps on small patches of a training phantom), cached in
``<work_dir>/weights`` and reused by the next run. GFLOP/s = forward FLOPs per window (``FlopCounterMode``,
convolutions and matrix multiplies) x windows / wall time, next to the fp32 and bf16 matrix-multiply peak
measured in the same run.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import (
    REPO_ROOT,
    Context,
    count_flops,
    figure,
    matmul_peak_gflops,
    run_isolated,
    time_call,
)

__all__ = ["CASES", "run"]

COMMAND = "make bench  (python -m bench.run --out bench/results --only bench.inference)"
TRAIN_STEPS = {"3d": 30, "2d": 25}
QUICK_TRAIN_STEPS = 1


@dataclass(frozen=True)
class Case:
    """One benchmarked network: where its data comes from, how its label map is read, which bundle config builds it."""

    key: str
    bundle: str
    title: str
    data: str  # "brats4", "brats1", "vk", "btcv"
    label: str  # "regions" (sigmoid > 0.5 per channel) or "argmax"
    config: str | None  # bundle folder whose inference.json builds network and inferer, or None for a reference
    heavy: bool = False  # minutes per fp32 pass over the full case: see :data:`BUDGET`
    train_steps: int | None = None  # steps of the brief phantom training (None: TRAIN_STEPS by dimension)

    def plan(self, ctx: Context) -> list[tuple[str, bool]]:
        """The ``(region, fast)`` measurements of this case: both paths over the full case, except that a heavy
        case's fp32 eager path runs on one window (both paths there, for the ratio) unless ``ctx.full``."""
        if self.heavy and not ctx.full:
            return [(WINDOW, False), (WINDOW, True), (FULL, True)]
        return [(FULL, False), (FULL, True)]

    def repeats(self, ctx: Context, region: str, fast: bool) -> int:
        """Timed runs of one measurement: the 20-minute budget of ``make bench`` decides (see :data:`BUDGET`)."""
        if ctx.quick:
            return ctx.repeats
        if self.heavy:  # one fp32 window is ~20 s: one timed run after the untimed one
            return min(ctx.repeats, 2) if region == WINDOW and fast else 1
        if self.data != "vk" and not fast:  # an fp32 sliding window over a full case: ~45 s even for SegResNet
            return 1
        return ctx.repeats

    def warmup(self, quick: bool, region: str) -> int:
        """Untimed first calls where oneDNN's first-call set-up (kernel choice, first allocations) would be a
        visible share of the time: the 2D batch and the one-window measurements; a full 3D case's 18-32 windows
        amortise it, as they do for a user."""
        return 1 if not quick and (self.data == "vk" or region == WINDOW) else 0


FULL, WINDOW = "full", "window"

#: MONAI SegResNet as the model zoo's brats_mri_segmentation bundle builds it: the BraTS bundles' reference.
SEGRESNET = {
    "spatial_dims": 3,
    "in_channels": 4,
    "out_channels": 3,
    "init_filters": 16,
    "blocks_down": [1, 2, 2, 4],
    "blocks_up": [1, 1, 1],
}

#: The case whose fp32 eager path is measured once more with the allocator ablation (see ``_allocator_ablation``).
ALLOCATOR_ABLATION = "segresnet"
#: The cases whose fast path is measured once more with their bundle's foreground crop (see ``_crop_ablation``).
CROP_ABLATION = ("segresnet", "cohra", "student", "refnet")

#: The cases whose fast path is measured once more on the other runtime (see ``_runtime_ablation``). Not the RefNet
#: cascade: its two stages call their networks through the cascade, where this benchmark cannot hand them over.
RUNTIME_ABLATION = ("segresnet", "cohra", "student", "fct")

#: Why the measurements are what they are. ``make bench`` must finish in 20 minutes on 2 cores, and one fp32 eager
#: pass over the full case takes about 4 min for COHRA-UNet, the student (1.8 TFLOP per 128^3 window x 18 windows)
#: and the Swin UNETR cascade (32 windows of 96^3): 12 of the 20 minutes before anything else. For these three the
#: default run times both paths on one sliding window of the case, centred on the foreground (same network, same
#: inferer, one window), which gives the speed-up and the agreement, and the fast path over the full case, which
#: gives the time a user waits; ``--full`` (make bench-full) adds the fp32 eager pass over the full case.
BUDGET = (
    "the 20-minute budget of make bench: the fp32 eager full case of COHRA-UNet, the student and the Swin UNETR "
    "cascade (about 4 min each) only with --full (make bench-full); without it both paths are compared on one "
    "window of the case (after one untimed window). Repeats: one per full-case pass of those three, per fp32 window "
    "of them and per fp32 full case, two per fast window, three for the rest. The allocator ablation only with --full"
)


CASES: dict[str, Case] = {
    c.key: c
    for c in (
        Case(
            "segresnet",
            "reference: MONAI SegResNet",
            "MONAI SegResNet (brats_mri_segmentation net)",
            "brats4",
            "regions",
            None,
        ),
        Case("cohra", "cohra_unet_brats", "COHRA-UNet", "brats4", "regions", "cohra_unet_brats", heavy=True),
        Case(
            "student",
            "mtcm_kd_t1ce_student",
            "MTCM-KD T1ce student",
            "brats1",
            "argmax",
            "mtcm_kd_t1ce_student",
            heavy=True,
        ),
        Case("basicunet", "reference: MONAI BasicUNet 2D", "MONAI BasicUNet 2D", "vk", "argmax", None),
        Case("fct", "fct_visible_korean", "FCT", "vk", "argmax", "fct_visible_korean", train_steps=15),
        Case(
            "refnet",
            "refnet_synapse",
            "Swin UNETR base + RefNet",
            "btcv",
            "argmax",
            "refnet_synapse",
            heavy=True,
            train_steps=10,  # Swin UNETR: 62 M parameters, ~2 s a step; the fast path is float32 (agreement ~1)
        ),
    )
}

#: The goals of a whole case on 2 cores, on either kind of CPU, in the default path (``fast_cpu``) with label maps
#: agreeing at Dice >= 0.995 with the model zoo's fp32 eager way: seconds at most, or the speed-up over fp32 eager.
GOALS = {
    "cohra": {"max_s": 15.0},
    "student": {"max_s": 12.0},
    "segresnet": {"max_s": 3.0},
    "refnet": {"max_s": 30.0},
    "fct": {"min_speedup": 3.0},
}
GOAL_AGREEMENT = 0.995

WINDOW_DESC = {
    "brats4": "one 128^3 sliding window of the full BraTS case, centred on the tumour",
    "brats1": "one 128^3 sliding window of the full BraTS case (T1ce), centred on the tumour",
    "btcv": "one 96^3 Swin UNETR window of the BTCV CT, centred on the organs, then RefNet per slice",
}

INPUT_DESC = {
    "brats4": "full BraTS case 4x240x240x155, sliding window 128^3 overlap 0.5",
    "brats1": "full BraTS case T1ce 1x240x240x155, sliding window 128^3 overlap 0.5",
    "vk": "batch of 16 VK slices 3x256x256",
    "btcv": "BTCV CT 240x240x128 at 1.5x1.5x2.0 mm, Swin UNETR 96^3 overlap 0.5 then RefNet per slice",
}


def matmul_peaks(size: int, repeats: int) -> dict:
    """:func:`bench.harness.matmul_peak_gflops` of float32 and bfloat16, in one worker."""
    return {dtype: matmul_peak_gflops(dtype, size=size, repeats=repeats) for dtype in ("float32", "bfloat16")}


def make_inputs(quick: bool, work_dir: str) -> dict:
    """Every test phantom of :data:`CASES`, in one worker (:func:`make_data` reuses what exists)."""
    return {data: make_data(data, "test", quick, work_dir)["path"] for data in sorted({c.data for c in CASES.values()})}


# ----------------------------------------------------------------------------------------------------------- data
def _data_path(work_dir: Path, quick: bool, data: str, split: str) -> Path:
    return Path(work_dir) / "inputs" / f"{data}_{split}{'_quick' if quick else ''}.npz"


def make_data(data: str, split: str, quick: bool, work_dir: str) -> dict:
    """Build (or reuse) one phantom input as the bundle's preprocessing leaves it; returns its path."""
    from monai.transforms import NormalizeIntensity, ScaleIntensityRange

    path = _data_path(Path(work_dir), quick, data, split)
    if path.exists():
        return {"path": str(path)}
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = 7 if split == "test" else 0
    if data == "brats1":  # the student's input: the T1ce channel of the same case
        brats4 = np.load(make_data("brats4", split, quick, work_dir)["path"])
        np.savez(path, image=brats4["image"][1:2], label=brats4["label"])
        return {"path": str(path)}
    if data == "brats4":
        from common.synthetic._fields import case_rng
        from common.synthetic.brats import make_brats_case

        size = (40, 40, 32) if quick else (240, 240, 155)
        case = make_brats_case(size, case_rng(seed, 0))
        image = np.stack([case.images[m].astype(np.float32) for m in ("t1", "t1ce", "t2", "flair")])
        image = np.asarray(NormalizeIntensity(nonzero=True, channel_wise=True)(image), dtype=np.float32)
        label = case.regions.astype(np.int64)  # 0 background, 1 NCR, 2 ED, 3 ET
    elif data == "vk":
        from common.data.visible_korean import GROUP_LABELS
        from common.synthetic._fields import case_rng
        from common.synthetic.visible_korean import LEVELS, STRUCTURES, make_visible_korean_case

        side, count = (64, 2) if quick else (256, 16)
        lut = np.array([0] + [GROUP_LABELS[s.group] for s in STRUCTURES], dtype=np.int64)
        images, labels = [], []
        for k in range(count):
            vk = make_visible_korean_case((side, side), case_rng(seed, k), LEVELS[k % len(LEVELS)])
            images.append(vk.photo.transpose(2, 0, 1).astype(np.float32) / 255.0)
            labels.append(lut[vk.label])
        image, label = np.stack(images), np.stack(labels)
    elif data == "btcv":
        from common.data.btcv import btcv_to_synapse12
        from common.synthetic._fields import case_rng
        from common.synthetic.btcv import make_btcv_case

        size = (64, 64, 32) if quick else (240, 240, 128)
        ct = make_btcv_case(size, case_rng(seed, 0), spacing=(1.5, 1.5, 2.0))
        image = np.asarray(ScaleIntensityRange(-175, 250, 0.0, 1.0, clip=True)(ct.image[None].astype(np.float32)))
        label = np.asarray(btcv_to_synapse12(ct.label)).astype(np.int64)
        np.savez(path, image=image.astype(np.float32), label=label, affine=ct.affine)
        return {"path": str(path)}
    else:
        raise ValueError(f"make_data: unknown data {data!r}; expected brats4, brats1, vk or btcv.")
    np.savez(path, image=image.astype(np.float32), label=label)
    return {"path": str(path)}


# ------------------------------------------------------------------------------------------------------- networks
def _bundle_parser(bundle: str, quick: bool, fast: bool, runtime: str | None = None):
    from monai.bundle import ConfigParser

    root = REPO_ROOT / "bundles" / bundle
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    parser["device"] = "$torch.device('cpu')"
    if quick:
        overlay = json.loads((root / "configs" / "demo.json").read_text())["inference"]
        for key, value in overlay.items():
            if key in ("datalist",) or "num_workers" in key:
                continue
            parser[key] = value
    if bundle == "refnet_synapse":
        parser["load_base_model"] = False
        # the cascade's logits, as every other case here gives: label_map and the agreement check take their argmax
        parser["inferer#output"] = "logits"
        if not quick:
            parser["base_spacing"] = None  # the benchmark CT is already at the training spacing: no resampling
    parser["fast_cpu"] = fast
    if runtime is not None:
        parser["fast_cpu_runtime"] = runtime
    return parser


def default_runtime(case: Case) -> str:
    """The runtime of ``case``'s fast path by default on this CPU: its bundle's ``fast_cpu_runtime`` (``"auto"`` as
    :func:`common.fast_inference.chosen_runtime` resolves it here); PyTorch for a reference."""
    from common.fast_inference import chosen_runtime

    if case.config is None:
        return "torch"
    inference = json.loads((REPO_ROOT / "bundles" / case.config / "configs" / "inference.json").read_text())
    return chosen_runtime(inference["fast_cpu_runtime"])


def build(case: Case, quick: bool, fast: bool, runtime: str | None = None) -> tuple[dict[str, Any], Callable]:
    """``({name: network}, inferer)`` of one path; the inferer is called as ``inferer(x, networks['net'])``.
    ``runtime``: the fast path's ``fast_cpu_runtime`` (``None``: the case's default, :func:`default_runtime`)."""
    runtime = runtime or default_runtime(case)
    import torch
    from monai.inferers import SimpleInferer, SlidingWindowInferer
    from monai.networks.nets import BasicUNet, SegResNet

    from common.fast_inference import FastInferer

    if case.config is not None:
        parser = _bundle_parser(case.config, quick, fast, runtime)
        nets = {"net": parser.get_parsed_content("network_def")}
        inferer = parser.get_parsed_content("inferer")
        if case.key == "refnet":
            nets["base"] = inferer.base_network
    elif case.key == "segresnet":
        kw = {"init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1]} if quick else {}
        nets = {"net": SegResNet(**{**SEGRESNET, **kw})}
        roi = [32] * 3 if quick else [128] * 3
        window = SlidingWindowInferer(roi, sw_batch_size=1, overlap=0.5, mode="gaussian")
        inferer = FastInferer(window, enabled=fast, runtime=runtime)
    elif case.key == "basicunet":
        features = (4, 4, 8, 16, 32, 4) if quick else (32, 32, 64, 128, 256, 32)
        nets = {"net": BasicUNet(spatial_dims=2, in_channels=3, out_channels=3, features=features)}
        inferer = FastInferer(SimpleInferer(), enabled=fast, runtime=runtime)
    else:
        raise ValueError(f"build: no builder for case {case.key!r}.")
    for net in nets.values():
        net.to(torch.device("cpu")).eval()
    return nets, inferer


# ------------------------------------------------------------------------------------------------------- training
def _weights_path(work_dir: Path, case: Case, quick: bool) -> Path:
    return Path(work_dir) / "weights" / f"{case.key}{'_quick' if quick else ''}.pt"


def weights_description(work_dir: Path, case: Case, quick: bool) -> str:
    """Which weights an agreement was measured on: those of ``make bench-weights`` (bench.weights, with their
    held-out Dice against the phantom's truth) or the few steps of :func:`train_weights`."""
    record = _weights_path(work_dir, case, quick).with_suffix(".json")
    if not record.exists():
        steps = QUICK_TRAIN_STEPS if quick else case.train_steps or TRAIN_STEPS["2d" if case.data == "vk" else "3d"]
        return f"weights of {steps} phantom training steps (make bench-weights trains the BraTS networks further)"
    r = json.loads(record.read_text())
    dice = " / ".join(f"{d:.2f}" for d in r["curve"][-1]["dice"])
    return f"weights of make bench-weights ({r['recipe']}; held-out Dice {r['dice_channels']} {dice})"


def _patch(image: np.ndarray, label: np.ndarray, size: tuple[int, ...], rng: np.random.Generator):
    """A random patch of ``size`` (spatial), centred on a foreground voxel two times in three."""
    spatial = image.shape[1:]
    fg = np.argwhere(label > 0)
    if len(fg) and rng.random() < 2 / 3:
        centre = fg[rng.integers(len(fg))]
    else:
        centre = np.array([rng.integers(s) for s in spatial])
    start = [int(np.clip(c - s // 2, 0, max(d - s, 0))) for c, s, d in zip(centre, size, spatial, strict=True)]
    sl = tuple(slice(b, b + s) for b, s in zip(start, size, strict=True))
    return image[(slice(None), *sl)], label[sl]


def _targets(case: Case, label):
    import torch

    if case.label == "regions":  # BraTS regions TC (NCR+ET), WT (all), ET, as the bundles' sigmoid heads
        return torch.stack([(label == 1) | (label == 3), label > 0, label == 3], dim=1).float()
    return label


def _train_one(case: Case, net, data: dict, steps: int, quick: bool, which: str = "net") -> None:
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    image, label = data["image"], data["label"]
    net.train()
    for _ in range(steps):
        if case.data == "vk":
            idx = rng.choice(len(image), size=min(2, len(image)), replace=False)
            x, y = torch.from_numpy(image[idx]), torch.from_numpy(label[idx])
        elif which == "refnet":  # RefNet refines one-hot base labels: learn it on one-hot ground truth slices
            z = rng.choice(label.shape[-1], size=4, replace=False)
            y = torch.from_numpy(label[..., z]).permute(2, 0, 1)
            x = F.one_hot(y, 13).permute(0, 3, 1, 2).float()
        else:
            size = (16, 16, 16) if quick else (32, 32, 32)
            if which == "base":  # Swin UNETR: divisible by 32, and more than one voxel at the bottleneck
                size = (64, 64, 32)
            pairs = [_patch(image, label, size, rng) for _ in range(2)]
            x = torch.from_numpy(np.stack([p[0] for p in pairs]))
            y = torch.from_numpy(np.stack([p[1] for p in pairs]))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x)
        out = (out[0] if isinstance(out, (list, tuple)) else out).float()
        target = _targets(case, y)
        loss = F.binary_cross_entropy_with_logits(out, target) if case.label == "regions" else F.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()


def train_weights(case: str, quick: bool, work_dir: str) -> dict:
    """Briefly train ``case``'s networks on a training phantom and cache their state dicts (reused when present)."""
    import torch

    spec = CASES[case]
    path = _weights_path(Path(work_dir), spec, quick)
    if path.exists():
        return {"path": str(path), "trained": False}
    torch.manual_seed(0)
    nets, _ = build(spec, quick, fast=False)
    data = dict(np.load(make_data(spec.data, "train", quick, work_dir)["path"]))
    steps = QUICK_TRAIN_STEPS if quick else spec.train_steps or TRAIN_STEPS["2d" if spec.data == "vk" else "3d"]
    t0 = time.perf_counter()
    if case == "refnet":
        _train_one(spec, nets["base"], data, steps, quick, which="base")
        _train_one(spec, nets["net"], data, steps, quick, which="refnet")
    else:
        _train_one(spec, nets["net"], data, steps, quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").unlink(missing_ok=True)  # a record of bench.weights would describe other weights
    tmp = path.with_suffix(".tmp")
    torch.save({k: v.state_dict() for k, v in nets.items()}, tmp)
    tmp.replace(path)
    return {"path": str(path), "trained": True, "steps": steps, "train_s": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------------------ measuring
class _Counted:
    """Counts the items a network is called on and remembers one item's shape (for the FLOPs per window).
    ``module``: the torch module whose FLOPs those are, where ``network`` is its OpenVINO stand-in."""

    def __init__(self, network, module=None) -> None:
        self.network = network
        self.module = network if module is None else module
        self.items = 0
        self.item_shape: tuple[int, ...] | None = None

    def __call__(self, x, *args, **kwargs):
        self.items += int(x.shape[0])
        self.item_shape = (1, *x.shape[1:])
        return self.network(x, *args, **kwargs)


class _Timed:
    """Wall time of each call of a wrapped inferer (the base stage of the RefNet cascade)."""

    def __init__(self, inferer) -> None:
        self.inferer = inferer
        self.times: list[float] = []

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.inferer(*args, **kwargs)
        self.times.append(time.perf_counter() - start)
        return out


def _flops(network, item_shape) -> float:
    """Forward FLOPs of one item; on the meta device when the network allows it (no real compute)."""
    import torch

    try:
        return count_flops(copy.deepcopy(network).to("meta"), torch.zeros(item_shape, device="meta"))
    except Exception:
        return count_flops(network, torch.zeros(item_shape))


def label_map(case: Case, logits) -> np.ndarray:
    if case.label == "argmax" and logits.shape[1] == 1:  # already a label map (B, 1, ...)
        return logits[:, 0].to("cpu").numpy().astype(np.uint8)
    if case.label == "regions":
        return (logits.float().sigmoid() > 0.5).to("cpu").numpy().astype(np.uint8)
    return logits.float().argmax(1).to("cpu").numpy().astype(np.uint8)


def _window_crop(image: np.ndarray, label: np.ndarray, size: tuple[int, ...]) -> tuple[slice, ...]:
    """Spatial slices of one ``size`` window centred on the foreground's centroid, inside the volume."""
    spatial = image.shape[-len(size) :]
    fg = np.argwhere(label > 0)
    centre = fg.mean(0).round().astype(int) if len(fg) else np.array(spatial) // 2
    start = [int(np.clip(c - s // 2, 0, max(d - s, 0))) for c, s, d in zip(centre, size, spatial, strict=True)]
    return tuple(slice(b, b + s) for b, s in zip(start, size, strict=True))


def measure(
    case: str,
    fast: bool,
    repeats: int,
    quick: bool,
    work_dir: str,
    retain_memory: bool = False,
    region: str = FULL,
    crop: bool = False,
    runtime: str | None = None,
) -> dict:
    """Time one path of ``case`` on its test phantom; saves the label map for the agreement check.

    ``region`` is ``"full"`` (the whole case) or ``"window"`` (one sliding window of it, centred on the
    foreground). ``retain_memory`` applies :func:`common.allocator.retain_freed_memory` to the fp32 eager path too
    (the allocator ablation; the fast path always applies it). ``crop`` (full case only): what the bundle's
    ``crop_foreground`` does, timed with the rest: the inferer runs on the box of the input's non-zero voxels (the
    skull-stripped brain; the CT's body, air being 0 after the intensity scaling) plus the bundle's ``crop_margin``,
    and the label map is pasted back onto the full grid as background. ``runtime``: the fast path's
    ``fast_cpu_runtime`` (``None``: the case's default); on OpenVINO the result's ``first_pass_s`` is the first
    call, conversion and check included where the run's cache (``ZOO_OPENVINO_CACHE``) did not have them yet.
    """
    import torch
    from monai.data import MetaTensor

    from common.allocator import retain_freed_memory
    from common.fast_inference import FastInferer, bf16_supported
    from common.inferers.foreground import foreground_box

    if retain_memory:
        retain_freed_memory()
    spec = CASES[case]
    nets, inferer = build(spec, quick, fast, runtime)
    # the FastInferer around the sliding window (the base stage's in the RefNet cascade)
    fast_inferer = inferer.base_inferer if spec.key == "refnet" else inferer
    state = torch.load(_weights_path(Path(work_dir), spec, quick), map_location="cpu")
    for name, net in nets.items():
        net.load_state_dict(state[name])
    data = dict(np.load(make_data(spec.data, "test", quick, work_dir)["path"]))
    if region == WINDOW:
        window = tuple(int(r) for r in fast_inferer.inferer.roi_size)
        box = _window_crop(data["image"], data["label"], window)
        data["image"], data["label"] = data["image"][(slice(None), *box)], data["label"][box]
    elif region != FULL:
        raise ValueError(f"measure: region must be {FULL!r} or {WINDOW!r}, got {region!r}.")
    x = torch.from_numpy(np.ascontiguousarray(data["image"]))
    if spec.data != "vk":
        x = x[None]
    if spec.data == "btcv":
        x = MetaTensor(x, affine=torch.as_tensor(data["affine"]))
    # what the inferer runs: the module, or its OpenVINO stand-in (counted as it is called; FLOPs of the module)
    runs = inferer.runtime_network(x, nets["net"]) if isinstance(inferer, FastInferer) else nets["net"]
    counted = {"net": _Counted(runs, module=nets["net"])}
    base_timer = None
    if spec.key == "refnet":
        counted["base"] = _Counted(inferer.base_network)
        inferer.base_network = counted["base"]
        base_timer = _Timed(inferer.base_inferer)
        inferer.base_inferer = base_timer
    out: dict[str, Any] = {}
    if crop and region != FULL:
        raise ValueError(f"measure: crop is for the full case only, not region {region!r}.")
    margin = int(_bundle_parser(spec.config, quick, fast)["crop_margin"]) if crop and spec.config else 0

    def once():
        box = foreground_box(x[0], margin) if crop else tuple(slice(None) for _ in x.shape[2:])
        with torch.no_grad():  # as SupervisedEvaluator runs its inferer
            out["logits"] = inferer(x[(slice(None), slice(None), *box)], counted["net"])
        out["box"] = box

    on_openvino = runs is not nets["net"]
    warmup = spec.warmup(quick, region)
    first_pass_s = None
    window = _one_window_batch(fast_inferer, x) if on_openvino and not warmup else None
    if window is not None:
        # OpenVINO's first call loads (on a new machine: converts and checks) and compiles the network for the
        # window's shape, which every window of the case shares: one window of zeros does it, untimed and reported,
        # where a whole case more would only repeat the timed pass (about 90 s for COHRA-UNet)
        start = time.perf_counter()
        with torch.inference_mode():
            runs(window)
        first_pass_s = time.perf_counter() - start
    else:
        warmup = max(warmup, int(on_openvino))  # its first call converts: untimed, reported
    if warmup:
        start = time.perf_counter()
        once()
        first_pass_s = time.perf_counter() - start
    times = time_call(once, repeats=repeats, warmup=warmup - 1 if warmup else 0)
    calls = repeats + warmup
    flops = {n: c.items / calls * _flops(c.module, c.item_shape) for n, c in counted.items()}
    cropped = label_map(spec, out["logits"])  # (B, *spatial), or (B, regions, *spatial)
    labels = np.zeros((*cropped.shape[: cropped.ndim - (x.ndim - 2)], *x.shape[2:]), np.uint8)
    labels[(..., *out["box"])] = cropped  # outside a cropped box: background
    path = ("fast" if fast else "eager_retain" if retain_memory else "eager") + ("_crop" if crop else "")
    path += f"_{runtime}" if runtime else ""  # a runtime lever keeps the default path's label map
    label_path = Path(work_dir) / "labels" / f"{case}_{region}_{path}{'_quick' if quick else ''}.npy"
    label_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(label_path, labels)
    uses_bf16 = fast and fast_inferer.bf16 and bf16_supported("cpu")  # OpenVINO: bf16 under the same rule
    result = {
        "times": times,
        "dtype": "bfloat16" if uses_bf16 else "float32",
        "flops": sum(flops.values()),
        "flops_by_net": flops,
        "windows": {n: c.items / calls for n, c in counted.items()},
        "label_path": str(label_path),
        "foreground_fraction": float((labels > 0).mean()),
        "runtime": "openvino" if on_openvino else "torch",
        "first_pass_s": first_pass_s,
        "openvino_converted": bool(on_openvino and runs.conversions),
    }
    if base_timer is not None:
        result["base_times"] = base_timer.times[warmup:]
        result["base_flops"] = flops["base"]
    return result


def _one_window_batch(fast_inferer: Any, x: Any) -> Any:
    """One window of zeros shaped as the sliding window of ``fast_inferer`` passes each window of ``x`` to the
    network; ``None`` for an inferer without windows, or one passing several at a time (a last, smaller batch would
    be a shape of its own). The bundles' 3D inferers pass one window at a time on CPU."""
    import torch
    from monai.inferers import SlidingWindowInferer

    inferer = fast_inferer.inferer
    if not isinstance(inferer, SlidingWindowInferer) or (fast_inferer.cpu_sw_batch_size or inferer.sw_batch_size) != 1:
        return None
    return torch.zeros(1, x.shape[1], *inferer.roi_size)


#: The CT of :func:`refnet_bundle_run`: voxels and spacing (mm); ``--quick``: a tiny one with the demo's networks.
BUNDLE_RUN_CT = {"size": (512, 512, 400), "spacing": (0.7, 0.7, 1.0)}
QUICK_BUNDLE_RUN_CT = {"size": (48, 40, 20), "spacing": (8.0, 8.0, 11.0)}


def refnet_bundle_run(quick: bool, work_dir: str) -> dict:
    """``python -m monai.bundle run --config_file configs/inference.json`` of ``refnet_synapse`` on a phantom CT:
    wall time and peak RSS of that process (``os.wait4``: the largest of it and its DataLoader workers).

    Random weights (``--load_pretrain False --load_base_model False``): memory and time do not depend on them.
    With ``quick``, a tiny CT and the networks of the bundle's ``configs/demo.json`` inference overlay.
    """
    import os
    import subprocess
    import sys

    import nibabel as nib

    from common.bundle_run import bundle_env
    from common.synthetic._fields import case_rng
    from common.synthetic.btcv import make_btcv_case

    ct = QUICK_BUNDLE_RUN_CT if quick else BUNDLE_RUN_CT
    work = Path(work_dir) / "refnet_bundle_run"
    name = "x".join(map(str, ct["size"]))
    path = work / f"ct_{name}.nii.gz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        case = make_btcv_case(ct["size"], case_rng(7, 0), spacing=ct["spacing"])
        tmp = path.with_name(".tmp_" + path.name)
        nib.save(nib.Nifti1Image(case.image, case.affine), str(tmp))
        tmp.replace(path)
        del case
    bundle = REPO_ROOT / "bundles" / "refnet_synapse"
    overlay = {"load_pretrain": False, "load_base_model": False}
    if quick:
        demo = json.loads((bundle / "configs" / "demo.json").read_text())["inference"]
        overlay.update({k: v for k, v in demo.items() if k != "datalist"})
    overlay.update({"bundle_root": str(bundle), "dataset_dir": str(path), "output_dir": str(work / "out")})
    overlay_file = work / "overlay.json"
    overlay_file.write_text(json.dumps(overlay))
    configs = [str(bundle / "configs" / "inference.json"), str(overlay_file)]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "[" + ",".join(map(repr, configs)) + "]"]
    log = work / "log.txt"
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=bundle_env(), stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not (work / "out" / f"ct_{name}_seg.nii.gz").is_file():
        raise RuntimeError(f"refnet_bundle_run: inference exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
    return {
        "wall_s": wall,
        "run_peak_rss_mib": usage.ru_maxrss / 1024.0,
        "ct": f"{name} at {' x '.join(map(str, ct['spacing']))} mm",
    }


def dice_agreement(a: np.ndarray, b: np.ndarray, regions: bool) -> float:
    """Mean Dice between two label maps over foreground classes (region channels) present in either; 1 if none."""
    if regions:  # (B, C, ...) binary channels
        pairs = [(a[:, c] > 0, b[:, c] > 0) for c in range(a.shape[1])]
    else:
        classes = sorted(set(np.unique(a)) | set(np.unique(b)) - {0})
        pairs = [(a == c, b == c) for c in classes]
    scores = [2.0 * (p & q).sum() / (p.sum() + q.sum()) for p, q in pairs if p.sum() + q.sum() > 0]
    return float(np.mean(scores)) if scores else 1.0


# ---------------------------------------------------------------------------------------------------------- run
def _call(ctx: Context, target: str, **kwargs: Any) -> dict:
    """``run_isolated`` in full mode; in ``--quick`` mode an in-process call (interpreter start-up would dominate)."""
    if not ctx.quick:
        return run_isolated(target, threads=ctx.threads, **kwargs)
    from bench.harness import peak_rss_mib

    module, _, function = target.partition(":")
    fn = globals()[function] if module == __name__ else None
    if fn is None:
        raise ValueError(f"_call: quick mode runs only functions of {__name__}, got {target!r}.")
    return {**fn(**kwargs), "peak_rss_mib": peak_rss_mib()}


def run(ctx: Context) -> list[dict]:
    """All inference figures; every measurement in its own subprocess (in-process with ``ctx.quick``)."""
    start = time.perf_counter()
    work_dir = str(ctx.work_dir)

    def log(msg: str) -> None:
        print(f"[bench.inference {time.perf_counter() - start:6.0f} s] {msg}", flush=True)

    # OpenVINO's conversions in a folder of this run, emptied first: each run measures a new machine's first call
    openvino_cache = ctx.work_dir / "openvino"
    shutil.rmtree(openvino_cache, ignore_errors=True)
    os.environ["ZOO_OPENVINO_CACHE"] = str(openvino_cache)
    figs: list[dict] = []
    size = 512 if ctx.quick else 2048
    peak = _call(ctx, "bench.inference:matmul_peaks", size=size, repeats=5)
    for dtype in ("float32", "bfloat16"):
        name = f"matmul peak {dtype} ({size}x{size})"
        figs.append(figure("inference", "machine", name, "GFLOP/s", peak[dtype], command=COMMAND))
        log(f"{name}: {np.median(peak[dtype]):.0f} GFLOP/s")
    peak_median = {d: float(np.median(peak[d])) for d in ("float32", "bfloat16")}
    medians: dict[str, dict[bool, float]] = {}

    _call(ctx, "bench.inference:make_inputs", quick=ctx.quick, work_dir=work_dir)
    log("phantom inputs ready")

    for key, case in CASES.items():
        trained = _call(ctx, "bench.inference:train_weights", case=key, quick=ctx.quick, work_dir=work_dir)
        log(f"{key}: weights " + (f"trained in {trained['train_s']:.0f} s" if trained["trained"] else "cached"))
        res: dict[str, dict[bool, dict]] = {}
        for region, fast in case.plan(ctx):
            res.setdefault(region, {})[fast] = r = _call(
                ctx, "bench.inference:measure", case=key, fast=fast, repeats=case.repeats(ctx, region, fast),
                quick=ctx.quick, work_dir=work_dir, region=region,
            )  # fmt: skip
            log(f"{key} {region} {'fast' if fast else 'eager'}: median {np.median(r['times']):.1f} s")
        for region, paths in res.items():
            figs += _case_figures(case, region, paths, peak_median, ctx)
        medians[key] = {fast: float(np.median(r["times"])) for fast, r in res[FULL].items()}
        if key == ALLOCATOR_ABLATION and ctx.ablations:
            figs.append(_allocator_ablation(case, ctx, log))
        if key in CROP_ABLATION and ctx.ablations:
            figs += _crop_ablation(case, res[FULL], ctx, log)
        if key in RUNTIME_ABLATION and ctx.ablations:
            figs += _runtime_ablation(case, res[FULL], ctx, log)
    if ctx.full or ctx.quick:
        figs += _refnet_bundle_run_figures(ctx, log)
    for key, ref in (("cohra", "segresnet"), ("fct", "basicunet")):
        for fast in sorted(set(medians[key]) & set(medians[ref])):  # the paths both measured over the full case
            paths = [_fast_path(default_runtime(CASES[k])) if fast else "fp32 eager" for k in (key, ref)]
            path = f"both {paths[0]}" if paths[0] == paths[1] else f"{paths[0]} / {paths[1]}"
            figs.append(
                figure(
                    "inference",
                    CASES[key].bundle,
                    f"{CASES[key].title} / {CASES[ref].title} wall time, {path}, same full input",
                    "ratio",
                    [medians[key][fast] / medians[ref][fast]],
                    command=COMMAND,
                )
            )
    log("done")
    return figs


def _refnet_bundle_run_figures(ctx: Context, log: Callable[[str], None]) -> list[dict]:
    """Wall time and peak RSS of refnet_synapse's real inference command on a whole CT (see
    :func:`refnet_bundle_run`); ``--full`` only (one run is longer than the budget of ``make bench``), and on a tiny
    CT with ``--quick``."""
    r = _call(ctx, "bench.inference:refnet_bundle_run", quick=ctx.quick, work_dir=str(ctx.work_dir))
    log(f"refnet bundle run on CT {r['ct']}: {r['wall_s']:.0f} s, peak RSS {r['run_peak_rss_mib']:.0f} MiB")
    command = "make bench-full  (python -m bench.run --out bench/results --full)"
    name = f"Swin UNETR base + RefNet: python -m monai.bundle run inference.json, CT {r['ct']}" + (
        " (quick: tiny networks)" if ctx.quick else ""
    )
    notes = (
        "the bundle's command with --load_pretrain False --load_base_model False (random weights), default "
        "num_workers; peak RSS of that process and its DataLoader workers (os.wait4, the largest of them)"
    )
    return [
        figure("inference", "refnet_synapse", name, "s", [r["wall_s"]], command=command, notes=notes),
        figure("inference", "refnet_synapse", name + " [peak RSS]", "MiB", [r["run_peak_rss_mib"]]),
    ]


def _measure_with_lever(case: Case, ctx: Context, fast: bool, **lever: Any) -> dict:
    """One more whole-case measurement of ``case`` with a lever of :func:`measure` set (one timed run, as the
    ablations are; the smoke mode's repeats with ``--quick``)."""
    repeats = 1 if not ctx.quick else ctx.repeats
    return _call(ctx, "bench.inference:measure", case=case.key, fast=fast, repeats=repeats, quick=ctx.quick,
                 work_dir=str(ctx.work_dir), **lever)  # fmt: skip


def _allocator_ablation(case: Case, ctx: Context, log: Callable[[str], None]) -> dict:
    """The fp32 eager path once more with the allocator keeping freed memory: how much of the fast path's gain is
    the allocator alone (SegResNet only: the same ablation on COHRA-UNet would cost another ~2 min)."""
    r = _measure_with_lever(case, ctx, fast=False, retain_memory=True)
    log(f"{case.key} eager + retain_freed_memory: median {np.median(r['times']):.1f} s")
    eager_name = _path_names(case, FULL, ctx)[False]
    return figure(
        "inference",
        case.bundle,
        eager_name.replace("Inferer", "Inferer + retain_freed_memory (allocator ablation)", 1),
        "s",
        r["times"],
        reference=eager_name,
        command=COMMAND,
        notes="common.allocator.retain_freed_memory on the fp32 eager path alone; the fast_cpu path applies it too",
    )


def _crop_ablation(case: Case, full: dict[bool, dict], ctx: Context, log: Callable[[str], None]) -> list[dict]:
    """The fast path over the whole case once more with the bundle's ``crop_foreground``: its time next to the
    uncropped fast path's, the windows it computes, and its label map's agreement with the uncropped fp32 eager one
    (with the fast one where the budget left the eager pass out)."""
    r = _measure_with_lever(case, ctx, fast=True, crop=True)
    log(f"{case.key} fast + crop: median {np.median(r['times']):.1f} s")
    windows = ", ".join(f"{n}: {w:.0f} (uncropped {full[True]['windows'][n]:.0f})" for n, w in r["windows"].items())
    path = _fast_path(default_runtime(case)) + " + crop_foreground"
    return _lever_figures(case, full, r, ctx, "crop_foreground", path, f"network items computed: {windows}")


def _runtime_ablation(case: Case, full: dict[bool, dict], ctx: Context, log: Callable[[str], None]) -> list[dict]:
    """The fast path over the whole case once more on the other runtime (PyTorch where the bundle runs OpenVINO by
    default, OpenVINO where it runs PyTorch): what the runtime contributes, with its agreement."""
    other = "torch" if default_runtime(case) == "openvino" else "openvino"
    r = _measure_with_lever(case, ctx, fast=True, runtime=other)
    log(f"{case.key} fast on {other}: median {np.median(r['times']):.1f} s")
    notes = "first call untimed"
    if r.get("openvino_converted"):
        notes += f" ({r['first_pass_s']:.0f} s, OpenVINO's conversion and check of the window shape included)"
    path = "fast_cpu path on " + ("OpenVINO" if other == "openvino" else "PyTorch")
    return _lever_figures(case, full, r, ctx, f"fast_cpu_runtime {other}", path, notes)


def _lever_figures(
    case: Case, full: dict[bool, dict], r: dict, ctx: Context, lever: str, path: str, notes: str
) -> list[dict]:
    """Time, peak RSS and label-map agreement of the whole case on the default fast path with one lever changed
    (``path`` names it), next to the default fast path; marked ``lever``, which the goals table reads as one."""
    fast_name = _path_names(case, FULL, ctx)[True]
    name = fast_name.replace(_fast_path(default_runtime(case)), f"{path} (lever ablation)", 1)
    reference = full.get(False, full[True])
    against = "fp32 eager" if False in full else "the default fast_cpu path (the budget left fp32 eager out)"
    a, b = np.load(reference["label_path"]), np.load(r["label_path"])
    figs = [
        figure("inference", case.bundle, name, "s", r["times"], reference=fast_name, command=COMMAND, notes=notes),
        figure("inference", case.bundle, name + " [peak RSS]", "MiB", [r["peak_rss_mib"]]),
        figure("inference", case.bundle, f"{name}: label-map agreement with {against} (Dice)", "Dice",
               [dice_agreement(a, b, regions=case.label == "regions")]),
    ]  # fmt: skip
    for fig in figs:
        fig["lever"] = lever  # not the default path: the goals table reads it as a lever
    return figs


def _input(case: Case, region: str, ctx: Context) -> str:
    inp = INPUT_DESC[case.data] if region == FULL else WINDOW_DESC[case.data]
    return inp + (" (quick: tiny)" if ctx.quick else "")


def _fast_path(runtime: str) -> str:
    return "fast_cpu path" + (" on OpenVINO" if runtime == "openvino" else "")


def _path_names(case: Case, region: str, ctx: Context) -> dict[bool, str]:
    eager_path = "fp32 eager " + ("SimpleInferer" if case.data == "vk" else "SlidingWindowInferer")
    inp = _input(case, region, ctx)
    fast_path = _fast_path(default_runtime(case))
    return {fast: f"{case.title}: {fast_path if fast else eager_path}, {inp}" for fast in (False, True)}


def _case_figures(case: Case, region: str, res: dict[bool, dict], peak: dict, ctx: Context) -> list[dict]:
    """Time, GFLOP/s, share of the matmul peak and peak RSS of each measured path over ``region``; where both
    paths ran, the speed-up (as the fast figure's ratio to the eager one) and the label-map agreement."""
    inp = _input(case, region, ctx)
    names = _path_names(case, region, ctx)
    budget_note = None if ctx.quick else BUDGET
    both = len(res) == 2
    figs = []
    for fast, r in sorted(res.items()):
        figs.append(
            figure(
                "inference",
                case.bundle,
                names[fast],
                "s",
                r["times"],
                reference=names[False] if fast and both else None,
                command=COMMAND,
                notes=budget_note if case.heavy else None,
            )
        )
        if fast and region == FULL and case.key in GOALS:
            figs[-1]["goal"] = GOALS[case.key]
        gflops = [r["flops"] / t / 1e9 for t in r["times"]]
        windows = ", ".join(
            f"{n}: {w:.0f} items of {r['flops_by_net'][n] / max(w, 1) / 1e9:.1f} GFLOP" for n, w in r["windows"].items()
        )
        figs.append(figure("inference", case.bundle, names[fast] + " [GFLOP/s]", "GFLOP/s", gflops, notes=windows))
        figs.append(
            figure(
                "inference",
                case.bundle,
                names[fast] + f" [fraction of {r['dtype']} matmul peak]",
                "fraction",
                [g / peak[r["dtype"]] for g in gflops],
            )
        )
        figs.append(figure("inference", case.bundle, names[fast] + " [peak RSS]", "MiB", [r["peak_rss_mib"]]))
        if r.get("openvino_converted"):
            figs.append(
                figure(
                    "inference",
                    case.bundle,
                    names[fast] + " [first call on a new machine]",
                    "s",
                    [r["first_pass_s"]],
                    notes="the untimed first call: OpenVINO converts the network, checks the window shape against "
                    "PyTorch and compiles it, then runs; kept on disk (ZOO_OPENVINO_CACHE), later runs skip it",
                )
            )
        if "base_times" in r:
            base = "Swin UNETR base stage: {path}, " + inp
            figs.append(
                figure(
                    "inference",
                    "reference: Swin UNETR base",
                    base.format(path="fast_cpu path" if fast else "fp32 eager SlidingWindowInferer"),
                    "s",
                    r["base_times"],
                    reference=base.format(path="fp32 eager SlidingWindowInferer") if fast and both else None,
                    notes="timed inside the cascade runs above",
                )
            )
    if both:
        a, b = (np.load(res[f]["label_path"]) for f in (False, True))
        dice = dice_agreement(a, b, regions=case.label == "regions")
        figs.append(
            figure(
                "inference",
                case.bundle,
                f"{case.title}: label-map agreement fast_cpu vs fp32 eager (Dice), {inp}",
                "Dice",
                [dice],
                notes=f"{weights_description(ctx.work_dir, case, ctx.quick)}; foreground fraction "
                f"{res[False]['foreground_fraction']:.4f} (eager), {res[True]['foreground_fraction']:.4f} (fast)",
            )
        )
    return figs
