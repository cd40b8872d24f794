"""mtcm_kd_t1ce_student: both protocols, the variants, Choi et al. 2023 on FLAIR + T1ce, the two-stage variant from
a finished run's teachers, resume, inference on a lone T1ce file, the exported student.

Tiny sizes: six 48x48x32 phantoms (three folds: four training and two validation cases), 32^3 patches or a 32^3
whole-volume grid (faithful), widths 4-8-16-32 for the student, the teachers and the fusion module alike (one
``channels`` id), and epochs cut to one or two iterations. Most runs are in-process ``ConfigWorkflow`` runs of the
bundle's config stacks (what ``python -m monai.bundle run`` does) so that the networks can be inspected; the faithful
run (``configs/faithful.json`` stacked last) goes through ``python -m monai.bundle run training`` itself. Torch runs
single-threaded here: on a shared 2-core machine two threads per process are several times slower than one.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export
from monai.metrics import DiceMetric
from monai.transforms import LoadImage, NormalizeIntensity

from ci import demo, zoo
from common.data.brats import BratsDataError, BratsFileNotFoundError, read_split, write_split_file
from common.engines.choi_kd import ChoiKDTrainer
from common.engines.distillation import plain
from common.engines.mtcm_kd import MTCMKDTrainer, init_student_weights, unwrap
from common.errors import bad_input_message
from common.metrics.mtcm_kd import SliceDiceMetric, mtcm_kd_slice_dice
from common.networks.cohra_unet import mtcm_kd_backbone
from common.networks.mtcm_kd import TeacherFeatures
from common.synthetic.brats import generate_brats
from tests.helpers import REPO_ROOT

BUNDLE = REPO_ROOT / "bundles" / "mtcm_kd_t1ce_student"
CONFIGS = BUNDLE / "configs"
CHANNELS = [4, 8, 16, 32]
TINY = {"roi_size": [32, 32, 32], "channels": CHANNELS, "num_workers": 0}
VARIANTS = ("t1_student", "no_kd", "no_cdsfl", "choi2023")
CHOI_PAPER = ["variant_choi2023.json", "variant_choi2023_paper.json"]  # the paper's FLAIR + T1ce student
FLAIR, T1CE = 3, 1  # channels of train.json's modalities (T1, T1ce, T2, FLAIR)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def single_thread_env() -> dict[str, str]:
    return {**zoo.bundle_env(), "OMP_NUM_THREADS": "1"}


def run_workflow(configs: list[str], overrides: dict, workflow_type: str = "train", before_run=None) -> ConfigWorkflow:
    """Initialise, run and finalise a stack of the bundle's configs in this process; returns the workflow."""
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in configs],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type=workflow_type,
        **{"bundle_root": str(BUNDLE), **TINY, **overrides},
    )
    workflow.initialize()
    if before_run is not None:
        before_run(workflow)
    workflow.run()
    workflow.finalize()
    return workflow


