"""fct_visible_korean through ``python -m monai.bundle run``: resume, evaluation outputs, inference outputs at the
photograph's size, a comparison network through its overlay file, and the errors for a missing dataset or bad input.

Tiny sizes: 8 phantom slices of 64 x 96 (H x W), a 64 x 64 network input and the narrowest FCT widths.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ci import zoo
from common.data.visible_korean import prepare
from common.synthetic.visible_korean import generate_visible_korean
from tests.helpers import REPO_ROOT

BUNDLE = REPO_ROOT / "bundles" / "fct_visible_korean"
CONFIGS = BUNDLE / "configs"
TINY = {
    "image_size": 64,
    "network_def#filters": [4, 8, 16, 32, 64, 32, 16, 8, 4],
    "network_def#heads": [1, 1, 1, 1, 1, 1, 1, 1, 1],
    "num_workers": 0,
}
SIZE = (64, 96)  # H x W of the phantom photographs


def _overlay(path: Path, content: dict) -> Path:
    path.write_text(json.dumps(content))
    return path


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Phantoms, their prepared labels and datalist, and one epoch of FCT training, shared by this module."""
    root = tmp_path_factory.mktemp("fct_vk")
    data = root / "vk"
    generate_visible_korean(data, cases=8, size=SIZE, seed=3, workers=1, verbose=False)
    prepare(data, root / "prepared", quality_check=0)
    settings = {
        **TINY,
        "bundle_root": str(BUNDLE),
        "dataset_dir": str(data),
        "datalist_file": str(root / "prepared" / "datalist.json"),
        "ckpt_dir": str(root / "models"),
        "val_interval": 1,
    }
    train = _overlay(root / "train.json", {**settings, "epochs": 1, "output_dir": str(root / "train")})
    zoo.monai_bundle_run([CONFIGS / "train.json", train], log_file=root / "train1.log")
    return {"root": root, "data": data, "settings": settings}


def test_resume_continues_the_epoch_counter_and_the_schedule(trained):
    root, settings = trained["root"], trained["settings"]
    assert (root / "models" / "model.pt").is_file(), "validation saved no best-metric checkpoint"
    resume = _overlay(root / "resume.json", {**settings, "epochs": 2, "resume": True, "output_dir": str(root / "t2")})
    zoo.monai_bundle_run([CONFIGS / "train.json", resume], log_file=root / "train2.log")
    log = (root / "train2.log").read_text()
    assert "SupervisedTrainer - INFO - Epoch[2] Complete" in log
    assert "SupervisedTrainer - INFO - Epoch[1] Complete" not in log, "resumed training repeated epoch 1"
    state = torch.load(root / "models" / "checkpoint_epoch=2.pt", weights_only=False)
    # 6 training slices in batches of 2: the per-iteration warm-up went on from step 3, not from 0.
    assert state["lr_scheduler"]["last_epoch"] == 2 * 3


def test_evaluation_writes_per_image_bone_and_muscle_dice_and_hd95(trained):
    root, settings = trained["root"], trained["settings"]
    overlay = _overlay(root / "eval.json", {**settings, "output_dir": str(root / "eval")})
    zoo.monai_bundle_run([CONFIGS / "train.json", CONFIGS / "evaluate.json", overlay], log_file=root / "eval.log")
    summary = json.loads((root / "eval" / "metrics_summary.json").read_text())
    test = json.loads((root / "prepared" / "datalist.json").read_text())["test"]
    assert summary["cases"] == len(test) == 2  # the held-out test slices, not the model-selection ones
    for metric in ("val_dice_bone", "val_dice_muscle", "val_hd95_bone_px", "val_hd95_muscle_px", "val_mean_dice"):
        assert metric in summary["metrics"]
        with open(root / "eval" / f"{metric}_raw.csv") as f:
            rows = list(csv.DictReader(f))
        assert sorted(row["filename"] for row in rows) == sorted(item["image"] for item in test)
    assert 0.0 <= summary["metrics"]["val_mean_dice"] <= 1.0

    # the slices it trained on, to tell underfitting from overfitting, named as such
    fit = _overlay(root / "fit.json", {**settings, "output_dir": str(root / "fit"), "eval_split": "training"})
    zoo.monai_bundle_run([CONFIGS / "train.json", CONFIGS / "evaluate.json", fit], log_file=root / "fit.log")
    summary = json.loads((root / "fit" / "metrics_summary.json").read_text())
    training = json.loads((root / "prepared" / "datalist.json").read_text())["training"]
    assert summary["split"] == "training" and summary["cases"] == len(training)


