"""Training benchmarks: step time and peak memory of every bundle next to its reference, MTCM-KD engine overhead,
and the share of a training step spent waiting for data.

Every figure is built from the bundle's own ``configs/train.json`` by MONAI's ``ConfigParser`` (plus the overlay of
its reference network where there is one), so the network, loss, optimizer and trainer are exactly what
``python -m monai.bundle run`` builds. A step is one call of the bundle's trainer ``_iteration`` (prepare batch,
forward, loss, backward, optimizer step); the batch is random tensors of the shape the bundle's training loader
yields, so the figure measures the step and nothing else. Each figure runs in its own process
(:func:`bench.harness.run_isolated`), which gives it its own peak RSS.

The data figures iterate each bundle's own ``train#dataloader`` (its default dataset class, cache and workers)
over synthetic phantoms in the dataset's real layout and size, with the bundle's training step in the loop, and
report the time spent in ``next(loader)`` over the total.

    python -m bench.run --only bench.training
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.harness import REPO_ROOT, Context, figure, run_isolated

BUNDLES_DIR = REPO_ROOT / "bundles"
COMMAND = "make bench  (or: .venv/bin/python -m bench.run --only bench.training)"

# What a trainer needs that data would normally give: an empty loader with an explicit epoch length, and no
# handlers (they would pull in validation, checkpoints and the data-dependent schedules).
_NO_HANDLERS = {"train#handlers": []}
_TRAINER_ONLY = {"train#dataloader": "$[]", "train#trainer#epoch_length": 1, **_NO_HANDLERS}
# The data-dependent ids each bundle's trainer would otherwise resolve while it is built.
_NO_DATA = {
    "cohra_unet_brats": {"fold_items": "$[[], []]", "et_label": 4},
    "mtcm_kd_t1ce_student": {"fold_items": "$[[], []]", "et_label": 4},
    "fct_visible_korean": {},
    "refnet_synapse": {},
}


def parse_bundle(bundle: str, config_names: list[str], overrides: dict[str, Any]):
    """``ConfigParser`` of ``bundles/<bundle>/configs/<names>`` stacked, with ``overrides`` set, parsed."""
    from monai.bundle import ConfigParser

    configs = BUNDLES_DIR / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / name) for name in config_names])
    parser["bundle_root"] = str(BUNDLES_DIR / bundle)
    for key, value in overrides.items():
        parser[key] = value
    parser.parse()
    return parser


def build_trainer(bundle: str, config_names: list[str], overrides: dict[str, Any]):
    """The bundle's ``train#trainer`` without data or handlers, ready for ``trainer._iteration(trainer, batch)``."""
    parser = parse_bundle(bundle, config_names, {**_NO_DATA[bundle], **_TRAINER_ONLY, **overrides})
    if parser.get("initialize"):
        parser.get_parsed_content("initialize")  # seeds (and the MTCM-KD student's initialisation), as a run does
    trainer = parser.get_parsed_content("train#trainer")
    trainer.state.epoch, trainer.state.iteration = 1, 1
    return parser, trainer