def authors_split(repo_split: dict) -> list[dict]:
    """The same folds in the MTCM-KD authors' folds_data.json format."""
    folds = sorted({e["fold"] for e in repo_split["training"]})
    return [
        {
            "train_samples": [e["case"] for e in repo_split["training"] if e["fold"] != k],
            "valid_samples": [e["case"] for e in repo_split["training"] if e["fold"] == k],
        }
        for k in folds
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("mtcm_kd")
    generate_brats(root / "brats", cases=6, size=(48, 48, 32), seed=1, workers=1, verbose=False)
    split = write_split_file(root / "brats", root / "datalist.json", folds=3, seed=0)
    (root / "folds_data.json").write_text(json.dumps(authors_split(split)))
    return {"root": root, "dataset_dir": str(root / "brats"), "split_file": str(root / "datalist.json")}


def settings(data: dict, name: str, **extra) -> dict:
    root = data["root"]
    return {
        "dataset_dir": data["dataset_dir"],
        "split_file": data["split_file"],
        "ckpt_dir": str(root / name / "models"),
        "output_dir": str(root / name / "eval"),
        **extra,
    }


@pytest.fixture(scope="module")
def corrected(data) -> dict:
    """One epoch of the default (corrected) protocol: folds 1 and 2 train, fold 0 validates, the split file's testing
    case is held out for evaluate.json."""
    overrides = settings(data, "corrected", epochs=1, val_interval=1)
    workflow = run_workflow(["train.json"], overrides)
    return {"overrides": overrides, "trainer": workflow.parser.get_parsed_content("train#trainer")}


# ---- protocols ------------------------------------------------------------------------------------------------


def test_corrected_protocol_trains_logs_teacher_weights_and_evaluates_natively_with_hd95(data, corrected):
    trainer, overrides = corrected["trainer"], corrected["overrides"]
    assert isinstance(trainer, MTCMKDTrainer) and trainer.kd_reduction == "voxel_mean"
    assert trainer.student_channel == 1 and trainer.teacher_channels == [3, 2, 0]  # T1ce; FLAIR, T2, T1
    scalars = demo.read_scalars(Path(overrides["output_dir"]))
    for i in range(3):
        assert f"teacher_weight_{i}" in scalars and f"teacher_wt_dice_{i}" in scalars
    assert {"loss", "kd_loss", "teacher_loss", "cooperative_loss"} <= set(scalars)

    evaluation = run_workflow(["train.json", "evaluate.json"], overrides)
    summary = json.loads((Path(overrides["output_dir"]) / "metrics_summary.json").read_text())
    held_out = {e["case"] for e in json.loads(Path(data["split_file"]).read_text())["testing"]}
    for region in ("tc", "wt", "et"):
        assert math.isfinite(summary["metrics"][f"val_dice_{region}"])
        assert f"val_hd95_{region}" in summary["metrics"]
        rows = (Path(overrides["output_dir"]) / f"val_hd95_{region}_raw.csv").read_text().splitlines()[1:]
        assert {Path(row.split(",")[0]).parent.name for row in rows} == held_out  # one row per held-out case
    last = evaluation.parser.get_parsed_content("validate#evaluator").state.output[0]
    assert tuple(last["label"].shape) == (3, 48, 48, 32)  # TC/WT/ET at the native grid


def test_faithful_protocol_trains_with_monai_bundle_run_training_and_evaluates_on_the_resized_grid(data, tmp_path):
    overrides = settings(data, "faithful", split_file=str(data["root"] / "folds_data.json"), epochs=1, **TINY)
    overlay = tmp_path / "overlay.json"
    overlay.write_text(json.dumps({"bundle_root": str(BUNDLE), **overrides, "train#trainer#epoch_length": 2}))
    files = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'faithful.json'}','{overlay}']"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", str(CONFIGS / "metadata.json")]
    cmd += ["--config_file", files, "--logging_file", str(CONFIGS / "logging.conf")]
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=single_thread_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "MTCMKDTrainer - INFO - Epoch[1] Complete" in result.stdout
    models = Path(overrides["ckpt_dir"])
    assert set(torch.load(models / "teachers.pt", weights_only=True)) == {
        "teacher_0", "teacher_1", "teacher_2", "fusion", "teacher_optimizer", "teacher_weights"
    }  # fmt: skip

    evaluation = run_workflow(["train.json", "evaluate.json", "faithful.json"], overrides)
    assert evaluation.parser.get_parsed_content("train#trainer").kd_reduction == "batchmean"
    last = evaluation.parser.get_parsed_content("validate#evaluator").state.output[0]
    assert tuple(last["label"].shape) == (3, 32, 32, 32)  # the authors' whole-volume grid
    metrics = json.loads((Path(overrides["output_dir"]) / "metrics_summary.json").read_text())["metrics"]
    # Dice only, the authors' per-slice definition with their regions, as upstream logs it
    assert set(metrics) == {f"val_slice_dice_{r}" for r in ("mean", "tc", "wt", "et", "ncr", "ed")}
    pred, label = last["pred"][None], last["label"][None]
    scores = mtcm_kd_slice_dice(pred, label)
    assert float(scores["mean"]) == pytest.approx(
        (float(scores["N-NE"]) + float(scores["ED"]) + float(scores["ET"])) / 3
    )
    details = (Path(overrides["output_dir"]) / "val_slice_dice_wt_raw.csv").read_text().splitlines()
    assert float(details[-1].split(",")[1]) == pytest.approx(float(scores["whole_tumor"]), abs=1e-6)  # the last case


@pytest.mark.parametrize(
    "stack",
    [
        ["train.json"],
        ["train.json", "evaluate.json"],
        ["inference.json"],
        ["train.json", "variant_no_kd.json"],
        ["train.json", "evaluate.json", "variant_choi2023.json"],
    ],
    ids=lambda stack: "+".join(name.removesuffix(".json") for name in stack),
)
def test_faithful_overlay_stacks_last_on_every_config_stack(stack):
    """faithful.json sets top-level ids only (a nested id whose parent a stack lacks would fail to merge); each is an
    id of train.json, evaluate.json or inference.json, and one stack may ignore what another uses."""
    faithful = json.loads((CONFIGS / "faithful.json").read_text())
    base_ids = set().union(
        *(json.loads((CONFIGS / c).read_text()) for c in ("train.json", "evaluate.json", "inference.json"))
    )
    assert not [k for k in faithful if "#" in k] and set(faithful) - {"_desc_"} <= base_ids

    def parsed(configs: list[str]) -> ConfigParser:
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / c) for c in configs])
        parser["bundle_root"] = str(BUNDLE)
        return parser

    corrected, authors = parsed(stack), parsed([*stack, "faithful.json"])
    assert "protocol" not in corrected.config and "is_faithful" not in corrected.config
    assert type(corrected.get_parsed_content("volume_inferer")).__name__ == "SlidingWindowInferer"
    assert type(authors.get_parsed_content("volume_inferer")).__name__ == "SimpleInferer"
    grid = [type(t).__name__ for t in authors.get_parsed_content("grid_and_intensity")]
    assert grid == ["SpatialCropd", "Resized"]
    assert [type(t).__name__ for t in corrected.get_parsed_content("grid_and_intensity")] == ["NormalizeIntensityd"]
    if "train.json" in stack:
        assert authors.get_parsed_content("crop_and_augment") == [] and corrected.get_parsed_content("crop_and_augment")
        assert authors.get_parsed_content("split_file").endswith("/configs/folds_data.json")
        assert [authors.get_parsed_content(k) for k in ("epochs", "val_interval", "batch_size", "amp")] == [
            25,
            1,
            1,
            False,
        ]
        assert authors.get_parsed_content("kd_reduction") == "batchmean"
        assert authors.get_parsed_content("teacher_dice") == "slices"
    if "inference.json" in stack:  # the prediction goes back to the input's grid only from the authors' one
        assert authors.get_parsed_content("invert_grid") and not corrected.get_parsed_content("invert_grid")
    if "evaluate.json" in stack:
        assert corrected.get_parsed_content("eval_split") == "test" and corrected["extra_metrics"]
        assert (
            authors.get_parsed_content("eval_split") == "validation"
            and authors.get_parsed_content("extra_metrics") == {}
        )