def test_hd95_in_mm_scales_grid_pixels_by_the_photographs_pixel_size(trained):
    """pixel_spacing_mm swaps val_hd95_*_px for val_hd95_*_mm: grid pixels x source pixels per grid pixel x mm."""
    root, settings = trained["root"], trained["settings"]
    overlay = _overlay(
        root / "eval_mm.json",
        {
            **settings,
            "output_dir": str(root / "eval_mm"),
            "pixel_spacing_mm": [0.5, 0.5],
            "validate#additional_metrics#val_hd95_bone_px#_disabled_": False,  # both units, to compare them
        },
    )
    zoo.monai_bundle_run([CONFIGS / "train.json", CONFIGS / "evaluate.json", overlay], log_file=root / "eval_mm.log")
    out = root / "eval_mm"
    assert not (out / "val_hd95_muscle_px_raw.csv").exists()
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert {"val_hd95_bone_mm", "val_hd95_muscle_mm"} <= set(summary["counts"])

    def per_image(name: str) -> dict[str, float]:
        with open(out / f"{name}_raw.csv") as f:
            return {row["filename"]: float(row["class0"]) for row in csv.DictReader(f)}

    px, mm = per_image("val_hd95_bone_px"), per_image("val_hd95_bone_mm")
    assert px.keys() == mm.keys() and px
    # a 64 x 96 (H x W) photograph becomes 43 x 64 on the grid: a grid pixel is 96/64 = 1.5 source pixels across
    # and 64/43 = 1.488 along the height, so 0.744 to 0.75 mm at 0.5 mm per source pixel
    for name in px:
        assert np.isnan(px[name]) == np.isnan(mm[name])
        if not np.isnan(px[name]) and px[name] > 0:
            assert 0.5 * 64 / 43 - 1e-3 <= mm[name] / px[name] <= 0.75 + 1e-3, (name, px[name], mm[name])


def test_postprocessing_puts_a_prediction_back_on_the_photograph(tmp_path, trained):
    """A perfect prediction on the network grid comes back as the ground truth at the photograph's size."""
    from monai.bundle import ConfigParser

    from common.data.visible_korean import vk_preprocessing

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"image_size": 64, "output_dir": str(tmp_path)})
    item = json.loads((trained["root"] / "prepared" / "datalist.json").read_text())["training"][0]
    grid = vk_preprocessing(size=64)(dict(item))
    data = parser.get_parsed_content("preprocessing")({"image": item["image"]})
    data["pred"] = torch.nn.functional.one_hot(grid["label"][0].long(), 3).permute(2, 0, 1).float() * 10
    parser.get_parsed_content("postprocessing")(data)

    name = Path(item["image"]).stem
    label, truth = _png(tmp_path / f"{name}_seg.png"), _png(Path(item["label"]))
    assert label.shape == truth.shape == SIZE and label.dtype == np.uint8
    assert np.mean(label == truth) > 0.95  # resized 96 -> 64 -> 96: only edge pixels may move
    photograph, overlay = _png(Path(item["image"])), _png(tmp_path / f"{name}_overlay.png")
    assert overlay.shape == photograph.shape
    changed = np.any(overlay != photograph, axis=-1)
    np.testing.assert_array_equal(changed, label > 0)


def test_overlay_of_a_label_map_of_the_wrong_size_names_the_photograph(tmp_path, trained):
    from monai.data import MetaTensor

    from common.transforms.overlay import SaveOverlayd

    photograph = trained["data"] / "images" / "VK_0000.png"
    data = {"image": MetaTensor(torch.zeros(3, 4, 4), meta={"filename_or_obj": str(photograph)})}
    data["pred"] = torch.zeros(1, *SIZE)  # (1, H, W): not swapped like PILReader's (1, W, H)
    with pytest.raises(
        ValueError, match=f"label map of '{re.escape(str(photograph))}' is 96 x 64 .* the photograph is 64 x 96"
    ):
        SaveOverlayd("pred", tmp_path)(data)
    assert not list(tmp_path.iterdir())