def synthetic_batch(kind: str, parser) -> dict:
    """Random tensors shaped like one batch of the bundle's training loader.

    RefNet's slices are 512 x 512 (BTCV's in-plane size; the refinement stage does not resample); the id
    ``bench_slice_size``, which no bundle config has, sets another size for the smoke mode.
    """
    import torch

    g = torch.Generator().manual_seed(0)
    get = parser.get_parsed_content
    if kind in ("brats_regions", "brats_index"):
        batch, roi = int(get("batch_size")), [int(s) for s in get("roi_size")]
        image = torch.randn(batch, 4, *roi, generator=g)
        classes = torch.randint(0, 4, (batch, 1, *roi), generator=g).float()
        if kind == "brats_index":
            return {"image": image, "label": classes}
        regions = torch.cat([classes > 0, (classes == 1) | (classes == 3), classes == 3], dim=1)
        return {"image": image, "label": regions.float()}
    if kind == "vk":
        batch, size = int(get("batch_size")), int(get("image_size"))
        return {
            "image": torch.rand(batch, 3, size, size, generator=g),
            "label": torch.randint(0, int(get("num_classes")), (batch, 1, size, size), generator=g).float(),
        }
    if kind == "refnet":
        # whole axial slices of the refinement volumes: batch_size volumes x slices_per_volume slices each
        batch = int(get("batch_size")) * int(get("slices_per_volume"))
        size, classes = int(parser.get("bench_slice_size", 512)), int(get("num_classes"))
        target = torch.randint(0, classes, (batch, 2, size, size), generator=g)
        image = torch.nn.functional.one_hot(target[:, 1], classes).permute(0, 3, 1, 2).float()
        return {"image": image, "label": target.float()}
    if kind == "btcv":
        batch = int(get("batch_size")) * int(get("samples_per_volume"))
        roi = [int(s) for s in get("roi_size")]
        return {
            "image": torch.rand(batch, 1, *roi, generator=g),
            "label": torch.randint(0, int(get("num_classes")), (batch, 1, *roi), generator=g).float(),
        }
    raise ValueError(f"synthetic_batch: unknown batch kind {kind!r}.")


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def step_times(
    bundle: str, configs: list[str], overrides: dict, batch_kind: str, repeats: int, warmup: int = 1
) -> dict:
    """Worker: wall seconds of the bundle trainer's ``_iteration`` on one synthetic batch, per repeat."""
    import torch

    from bench.harness import time_call

    parser, trainer = build_trainer(bundle, configs, overrides)
    batch = synthetic_batch(batch_kind, parser)
    cpu_start = _cpu_seconds()
    times = time_call(lambda: trainer._iteration(trainer, batch), repeats=repeats, warmup=warmup)
    cpu = (_cpu_seconds() - cpu_start) / (repeats + warmup)
    shapes = {k: list(v.shape) for k, v in batch.items()}
    params = sum(p.numel() for p in trainer.network.parameters())
    return {"times": times, "shapes": shapes, "params": params, "threads": torch.get_num_threads(), "cpu_s": cpu}


# ---- MTCM-KD engine overhead ------------------------------------------------------------------------------------


def mtcm_times(overrides: dict, repeats: int, warmup: int = 1) -> dict:
    """Worker: one MTCM-KD iteration and the same four networks trained independently, timed alternately.

    ``engine`` is the bundle's :class:`~common.engines.mtcm_kd.MTCMKDTrainer` iteration in a KD epoch (3 teachers and
    the CDSFL fusion step, then the student with KD and deep supervision). ``independent`` is what four separate
    trainings would do on the same batch: per network its own channel, forward, the bundle's segmentation loss,
    backward and an Adam step with its own optimizer; no KD, no fusion, no teacher scoring. The two alternate in
    one process (engine, independent, engine, ...), so a change of load on the machine falls on both alike instead
    of deciding their ratio.
    """
    import torch

    parser, trainer = build_trainer("mtcm_kd_t1ce_student", ["train.json"], overrides)
    trainer.state.epoch = 2  # the authors' epoch 1: KD and deep supervision are on from here
    batch = synthetic_batch("brats_index", parser)
    lr = float(parser.get_parsed_content("learning_rate"))
    nets = [(trainer.network, trainer.student_channel, trainer.optimizer)] + [
        (t, c, torch.optim.Adam(t.parameters(), lr=lr))
        for t, c in zip(trainer.teachers, trainer.teacher_channels, strict=True)
    ]
    image, label = batch["image"], batch["label"]

    def independent() -> None:
        for net, channel, optimizer in nets:
            net.train()
            optimizer.zero_grad(set_to_none=trainer.optim_set_to_none)
            out = net(image[:, channel : channel + 1])
            out = out[0] if isinstance(out, (list, tuple)) else out  # the student's deep-supervision list
            trainer.loss_function(out, label).mean().backward()
            optimizer.step()

    steps = {"engine": lambda: trainer._iteration(trainer, batch), "independent": independent}
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {mode: [] for mode in steps}
    cpu_start = _cpu_seconds()
    for _ in range(repeats):
        for mode, step in steps.items():
            start = time.perf_counter()
            step()
            times[mode].append(time.perf_counter() - start)
    cpu = (_cpu_seconds() - cpu_start) / repeats
    return {"times": times, "shapes": {k: list(v.shape) for k, v in batch.items()}, "cpu_s": cpu}