def test_faithful_overlay_resolves_the_authors_loss_teacher_dice_and_slice_dice_metrics():
    """train.json alone: volumetric loss, 3D teacher Dice, MONAI Dice metrics; + faithful.json: the authors' loss
    reduction, per-slice teacher Dice and per-slice Dice metrics (also under evaluate.json)."""

    def parsed(configs: list[str]) -> ConfigParser:
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / c) for c in configs])
        parser["bundle_root"] = str(BUNDLE)
        return parser

    def metric_fns(parser: ConfigParser, key: str) -> dict:
        return {name: handler.metric_fn for name, handler in parser.get_parsed_content(key).items()}

    corrected, authors = parsed(["train.json"]), parsed(["train.json", "faithful.json"])
    assert corrected.get_parsed_content("seg_loss").reduction_dims is None
    assert authors.get_parsed_content("seg_loss").reduction_dims == (0, 2, 3)
    assert corrected.config["train"]["trainer"]["teacher_dice"] == "@teacher_dice"
    assert corrected.get_parsed_content("teacher_dice") == "volume"
    assert authors.get_parsed_content("teacher_dice") == "slices"

    key, dice = metric_fns(corrected, "validate#key_metric"), metric_fns(corrected, "validate#dice_metrics")
    assert list(key) == ["val_mean_dice"] and list(dice) == ["val_dice_tc", "val_dice_wt", "val_dice_et"]
    assert all(type(m) is DiceMetric for m in [*key.values(), *dice.values()])

    key, dice = metric_fns(authors, "validate#key_metric"), metric_fns(authors, "validate#dice_metrics")
    assert {name: m.regions for name, m in key.items()} == {"val_slice_dice_mean": ("mean",)}
    assert {name: m.regions for name, m in dice.items()} == {
        "val_slice_dice_tc": ("tumor_core",), "val_slice_dice_wt": ("whole_tumor",), "val_slice_dice_et": ("ET",),
        "val_slice_dice_ncr": ("N-NE",), "val_slice_dice_ed": ("ED",),
    }  # fmt: skip
    assert all(isinstance(m, SliceDiceMetric) for m in [*key.values(), *dice.values()])
    evaluation = parsed(["train.json", "evaluate.json", "faithful.json"])
    assert set(metric_fns(evaluation, "validate#additional_metrics")) == set(dice)


# ---- resume -----------------------------------------------------------------------------------------------------


def test_resume_restores_every_network_optimizer_teacher_weight_and_the_epoch(corrected):
    overrides = {**corrected["overrides"], "epochs": 2, "resume": True, "train#trainer#epoch_length": 1}
    saved = torch.load(Path(overrides["ckpt_dir"]) / "checkpoint_epoch=1.pt", weights_only=False)
    seen: dict = {}

    def compare_at_start(workflow: ConfigWorkflow) -> None:
        trainer = workflow.parser.get_parsed_content("train#trainer")

        @trainer.on(Events.EPOCH_STARTED)
        def _restored(engine: MTCMKDTrainer) -> None:
            seen.setdefault("epochs", []).append(engine.state.epoch)
            if len(seen["epochs"]) > 1:
                return
            items = engine.checkpoint_items()
            for key in ("network", "teacher_0", "teacher_1", "teacher_2", "fusion"):
                for name, value in items[key].state_dict().items():
                    torch.testing.assert_close(value, saved[key][name], msg=f"{key}.{name} not restored")
            for key in ("optimizer", "teacher_optimizer"):
                state = items[key].state_dict()["state"]
                assert state.keys() == saved[key]["state"].keys() and state, f"{key} state not restored"
                for index, values in state.items():
                    for name, value in values.items():
                        torch.testing.assert_close(value, saved[key]["state"][index][name], msg=f"{key} {name}")
            assert items["teacher_weights"].weights == saved["teacher_weights"]["weights"].tolist()
            assert engine.state.teacher_weights == saved["teacher_weights"]["weights"].tolist()

    run_workflow(["train.json"], overrides, before_run=compare_at_start)
    assert seen["epochs"] == [2]  # epoch 1 was not repeated
    assert (Path(overrides["ckpt_dir"]) / "checkpoint_epoch=2.pt").is_file()


def test_warm_start_continues_from_the_released_student_and_teachers(data, corrected):
    released = Path(corrected["overrides"]["ckpt_dir"])
    student = torch.load(released / "model.pt", weights_only=True)
    teachers = torch.load(released / "teachers.pt", weights_only=True)
    overrides = settings(data, "warm", epochs=1, val_interval=2, warm_start=True, warm_start_dir=str(released))
    seen: list[str] = []

    def compare_at_start(workflow: ConfigWorkflow) -> None:
        @workflow.parser.get_parsed_content("train#trainer").on(Events.EPOCH_STARTED)
        def _loaded(engine: MTCMKDTrainer) -> None:
            items = engine.checkpoint_items()
            for key, saved in [("network", student), *((k, teachers[k]) for k in ("teacher_0", "teacher_2", "fusion"))]:
                for name, value in items[key].state_dict().items():
                    torch.testing.assert_close(value, saved[name], msg=f"{key}.{name} not loaded")
                seen.append(key)

    run_workflow(["train.json"], overrides, before_run=compare_at_start)
    assert seen == ["network", "teacher_0", "teacher_2", "fusion"]