def test_inference_on_a_folder_writes_label_and_overlay_pngs_at_the_photographs_size(tmp_path, trained):
    settings = {**TINY, "bundle_root": str(BUNDLE), "ckpt_dir": trained["settings"]["ckpt_dir"]}
    overlay = _overlay(
        tmp_path / "infer.json", {**settings, "dataset_dir": str(trained["data"]), "output_dir": str(tmp_path / "out")}
    )
    zoo.monai_bundle_run([CONFIGS / "inference.json", overlay], log_file=tmp_path / "infer.log")
    names = sorted(p.stem for p in (trained["data"] / "images").glob("*.png"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [f"{n}_seg.png" for n in names] + [f"{n}_overlay.png" for n in names] + [".run.json"]
    ), "expected one label and one overlay PNG per photograph, the run's manifest and no temporary files"
    for name in names:
        label, overlay = _png(tmp_path / "out" / f"{name}_seg.png"), _png(tmp_path / "out" / f"{name}_overlay.png")
        assert label.shape == SIZE and set(np.unique(label).tolist()) <= {0, 1, 2}
        assert overlay.shape == (*SIZE, 3) and overlay.dtype == np.uint8


def test_basicunet_trains_and_infers_a_single_image_through_its_overlay(tmp_path, trained):
    """The comparison overlay keeps its own folders (under bundle_root) and returns a tensor in training."""
    settings = {
        "image_size": 64,
        "num_workers": 0,
        "bundle_root": str(tmp_path),
        "datalist_file": trained["settings"]["datalist_file"],
        "network_def#features": [4, 4, 8, 16, 32, 4],
    }
    train = _overlay(tmp_path / "train.json", {**settings, "epochs": 1, "val_interval": 1})
    zoo.monai_bundle_run([CONFIGS / "train.json", CONFIGS / "basicunet.json", train], log_file=tmp_path / "train.log")
    assert (tmp_path / "models" / "basicunet" / "model.pt").is_file()
    assert (tmp_path / "models" / "basicunet" / "checkpoint_epoch=1.pt").is_file()

    image = trained["data"] / "images" / "VK_0005.png"
    infer = _overlay(tmp_path / "infer.json", {**settings, "input_image": str(image), "dataset_dir": "/nonexistent"})
    zoo.monai_bundle_run([CONFIGS / "inference.json", CONFIGS / "basicunet.json", infer], log_file=tmp_path / "i.log")
    out = tmp_path / "eval" / "basicunet"
    assert sorted(p.name for p in out.glob("*.png")) == ["VK_0005_overlay.png", "VK_0005_seg.png"]
    assert _png(out / "VK_0005_seg.png").shape == SIZE


def _config_error(config: str, overrides: dict, config_id: str) -> str:
    """The message of the error that building ``config_id`` raises, as a bundle run would meet it."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / config))
    parser.update(overrides)
    with pytest.raises(RuntimeError) as raised:  # MONAI wraps the error of a config expression
        parser.get_parsed_content(config_id)
    return str(raised.value.__cause__)


def test_training_without_a_prepared_dataset_names_the_missing_datalist(tmp_path):
    message = _config_error("train.json", {"dataset_dir": str(tmp_path)}, "train#dataset#data")
    assert f"Datalist '{tmp_path / 'datalist.json'}' does not exist" in message
    assert "python -m common.data.visible_korean prepare" in message

    moved = {"training": [{"image": str(tmp_path / "VK_0000.png"), "label": str(tmp_path / "labels" / "VK_0000.png")}]}
    (tmp_path / "datalist.json").write_text(json.dumps(moved))
    message = _config_error("train.json", {"dataset_dir": str(tmp_path)}, "train#dataset#data")
    assert (
        f"Datalist '{tmp_path / 'datalist.json'}' lists 2 file(s) that do not exist: {tmp_path / 'VK_0000.png'}"
        in message
    )


@pytest.mark.parametrize("problem", ["greyscale_png", "empty_folder", "missing_file"])
def test_inference_input_problems_are_named(tmp_path, problem):
    if problem == "greyscale_png":
        source = tmp_path / "slice.png"
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(source)
        expected = f"Image '{source}' has 8-bit greyscale pixels; expected 8-bit RGB"
        overrides = {"input_image": str(source)}
    elif problem == "empty_folder":
        source = tmp_path / "images"
        source.mkdir()
        (source / "notes.txt").write_text("")
        expected = f"Input folder '{source}' holds no PNG slice photographs (found: notes.txt)"
        overrides = {"dataset_dir": str(tmp_path)}
    else:
        source = tmp_path / "VK_0000.png"
        expected = f"Input '{source}' does not exist"
        overrides = {"input_image": str(source)}
    assert expected in _config_error("inference.json", overrides, "datalist")