# ---- data pipeline -----------------------------------------------------------------------------------------------


def data_wait(bundle: str, configs: list[str], overrides: dict, steps: int, epoch: int = 1) -> dict:
    """Worker: iterate the bundle's ``train#dataloader`` with its training step in the loop; time ``next(loader)``.

    Returns the wait and step seconds per iteration. The first wait is the epoch start (workers start and fill the
    prefetch queue); the rest is the steady state of a long epoch.
    """
    parser = parse_bundle(bundle, configs, {**_NO_HANDLERS, **overrides})
    if parser.get("initialize"):
        parser.get_parsed_content("initialize")
    loader = parser.get_parsed_content("train#dataloader")
    trainer = parser.get_parsed_content("train#trainer")
    trainer.state.epoch, trainer.state.iteration = epoch, 1
    if len(loader) < steps:
        raise ValueError(f"data_wait: {bundle} loader has {len(loader)} batches, fewer than the {steps} steps asked.")
    waits, step_s = [], []
    batches = iter(loader)
    for _ in range(steps):
        start = time.perf_counter()
        batch = next(batches)
        got = time.perf_counter()
        trainer._iteration(trainer, batch)
        waits.append(got - start)
        step_s.append(time.perf_counter() - got)
    del batches  # stops the workers before the process reports
    return {
        "waits": waits,
        "steps": step_s,
        "num_workers": loader.num_workers,
        "dataset": type(loader.dataset).__name__,
        "batch_shape": list(batch["image"].shape),
    }


# ---- what is measured --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepCase:
    """One training-step figure: a network as a bundle's configs build it, at a given patch and batch."""

    bundle: str
    network: str  # how the figure names the network
    configs: tuple[str, ...]  # stacked in order from bundles/<bundle>/configs/
    batch: str  # synthetic_batch kind
    full: dict = field(default_factory=dict)  # overrides of the full run; {} = the config's own training defaults
    quick: dict = field(default_factory=dict)  # tiny shapes for the smoke mode
    reference: str | None = None  # the ``network`` of the case this one is compared with
    repeats: int | None = None  # fewer repeats than ctx.repeats for the slowest steps
    ablation: bool = False  # measured only when ctx.ablations (make bench-full, and the smoke mode)
    notes: str = ""


# COHRA-UNet's default 128^3 x 2 step would need about 25 GiB here (3.4 GiB measured at 64^3, activations scale
# with the voxels), more than the benchmark machine's memory; both networks are measured at the same 64^3 x 2.
_COHRA_FULL = {"roi_size": [64, 64, 64]}
_COHRA_REDUCED = "REDUCED patch 64^3 (default 128^3 x batch 2 needs about 25 GiB on CPU, 8x the voxels)"
_QUICK_COHRA = {"roi_size": [16, 16, 16], "network_def#channels": [4, 8, 16, 32]}
_QUICK_REFNET = {"network_def#features": [4, 4, 8, 16, 32, 4], "slices_per_volume": 2, "bench_slice_size": 32}