# ---- variants ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_overlay_trains_one_epoch(data, variant):
    overrides = settings(data, variant, epochs=1, val_interval=2, **{"train#trainer#epoch_length": 1})
    workflow = run_workflow(["train.json", f"variant_{variant}.json"], overrides)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 1 and trainer.state.iteration == 1
    saved = torch.load(Path(overrides["ckpt_dir"]) / "checkpoint_epoch=1.pt", weights_only=False)
    base = {"network", "optimizer", "trainer", "lr_scheduler", "evaluator", "best_model_saver"}  # + best metric, file
    teachers = {"teacher_0", "teacher_1", "teacher_2", "teacher_optimizer", "teacher_weights"}
    if variant == "t1_student":
        assert trainer.student_channel == 0 and trainer.teacher_channels == [3, 2, 1]  # T1; FLAIR, T2, T1ce
        assert set(saved) == base | teachers | {"fusion"}
    elif variant == "no_kd":
        assert not trainer.use_kd and trainer.teachers == []
        assert set(saved) == base
    elif variant == "no_cdsfl":
        assert trainer.fusion is None and len(trainer.teachers) == 3
        assert set(saved) == base | teachers
    else:
        assert isinstance(trainer, ChoiKDTrainer) and trainer.teacher_channels == [0, 1, 2, 3]
        assert trainer.student_channel == T1CE and trainer.student_channels == [T1CE]  # the T1ce student of MTCM-KD
        assert set(saved) == base | {"teacher_0", "teacher_optimizer"}
        assert saved["teacher_0"]["stem.0.conv_block.0.weight"].shape[1] == 4  # the multimodal teacher
    assert saved["network"]["stem.0.conv_block.0.weight"].shape[1] == 1  # always a one-channel student
    paths = workflow.parser.get_parsed_content("fold_items")[1][0]["image"]
    picked = workflow.parser.get_parsed_content("validate#student_file")({"image": paths})["image"]
    assert picked == paths[trainer.student_channel]  # validation loads the one file, a path as before


def test_ablation_method_settings_are_the_variant_overlays():
    grid = json.loads((CONFIGS / "ablation.json").read_text())
    settings_ = grid["axes"]["method"]["settings"]
    assert grid["axes"]["method"]["default"] == "mtcm_kd" and settings_["mtcm_kd"] == {}
    for name in ("no_kd", "no_cdsfl", "choi2023"):
        overlay = json.loads((CONFIGS / f"variant_{name}.json").read_text())
        assert settings_[name] == {k: v for k, v in overlay.items() if k not in ("_desc_", "ckpt_dir", "output_dir")}


# ---- Choi et al. 2023 as published: the student on FLAIR + T1ce -------------------------------------------------


def test_choi2023_paper_overlay_gives_a_flair_t1ce_student_and_feeds_it_those_channels_in_that_order(data):
    overrides = {"bundle_root": str(BUNDLE), **TINY, **settings(data, "choi_paper_resolve")}
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in ["train.json", *CHOI_PAPER]])
    parser.update(overrides)
    assert parser.get_parsed_content("student_modalities") == ["flair", "t1ce"]
    trainer = parser.get_parsed_content("train#trainer")
    assert isinstance(trainer, ChoiKDTrainer) and trainer.student_channels == [FLAIR, T1CE]
    assert trainer.network.in_channels == 2 and trainer.teacher.in_channels == 4

    # training: what reaches the student's forward is the batch's FLAIR channel, then its T1ce channel
    seen: list[torch.Tensor] = []
    trainer.network.register_forward_pre_hook(lambda module, args: seen.append(plain(args[0]).detach().clone()))
    batch = next(iter(parser.get_parsed_content("train#dataloader")))
    trainer._iteration(trainer, batch)
    image = plain(batch["image"])
    assert len(seen) == 1 and seen[0].shape[1] == 2
    torch.testing.assert_close(seen[0], image[:, [FLAIR, T1CE]])
    assert not torch.equal(seen[0], image[:, [T1CE, FLAIR]])

    # validation and evaluation: the student's two files of each case, stacked in the same order
    item = parser.get_parsed_content("fold_items")[1][0]
    loaded = parser.get_parsed_content("validate#preprocessing")(dict(item))["image"]
    assert loaded.shape == (2, 48, 48, 32)
    for channel, path in enumerate([item["image"][FLAIR], item["image"][T1CE]]):
        expected = NormalizeIntensity(nonzero=True, channel_wise=True)(LoadImage(ensure_channel_first=True)(path))
        torch.testing.assert_close(plain(loaded[channel : channel + 1]), plain(expected))

    # without variant_choi2023.json, MTCM-KD's trainer (one student channel) refuses the two-channel student
    alone = ConfigParser()
    alone.read_config([str(CONFIGS / c) for c in ["train.json", "variant_choi2023_paper.json"]])
    alone.update(overrides)
    with pytest.raises(RuntimeError) as raised:
        alone.get_parsed_content("train#trainer")
    causes = [raised.value]
    while causes[-1].__cause__ is not None:
        causes.append(causes[-1].__cause__)
    assert any("reads 2 channel(s)" in str(e) and "before variant_choi2023_paper.json" in str(e) for e in causes)

    # the overlay keeps its own checkpoints and outputs, away from the T1ce-only Choi student's
    own = ConfigParser()
    own.read_config([str(CONFIGS / c) for c in ["train.json", *CHOI_PAPER]])
    own["bundle_root"] = "."
    assert own.get_parsed_content("ckpt_dir") == "./models/choi2023_flair_t1ce"
    assert own.get_parsed_content("output_dir") == "./eval/choi2023_flair_t1ce"