STEP_CASES = (
    StepCase(
        "cohra_unet_brats", "COHRA-UNet", ("train.json",), "brats_regions", full=_COHRA_FULL,
        quick=_QUICK_COHRA, reference="MONAI SegResNet", repeats=2, notes=_COHRA_REDUCED,
    ),
    StepCase(
        "cohra_unet_brats", "MONAI SegResNet", ("train.json", "segresnet.json"), "brats_regions", full=_COHRA_FULL,
        quick={"roi_size": [16, 16, 16], "network_def#init_filters": 8},
        repeats=2,
        notes="configs/segresnet.json: init_filters 16, blocks_down [1, 2, 2, 4], blocks_up [1, 1, 1], COHRA's loss "
        "(DeepSupervisionLoss over DiceFocal) and AdamW; " + _COHRA_REDUCED,
    ),
    StepCase(
        "cohra_unet_brats", "COHRA-UNet, retain_freed_memory false", ("train.json",), "brats_regions",
        full={**_COHRA_FULL, "retain_freed_memory": False},
        quick={**_QUICK_COHRA, "retain_freed_memory": False},
        reference="COHRA-UNet", repeats=1, ablation=True,
        notes="the allocator ablation: glibc's defaults instead of common.allocator.retain_freed_memory (every "
        "bundle's train.json sets it); " + _COHRA_REDUCED,
    ),
    StepCase(
        "fct_visible_korean", "FCT (paper preset)", ("train.json",), "vk",
        quick={"image_size": 64, "network_def#filters": [8, 16, 32, 64, 128, 64, 32, 16, 8],
               "network_def#heads": [1] * 9},
        reference="MONAI BasicUNet 2D", repeats=2, notes="the bundle's default input: 256 x 256, batch 2",
    ),
    StepCase(
        "fct_visible_korean", "MONAI BasicUNet 2D", ("train.json", "basicunet.json"), "vk",
        quick={"image_size": 64, "network_def#features": [8, 8, 16, 32, 64, 8]},
        repeats=2,
        notes="configs/basicunet.json: MONAI BasicUNet 2D with its default features, FCT's loss and optimizer",
    ),
    StepCase(
        "refnet_synapse", "RefNet (stage 2)", ("train.json",), "refnet", full={"slices_per_volume": 4},
        quick=_QUICK_REFNET,
        reference="MONAI SwinUNETR base (stage 1)",
        notes="whole 512 x 512 axial slices, 13-class one-hot input; REDUCED to 4 slices per batch from the default "
        "slices_per_volume 16 (16 slices need about 13 GiB on CPU, 4 measured 3.4 GiB)",
    ),
    StepCase(
        "refnet_synapse", "MONAI SwinUNETR base (stage 1)", ("train_base.json",), "btcv",
        full={"roi_size": [64, 64, 64]},
        quick={"roi_size": [64, 32, 32], "feature_size": 12, "samples_per_volume": 1,
               "network_def#depths": [1, 1, 1, 1], "network_def#num_heads": [1, 1, 1, 1]},
        repeats=1,
        notes="configs/train_base.json: feature_size 48, gradient checkpointing, batch_size 1 volume x "
        "samples_per_volume 2 patches; REDUCED patch 64^3 (default 96^3: one step did not finish in 15 min on the "
        "shared 2-core machine)",
    ),
)  # fmt: skip

# MTCM-KD engine overhead: the default 128^3 x 2 iteration trains four 9.5 M-parameter networks, minutes per
# iteration on two cores; the ratio is measured at 32^3 x 2. The KD terms scale with the voxels like the networks,
# while Python and launch overheads weigh more at small patches, so the ratio is if anything an overestimate.
_MTCM_REDUCED = "REDUCED patch 32^3 x 2 (default 128^3 x 2: minutes per iteration on 2 cores)"
MTCM_FULL = {"roi_size": [32, 32, 32]}
MTCM_QUICK = {"roi_size": [16, 16, 16], "channels": [4, 8, 16, 32]}


@dataclass(frozen=True)
class Phantoms:
    """Synthetic phantoms of one dataset (``python -m common.synthetic``) and the bundle's preparation command."""

    dataset: str
    cases: int
    size: tuple[int, ...]
    prepare: tuple[str, ...]  # module and arguments; {dataset_dir} and {out} are filled in

    def folder(self, work_dir: Path) -> Path:
        return work_dir / "phantoms" / f"{self.dataset}-{self.cases}cases-{'x'.join(map(str, self.size))}"


PHANTOMS_FULL = {
    "brats": Phantoms("brats", 6, (240, 240, 155), ("common.data.brats", "make-split", "--dataset-dir", "{dataset_dir}",
                      "--out", "{out}/datalist.json", "--folds", "4", "--test-fraction", "0")),
    "btcv": Phantoms("btcv", 4, (512, 512, 100), ("common.base_predictions", "corrupt-gt", "--dataset-dir",
                     "{dataset_dir}", "--out", "{out}", "--copies", "2", "--partial-split")),
    "visible_korean": Phantoms("visible_korean", 8, (1216, 2048), ("common.data.visible_korean", "prepare",
                               "--dataset-dir", "{dataset_dir}", "--out", "{out}", "--quality-check", "0",
                               "--block-size", "1", "--test-fraction", "0")),
}  # fmt: skip
PHANTOMS_QUICK = {
    "brats": replace(PHANTOMS_FULL["brats"], cases=4, size=(40, 40, 32)),
    "btcv": replace(PHANTOMS_FULL["btcv"], cases=4, size=(48, 48, 24)),
    "visible_korean": replace(PHANTOMS_FULL["visible_korean"], cases=8, size=(64, 96)),
}
# Each bundle's training items repeated, so one epoch outlasts the measured steps as a real epoch of hundreds of
# cases would (the files are re-read every time: the default datasets cache nothing).
DATA_REPEAT = 4


@dataclass(frozen=True)
class DataCase:
    """One data-pipeline figure: a bundle's own train#dataloader and trainer, on prepared phantoms."""

    bundle: str
    phantoms: str
    data: dict  # overrides pointing the bundle at the prepared phantoms ({dataset_dir} and {prepared} filled in)
    full: dict = field(default_factory=dict)  # step-size overrides of the full run
    quick: dict = field(default_factory=dict)
    epoch: int = 1
    in_quick: bool = False  # the smoke mode runs one data pipeline only: each costs phantoms and worker start-ups
    notes: str = ""


# The 3D steps in the loop are at 32^3 patches: 1/64 of the default 128^3 step's work with almost the same loading
# work per batch (whole volumes are read and normalised before the crop), so the fraction is an upper bound.
_SMALL_STEP = "step at 32^3 patches (default 128^3): an upper bound of the default's fraction"
_BRATS_DATA = {
    "dataset_dir": "{dataset_dir}",
    "split_file": "{prepared}/datalist.json",
    "train#dataset#data": f"$@fold_items[0] * {DATA_REPEAT}",
}
DATA_CASES = (
    DataCase("cohra_unet_brats", "brats", _BRATS_DATA, full={"roi_size": [32, 32, 32]}, quick=_QUICK_COHRA,
             notes=_SMALL_STEP),
    DataCase("mtcm_kd_t1ce_student", "brats", _BRATS_DATA, full={"roi_size": [32, 32, 32]}, quick=MTCM_QUICK,
             epoch=2, notes=_SMALL_STEP),
    DataCase(
        "fct_visible_korean", "visible_korean",
        {"datalist_file": "{prepared}/datalist.json",
         "train#dataset#data": "$common.data.visible_korean.load_datalist(@datalist_file, 'training') * "
         f"{DATA_REPEAT}"},
        quick={"image_size": 64, "network_def#filters": [8, 16, 32, 64, 128, 64, 32, 16, 8],
               "network_def#heads": [1] * 9},
        in_quick=True, notes="the bundle's own step: paper FCT at 256^2, batch 2",
    ),
    DataCase(
        "refnet_synapse", "btcv",
        {"dataset_dir": "{dataset_dir}", "datalist_file": "{prepared}/datalist.json", "num_validation_cases": 1,
         "train#dataset#data": f"$@refinement_split.train * {DATA_REPEAT}"},
        full={"slices_per_volume": 4}, quick=_QUICK_REFNET,
        notes="4 slices per volume instead of 16 (memory): less loading per batch and a 4x shorter step",
    ),
)  # fmt: skip


def _run_module(args: list[str], what: str) -> None:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise RuntimeError(f"{what}: python -m {' '.join(args)} exited with {proc.returncode}:\n{tail}")