@pytest.fixture(scope="module")
def choi_paper(data, tmp_path_factory) -> dict:
    """One epoch of train.json + variant_choi2023.json + variant_choi2023_paper.json through
    ``python -m monai.bundle run training``, validating once (so the best student becomes model.pt)."""
    overrides = settings(data, "choi_paper", epochs=1, val_interval=1)
    overlay = tmp_path_factory.mktemp("choi_paper") / "overlay.json"
    overlay.write_text(json.dumps({"bundle_root": str(BUNDLE), **TINY, **overrides, "train#trainer#epoch_length": 2}))
    files = "[" + ",".join(f"'{CONFIGS / c}'" for c in ["train.json", *CHOI_PAPER]) + f",'{overlay}']"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", str(CONFIGS / "metadata.json")]
    cmd += ["--config_file", files, "--logging_file", str(CONFIGS / "logging.conf")]
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=single_thread_env(), capture_output=True, text=True)
    return {"overrides": overrides, "result": result}


def test_choi2023_paper_stack_trains_through_monai_bundle_run_and_writes_a_two_channel_student(choi_paper):
    result, models = choi_paper["result"], Path(choi_paper["overrides"]["ckpt_dir"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ChoiKDTrainer - INFO - Epoch[1] Complete" in result.stdout
    student = torch.load(models / "model.pt", weights_only=True)
    assert student["stem.0.conv_block.0.weight"].shape[1] == 2  # FLAIR + T1ce
    teachers = torch.load(models / "teachers.pt", weights_only=True)
    assert set(teachers) == {"teacher_0", "teacher_optimizer"}
    assert teachers["teacher_0"]["stem.0.conv_block.0.weight"].shape[1] == 4


def test_choi2023_paper_student_is_scored_by_evaluate_json_and_runs_inference_on_two_files_per_case(
    data, choi_paper, tmp_path
):
    assert choi_paper["result"].returncode == 0, choi_paper["result"].stderr[-3000:]
    overrides = choi_paper["overrides"]
    evaluation = run_workflow(["train.json", "evaluate.json", *CHOI_PAPER], overrides)
    summary = json.loads((Path(overrides["output_dir"]) / "metrics_summary.json").read_text())
    for region in ("tc", "wt", "et"):
        assert math.isfinite(summary["metrics"][f"val_dice_{region}"])
    last = evaluation.parser.get_parsed_content("validate#evaluator").state.output[0]
    assert tuple(last["image"].shape) == (2, 48, 48, 32)

    # inference.json: the paper overlay alone on it; a dataset folder lists each case's FLAIR and T1ce files
    out = tmp_path / "out"
    infer = {"dataset_dir": data["dataset_dir"], "ckpt_dir": overrides["ckpt_dir"], "output_dir": str(out)}
    infer["fast_cpu_runtime"] = "torch"  # in this process: OpenVINO's thread pool would not survive later forks
    workflow = run_workflow(["inference.json", "variant_choi2023_paper.json"], infer, workflow_type="infer")
    datalist = workflow.parser.get_parsed_content("datalist")
    assert [Path(p).name.split("_")[-1] for p in datalist[0]["image"]] == ["flair.nii.gz", "t1ce.nii.gz"]
    cases = sorted(p.name for p in Path(data["dataset_dir"]).iterdir() if p.is_dir())
    assert sorted(p.name for p in out.iterdir()) == [".run.json", *(f"{case}_seg.nii.gz" for case in cases)]
    prediction = nib.load(out / f"{cases[0]}_seg.nii.gz")
    assert prediction.shape == (48, 48, 32)
    assert set(np.unique(np.asarray(prediction.dataobj)).tolist()) <= {0, 1, 2, 4}

    # a lone case: input_image lists its files, FLAIR then T1ce
    lone = {**infer, "input_image": datalist[0]["image"], "output_dir": str(tmp_path / "lone")}
    run_workflow(["inference.json", "variant_choi2023_paper.json"], lone, workflow_type="infer")
    assert sorted(p.name for p in (tmp_path / "lone").iterdir()) == [".run.json", f"{cases[0]}_flair_seg.nii.gz"]


# ---- two-stage: the frozen teachers of a finished run distil into a fresh student ---------------------------------

TEACHER_KEYS = ("teacher_0", "teacher_1", "teacher_2", "fusion")


def bundle_run(configs: list, *args: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run --config_file [configs] *args``, as a user types it, single-threaded."""
    files = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files]
    cmd += ["--logging_file", str(CONFIGS / "logging.conf"), *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=single_thread_env(), capture_output=True, text=True)


def test_two_stage_trains_through_monai_bundle_run_from_the_teachers_of_a_one_epoch_run(data, corrected, tmp_path):
    stage_one = Path(corrected["overrides"]["ckpt_dir"])
    teachers = torch.load(stage_one / "teachers.pt", weights_only=True)
    overrides = settings(data, "two_stage", epochs=1, val_interval=1)
    overlay = tmp_path / "overlay.json"
    overlay.write_text(json.dumps({"bundle_root": str(BUNDLE), **TINY, **overrides, "train#trainer#epoch_length": 2}))
    configs = [CONFIGS / "train.json", CONFIGS / "variant_two_stage.json", overlay]
    result = bundle_run(configs, "--teachers_from", str(stage_one / "teachers.pt"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "MTCMKDTrainer - INFO - Epoch[1] Complete" in result.stdout
    assert "Frozen teachers scored on one pass of the training data" in result.stdout

    saved = torch.load(Path(overrides["ckpt_dir"]) / "checkpoint_epoch=1.pt", weights_only=False)
    for key in TEACHER_KEYS:  # frozen: after two training iterations still the stage-one teachers, bit for bit
        assert saved[key].keys() == teachers[key].keys()
        for name, value in saved[key].items():
            assert torch.equal(value, teachers[key][name]), f"{key}.{name} changed"
    assert saved["teacher_optimizer"]["state"] == {}  # never stepped, and its stage-one state was not loaded
    weights = saved["teacher_weights"]["weights"]
    assert weights.shape == (3,) and float(weights.sum()) == pytest.approx(0.15)  # from Dice, not the initial 0.1s
    released = torch.load(stage_one / "model.pt", weights_only=True)
    assert saved["network"].keys() == released.keys()
    assert not torch.equal(saved["network"]["stem.0.conv_block.0.weight"], released["stem.0.conv_block.0.weight"])
    scalars = demo.read_scalars(Path(overrides["output_dir"]))
    assert scalars["kd_loss"] and all(v > 0 for _, v in scalars["kd_loss"])  # KD from the first iteration
    for i in range(3):
        assert f"teacher_weight_{i}" in scalars and f"teacher_wt_dice_{i}" in scalars
    assert {"teacher_loss", "cooperative_loss", "teacher_0_wt_dice"} <= set(scalars)


def test_teachers_from_loads_teachers_fusion_and_weights_and_leaves_the_student_fresh(data, corrected):
    path = Path(corrected["overrides"]["ckpt_dir"]) / "teachers.pt"
    teachers = torch.load(path, weights_only=True)

    def parsed(configs: list[str], **extra) -> ConfigParser:
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / c) for c in configs])
        parser.update({"bundle_root": str(BUNDLE), **TINY, **settings(data, "two_stage_parsed"), **extra})
        parser.get_parsed_content("initialize")  # the seed and the student's initialisation, as a run does
        return parser

    def loaded(parser: ConfigParser) -> dict:
        trainer = parser.get_parsed_content("train#trainer")
        parser.get_parsed_content("train#teachers_loader")(trainer)  # what the run attaches, called here
        return trainer.checkpoint_items()

    fresh = parsed(["train.json"])
    fresh_student = {k: v.clone() for k, v in fresh.get_parsed_content("network").state_dict().items()}
    fresh_teacher = fresh.get_parsed_content("train#trainer").teachers[0].state_dict()
    assert not all(torch.equal(v, teachers["teacher_0"][k]) for k, v in fresh_teacher.items())

    frozen = parsed(["train.json", "variant_two_stage.json"], teachers_from=str(path))
    items = loaded(frozen)
    assert not items["trainer"].train_teachers and items["trainer"].kd_start_epoch == 0
    for key in TEACHER_KEYS:
        for name, value in items[key].state_dict().items():
            assert torch.equal(value, teachers[key][name]), f"{key}.{name} not loaded"
    assert items["teacher_weights"].weights == teachers["teacher_weights"]["weights"].tolist()
    assert items["teacher_optimizer"].state_dict()["state"] == {}  # frozen teachers: the optimizer is not loaded
    student = items["network"].state_dict()
    assert student.keys() == fresh_student.keys()
    assert all(torch.equal(student[k], v) for k, v in fresh_student.items())  # the same seed's fresh student

    # teachers that go on training (teachers_from without the overlay) continue with their optimizer's state too
    online = loaded(parsed(["train.json"], teachers_from=str(path)))
    assert online["trainer"].train_teachers
    assert online["teacher_optimizer"].state_dict()["state"].keys() == teachers["teacher_optimizer"]["state"].keys()


def test_two_stage_refuses_frozen_teachers_without_teachers_from_and_names_a_file_that_lacks_one(
    data, corrected, tmp_path
):
    overrides = {"bundle_root": str(BUNDLE), **TINY, **settings(data, "two_stage_refused")}
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in ["train.json", "variant_two_stage.json"]])
    parser.update(overrides)
    with pytest.raises(RuntimeError) as refused:
        parser.get_parsed_content("train#teachers_loader")
    message = bad_input_message(refused.value)
    assert message and message.startswith("train_teachers is false") and "--teachers_from" in message

    own = ConfigParser()  # its own folders, also under evaluate.json (which needs no teachers_from)
    own.read_config([str(CONFIGS / c) for c in ["train.json", "evaluate.json", "variant_two_stage.json"]])
    own["bundle_root"] = "."
    assert own.get_parsed_content("ckpt_dir") == "./models/two_stage"
    assert own.get_parsed_content("output_dir") == "./eval/two_stage"

    teachers = torch.load(Path(corrected["overrides"]["ckpt_dir"]) / "teachers.pt", weights_only=True)
    lacking = tmp_path / "teachers.pt"
    torch.save({k: v for k, v in teachers.items() if k != "fusion"}, lacking)
    overlay = tmp_path / "overlay.json"
    overlay.write_text(json.dumps(overrides))
    configs = [CONFIGS / "train.json", CONFIGS / "variant_two_stage.json", overlay]
    result = bundle_run(configs, "--teachers_from", str(lacking))
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: teachers_from {lacking} lacks fusion (it holds teacher_0, "), result.stderr[-3000:]


# ---- inference and export ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overlays", "name", "labels"), [(["faithful.json"], "scan_t1ce", {0, 1, 2, 4}), ([], "x-t1c", {0, 1, 2, 3})]
)
def test_inference_on_a_lone_t1ce_file_keeps_its_grid_and_label_convention(data, tmp_path, overlays, name, labels):
    source = Path(data["dataset_dir"]) / "BraTS2021_00002" / "BraTS2021_00002_t1ce.nii.gz"
    image = tmp_path / "in" / f"{name}.nii.gz"
    image.parent.mkdir()
    shutil.copyfile(source, image)
    torch.manual_seed(0)
    (tmp_path / "models").mkdir()
    torch.save(mtcm_kd_backbone(channels=CHANNELS).state_dict(), tmp_path / "models" / "model.pt")
    overrides = {
        "input_image": str(image),
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "out"),
        "fast_cpu_runtime": "torch",  # in this process: OpenVINO's thread pool would not survive later forks
    }
    workflow = run_workflow(["inference.json", *overlays], overrides, workflow_type="infer")
    assert workflow.parser.get_parsed_content("et_label") == max(labels)  # BraTS 2023 names: ET = 3
    prediction = nib.load(tmp_path / "out" / f"{name}_seg.nii.gz")
    original = nib.load(image)
    assert prediction.shape == original.shape
    np.testing.assert_allclose(prediction.affine, original.affine)
    assert prediction.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(prediction.dataobj)).tolist()) <= labels


def test_torchscript_export_holds_only_the_student_and_teachers_are_saved_beside_it(corrected, tmp_path):
    models = Path(corrected["overrides"]["ckpt_dir"])
    exported = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(exported),
        ckpt_file=str(models / "model.pt"),
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        bundle_root=str(BUNDLE),
        channels=CHANNELS,
    )
    scripted = torch.jit.load(str(exported))
    student = mtcm_kd_backbone(channels=CHANNELS).eval()
    student.load_state_dict(torch.load(models / "model.pt", weights_only=True))
    assert set(scripted.state_dict()) == set(student.state_dict())  # no teacher, no fusion
    assert scripted.state_dict()["stem.0.conv_block.0.weight"].shape[1] == 1
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), student(x))

    teachers = torch.load(models / "teachers.pt", weights_only=True)
    for i in range(3):
        mtcm_kd_backbone(channels=CHANNELS, deep_supervision=False).load_state_dict(teachers[f"teacher_{i}"])
    assert teachers["teacher_weights"]["weights"].shape == (3,)


# ---- protocol helpers --------------------------------------------------------------------------------------------


def test_read_split_reads_both_split_formats_and_names_bad_ones(data, tmp_path):
    repo_train, repo_val, test = read_split(data["split_file"], data["dataset_dir"], 1)
    authors_train, authors_val, no_test = read_split(data["root"] / "folds_data.json", data["dataset_dir"], 1)
    # 6 cases: round(0.2 x 6) = 1 held out as the split file's testing list, 5 in folds of 2, 2, 1
    assert len(test) == 1 and no_test == [] and len(repo_train) + len(repo_val) == 5
    assert not {i["case"] for i in test} & {i["case"] for i in repo_train + repo_val}
    assert sorted(i["case"] for i in authors_val) == sorted(i["case"] for i in repo_val)
    assert sorted(i["image"][1] for i in authors_train) == sorted(i["image"][1] for i in repo_train)
    assert all(i["image"][1].endswith("_t1ce.nii.gz") and i["label"].endswith("_seg.nii.gz") for i in authors_train)

    # a file without a testing list (the authors', SwinUNETR's) can hold out a fold instead
    held_train, held_val, test = read_split(data["root"] / "folds_data.json", data["dataset_dir"], 1, test_fold=-1)
    assert held_val == authors_val and {i["case"] for i in test} == {
        i["case"] for i in read_split(data["root"] / "folds_data.json", data["dataset_dir"], 2)[1]
    }
    assert {i["case"] for i in held_train} == {i["case"] for i in authors_train} - {i["case"] for i in test}
    with pytest.raises(BratsDataError, match="test_fold 1 is the validation fold"):
        read_split(data["root"] / "folds_data.json", data["dataset_dir"], 1, test_fold=1)
    with pytest.raises(BratsDataError, match="holds a 'testing' list"):
        read_split(data["split_file"], data["dataset_dir"], 1, test_fold=-1)
    with pytest.raises(BratsDataError, match=r"has folds \[0, 1, 2\]; got fold 5"):
        read_split(data["root"] / "folds_data.json", data["dataset_dir"], 5)
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps([{"train_samples": ["BraTS2021_00000", "BraTS2021_09999"], "valid_samples": []}]))
    with pytest.raises(BratsFileNotFoundError, match="BraTS2021_09999"):
        read_split(missing, data["dataset_dir"], 0)
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"train": [], "val": []}]))
    with pytest.raises(BratsDataError, match="neither known format"):
        read_split(other, data["dataset_dir"], 0)
    with pytest.raises(BratsDataError, match="remake it with --modalities flair t1ce t2 t1"):
        read_split(data["split_file"], data["dataset_dir"], 0, modalities=["flair", "t1ce", "t2", "t1"])


def test_student_initialisation_and_checkpoint_items_of_wrapped_networks():
    torch.manual_seed(0)
    net = mtcm_kd_backbone(channels=(16, 32, 64, 128))
    deconv_before = net.decoder[0].upsample.deconv.weight.detach().clone()
    init_student_weights(net)
    conv = (
        net.encoder[1][0].conv_block[5].weight.detach()
    )  # 64 -> 64 channels, 3^3: xavier std = sqrt(2 / (2 * 64 * 27))
    assert float(conv.std()) == pytest.approx(math.sqrt(1 / (64 * 27)), rel=0.05)
    biases = [m.bias.detach() for m in net.modules() if isinstance(m, torch.nn.Conv3d) and m.bias is not None]
    assert biases and all(float(b.abs().max()) == 0 for b in biases)
    assert torch.equal(net.decoder[0].upsample.deconv.weight, deconv_before)  # transposed convs keep theirs

    teacher = mtcm_kd_backbone(channels=CHANNELS, deep_supervision=False)
    assert unwrap(TeacherFeatures(teacher)) is teacher and unwrap(torch.nn.DataParallel(teacher)) is teacher


# ---- benchmark (slow tier) ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_benchmark_no_kd_against_mtcm_kd_with_the_same_budget(tmp_path):
    """The unimodal student without KD against MTCM-KD: same phantoms, split, budget and seed, through the ablation
    runner (``python -m common.ablation``) with the ``method`` axis restricted to those two. Prints WT/TC/ET Dice of
    both; asserts only that both runs completed with finite Dice (phantom numbers say nothing about real data)."""
    generate_brats(tmp_path / "brats", cases=20, size=(64, 64, 48), seed=3, workers=1, verbose=False)
    write_split_file(tmp_path / "brats", tmp_path / "datalist.json", folds=5, seed=0)
    grid = json.loads((CONFIGS / "ablation.json").read_text())
    method = grid["axes"]["method"]
    method["settings"] = {k: v for k, v in method["settings"].items() if k in ("mtcm_kd", "no_kd")}
    epochs = 20  # 12 training cases (fold 0 validates, 4 test cases held out), batch 2: 120 iterations
    grid["base"] = {
        "dataset_dir": str(tmp_path / "brats"),
        "split_file": str(tmp_path / "datalist.json"),
        "roi_size": [32, 32, 32],
        "channels": [8, 16, 32, 64],
        "epochs": epochs,
        "val_interval": epochs,
        "learning_rate": 0.002,
        "num_workers": 0,
    }
    (tmp_path / "grid.json").write_text(json.dumps(grid))
    cmd = [sys.executable, "-m", "common.ablation", "--bundle-root", str(BUNDLE), "--grid", str(tmp_path / "grid.json")]
    cmd += ["--out", str(tmp_path / "study")]
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=single_thread_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    rows = []
    for run, label in (("baseline", "MTCM-KD"), ("method=no_kd", "no KD")):
        record = json.loads((tmp_path / "study" / run / "result.json").read_text())
        assert record["status"] == "ok", record
        dice = [record["metrics"][f"val_dice_{r}"] for r in ("wt", "tc", "et")]
        assert all(d is not None and math.isfinite(d) for d in dice), record["metrics"]
        rows.append(f"| {label} | " + " | ".join(f"{d:.3f}" for d in dice) + f" | {record['train_seconds']} |")
    print(f"\nphantoms 20 x 64x64x48 (12 train / 4 val / 4 test), {epochs} epochs, same seed; Dice on the test fold")
    print("| method | WT | TC | ET | train s |\n|---|---|---|---|---|\n" + "\n".join(rows))
    print((tmp_path / "study" / "results.md").read_text())


@pytest.mark.slow
def test_study_kd_command_writes_its_table_and_curves_on_a_tiny_budget(tmp_path: Path):
    """`make study-kd` as the README runs it, with 2 seeds and one epoch of tiny networks: every arm of the
    pre-registered study finishes (the two-stage arm from the same seed's MTCM-KD teachers), the table has each arm
    over both seeds, and the curves are drawn."""
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps({"epochs": 1, "val_interval": 1, "channels": [4, 8, 16, 32], "roi_size": [16, 16, 16]}))
    study = tmp_path / "study"
    result = subprocess.run(
        ["make", "-s", "study-kd", f"KD_STUDY={study}", "KD_STUDY_SEEDS=2", f"KD_STUDY_BASE=--base {tiny}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = (study / "runs" / "results.csv").read_text().splitlines()
    arms = {"baseline", "method=no_kd", "method=mtcm_kd_faithful", "method=choi2023", "method=two_stage"}
    assert {row.split(",")[0] for row in rows[1:]} == arms
    runs = (study / "runs" / "runs.csv").read_text().splitlines()[1:]
    assert len(runs) == 10 and all(",ok," in row for row in runs), runs
    for tag in ("val_dice_wt", "loss", "kd_loss"):
        assert (study / "runs" / f"curves_{tag}.png").stat().st_size > 0