def prepare_phantoms(spec: Phantoms, work_dir: Path) -> tuple[Path, Path]:
    """Generate (or reuse) the phantoms and run the bundle's preparation once; returns (dataset_dir, prepared)."""
    dataset_dir = spec.folder(work_dir)
    # benchmarks may prepare the same phantoms differently (split arguments): one folder per preparation
    digest = hashlib.sha256("\0".join(spec.prepare).encode()).hexdigest()[:8]
    prepared = dataset_dir.with_name(f"{dataset_dir.name}-prepared-{digest}")
    done = prepared / "datalist.json"
    if done.is_file():
        return dataset_dir, prepared
    size = [str(s) for s in spec.size]
    _run_module(
        ["common.synthetic", spec.dataset, "--out", str(dataset_dir), "--cases", str(spec.cases), "--size", *size,
         "--quiet"],
        f"{spec.dataset} phantoms",
    )  # fmt: skip
    fill = {"dataset_dir": str(dataset_dir), "out": str(prepared)}
    _run_module([a.format(**fill) for a in spec.prepare], f"{spec.dataset} preparation")
    return dataset_dir, prepared


# ---- figures -----------------------------------------------------------------------------------------------------


def _shape(shape: list[int]) -> str:
    return "x".join(map(str, shape))


class _Progress:
    def __init__(self, module: str) -> None:
        self.module, self.start = module, time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{self.module} +{time.perf_counter() - self.start:5.0f} s] {message}", flush=True)


def _call(ctx: Context, target: str, **kwargs: Any) -> dict:
    """A worker function in its own process (its own peak RSS); in the smoke mode in this one, to stay fast."""
    if not ctx.quick:
        return run_isolated(target, threads=ctx.threads, **kwargs)
    from importlib import import_module

    from bench.harness import peak_rss_mib

    module, _, name = target.partition(":")
    result = getattr(import_module(module), name)(**kwargs)
    return {**result, "peak_rss_mib": peak_rss_mib()}


def step_figures(ctx: Context, progress: _Progress) -> list[dict]:
    results = {}
    cases = [case for case in STEP_CASES if ctx.ablations or not case.ablation]
    for case in cases:
        overrides = case.quick if ctx.quick else case.full
        repeats = 1 if ctx.quick else min(ctx.repeats, case.repeats or ctx.repeats)
        progress(f"{case.bundle}: {case.network} training step")
        results[case.network] = _call(
            ctx, "bench.training:step_times", bundle=case.bundle, configs=list(case.configs), overrides=overrides,
            batch_kind=case.batch, repeats=repeats, warmup=0 if ctx.quick else 1,
        )  # fmt: skip
    figures = []
    for case in cases:
        r = results[case.network]
        size = f"input {_shape(r['shapes']['image'])}"
        ref = results.get(case.reference) if case.reference else None
        ref_size = f"input {_shape(ref['shapes']['image'])}" if ref else ""
        notes = f"{r['params'] / 1e6:.2f} M parameters; {r['cpu_s']:.1f} CPU s per step"
        notes += "; smoke mode: tiny widths and shapes, RSS of the whole run" if ctx.quick else f"; {case.notes}"
        time_name = f"{case.bundle}: {case.network} training step, {size}"
        rss_name = f"{case.bundle}: {case.network} training peak RSS, {size}"
        figures.append(
            figure("training", case.bundle, time_name, "s", r["times"],
                   reference=ref and f"{case.bundle}: {case.reference} training step, {ref_size}",
                   command=COMMAND, notes=notes)
        )  # fmt: skip
        figures.append(
            figure("training", case.bundle, rss_name, "MiB", [r["peak_rss_mib"]],
                   reference=ref and f"{case.bundle}: {case.reference} training peak RSS, {ref_size}",
                   command=COMMAND, notes="peak resident set size of the process: imports, network, one batch, steps")
        )  # fmt: skip
    return figures


def mtcm_figures(ctx: Context, progress: _Progress) -> list[dict]:
    overrides = MTCM_QUICK if ctx.quick else MTCM_FULL
    progress("mtcm_kd_t1ce_student: MTCM-KD iteration and 4 independent steps, alternating")
    r = _call(
        ctx, "bench.training:mtcm_times", overrides=overrides, repeats=ctx.repeats, warmup=0 if ctx.quick else 1,
    )  # fmt: skip
    size = f"input {_shape(r['shapes']['image'])}"
    engine = f"mtcm_kd_t1ce_student: one MTCM-KD iteration (3 teachers + CDSFL + student with KD), {size}"
    independent = f"mtcm_kd_t1ce_student: 4 independent forward/backward/Adam steps of the same networks, {size}"
    bundle = "mtcm_kd_t1ce_student"
    notes = f"timed alternately in one process; {r['cpu_s']:.1f} CPU s per pair; {_MTCM_REDUCED}"
    figures = [
        figure("training", bundle, engine, "s", r["times"]["engine"], reference=independent, command=COMMAND,
               notes=notes),
        figure("training", bundle, independent, "s", r["times"]["independent"], command=COMMAND),
        figure("training", bundle, f"mtcm_kd_t1ce_student: peak RSS of the process running both, {size}", "MiB",
               [r["peak_rss_mib"]], command=COMMAND),
    ]  # fmt: skip
    pairs = zip(r["times"]["engine"], r["times"]["independent"], strict=True)
    figures.append(
        figure("training", bundle, "mtcm_kd_t1ce_student: MTCM-KD iteration / 4 independent steps (per pair)",
               "ratio", [e / i for e, i in pairs], command=COMMAND,
               notes="engine overhead = ratio - 1: KD losses, the CDSFL fusion module and its loss, label "
               "downsampling, teacher whole-tumour Dice")
    )  # fmt: skip
    return figures


def data_figures(ctx: Context, progress: _Progress) -> list[dict]:
    phantoms = PHANTOMS_QUICK if ctx.quick else PHANTOMS_FULL
    steps = 3
    figures = []
    for case in DATA_CASES:
        if ctx.quick and not case.in_quick:
            continue
        spec = phantoms[case.phantoms]
        progress(f"{case.bundle}: {spec.dataset} phantoms {_shape(list(spec.size))}, {spec.cases} cases")
        dataset_dir, prepared = prepare_phantoms(spec, ctx.work_dir.resolve())
        data = {
            k: v.format(dataset_dir=dataset_dir, prepared=prepared) if isinstance(v, str) else v
            for k, v in case.data.items()
        }
        overrides = {**data, **(case.quick if ctx.quick else case.full)}
        progress(f"{case.bundle}: train#dataloader with the training step in the loop, {steps} steps")
        r = _call(
            ctx, "bench.training:data_wait", bundle=case.bundle, configs=["train.json"], overrides=overrides,
            steps=steps, epoch=case.epoch,
        )  # fmt: skip
        waits, step_s = r["waits"], r["steps"]
        steady = sum(waits[1:]) / (sum(waits[1:]) + sum(step_s[1:]))
        loader = f"{r['dataset']}, num_workers {r['num_workers']}, batches {_shape(r['batch_shape'])}"
        source = f"{spec.dataset} phantoms {_shape(list(spec.size))}"
        notes = (
            f"{loader}; {source}; waits per step (s) {', '.join(f'{w:.2f}' for w in waits)}; steps (s) "
            f"{', '.join(f'{s:.2f}' for s in step_s)}"
        )
        figures.append(
            figure("data", case.bundle, f"{case.bundle}: data wait / step time, steady state ({loader})", "fraction",
                   [steady], command=COMMAND,
                   notes=f"{notes}; {'smoke mode: tiny step' if ctx.quick else case.notes}; goal below 0.10")
        )  # fmt: skip
        figures.append(
            figure("data", case.bundle, f"{case.bundle}: data wait at epoch start (first batch)", "s", [waits[0]],
                   command=COMMAND, notes="workers start and load the first batches; once per epoch")
        )  # fmt: skip
    return figures


def run(ctx: Context) -> list[dict]:
    """Training step time and peak RSS per bundle next to its reference, MTCM-KD overhead, data-wait fractions."""
    progress = _Progress("training")
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    figures = step_figures(ctx, progress)
    figures += mtcm_figures(ctx, progress)
    figures += data_figures(ctx, progress)
    progress("done")
    return figures
