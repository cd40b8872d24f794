"""``make bench-weights`` and the whole-case bench that uses its weights (bench.foreground_crop), on small phantoms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench import inference, weights


@pytest.fixture
def small_phantoms(tmp_path, monkeypatch):
    """The bench's BraTS inputs (train and test) at 64 x 64 x 48 instead of 240 x 240 x 155: the same generator and
    normalisation, through bench.inference.make_data's quick size for the grid only."""
    from monai.transforms import NormalizeIntensity

    from common.synthetic._fields import case_rng
    from common.synthetic.brats import make_brats_case

    def make_data(data, split, quick, work_dir):
        path = tmp_path / f"{data}_{split}.npz"
        if not path.exists():
            case = make_brats_case((64, 64, 48), case_rng(7 if split == "test" else 0, 0))
            modalities = ("t1", "t1ce", "t2", "flair") if data == "brats4" else ("t1ce",)
            image = np.stack([case.images[m].astype(np.float32) for m in modalities])
            image = np.asarray(NormalizeIntensity(nonzero=True, channel_wise=True)(image), dtype=np.float32)
            np.savez(path, image=image, label=case.regions.astype(np.int64))
        return {"path": str(path)}

    monkeypatch.setattr(weights, "make_data", make_data)
    return tmp_path


def test_patches_centre_on_tumour_and_on_normal_brain_alike(small_phantoms):
    data = np.load(weights.make_data("brats4", "train", False, "")["path"])
    # inside a larger grid, so that a 64^3 patch is never clipped and its centre voxel is the one drawn
    image = np.zeros((4, 192, 192, 144), np.float32)
    label = np.zeros((192, 192, 144), np.int64)
    image[:, 64:128, 64:128, 48:96] = data["image"]
    label[64:128, 64:128, 48:96] = data["label"]
    rng = np.random.default_rng(0)
    on_tumour = []
    for _ in range(200):
        x, y = weights.brain_balanced_patch(image, label, rng)
        assert x.shape == (4, 64, 64, 64) and y.shape == (64, 64, 64)
        assert np.abs(x[:, 32, 32, 32]).sum() > 0  # never centred on the background outside the brain
        on_tumour.append(y[32, 32, 32] > 0)
    assert 0.4 < np.mean(on_tumour) < 0.6


def test_train_writes_weights_the_bench_loads_and_a_record(small_phantoms, capsys):
    weights.main(["--networks", "segresnet", "--steps", "3", "--validate-every", "2", "--threads", "1",
                  "--work-dir", str(small_phantoms)])  # fmt: skip
    case = inference.CASES["segresnet"]
    path = inference._weights_path(small_phantoms, case, quick=False)
    network = inference.build(case, quick=False, fast=False)[0]["net"]
    network.load_state_dict(torch.load(path, map_location="cpu")["net"])
    record = json.loads(path.with_suffix(".json").read_text())
    assert [c["step"] for c in record["curve"]] == [2, 3]
    assert all(0.0 <= d <= 1.0 for c in record["curve"] for d in c["dice"]) and len(record["curve"][0]["dice"]) == 3
    assert "3 steps" in record["recipe"] and record["train_seconds"] > 0
    described = inference.weights_description(small_phantoms, case, quick=False)
    assert described.startswith("weights of make bench-weights (3 steps") and "held-out Dice TC, WT, ET" in described
    assert "segresnet step 3/3" in capsys.readouterr().out


def test_few_step_training_drops_a_stale_record(small_phantoms, monkeypatch):
    case = inference.CASES["segresnet"]
    path = inference._weights_path(small_phantoms, case, quick=True)
    path.parent.mkdir(parents=True)
    path.with_suffix(".json").write_text("{}")
    monkeypatch.setattr(inference, "make_data", weights.make_data)
    assert inference.train_weights("segresnet", quick=True, work_dir=str(small_phantoms))["trained"]
    assert not path.with_suffix(".json").exists()
    assert inference.weights_description(small_phantoms, case, quick=True).startswith("weights of 1 phantom training")


def test_foreground_crop_runs_segresnet_in_cohra_pipeline(small_phantoms):
    """bench.foreground_crop's SegResNet row: COHRA-UNet's preprocessing, inferer and postprocessing around the model
    zoo's SegResNet, weights as bench.weights saves them; the label map lands on the input grid in BraTS labels."""
    from monai.data import MetaTensor

    from bench import foreground_crop

    case = inference.CASES["segresnet"]
    state = {"net": inference.build(case, quick=False, fast=False)[0]["net"].state_dict()}
    data = np.load(weights.make_data("brats4", "test", False, "")["path"])
    image = MetaTensor(torch.from_numpy(data["image"] * 100 + 500 * (np.abs(data["image"]) > 0)))
    crop_one_window = foreground_crop.bundle_pipeline("segresnet", True, True, 0.5, True, "torch", state)
    assert type(crop_one_window[1]).__name__ == "SegResNet"
    labels, seconds, windows = foreground_crop.run_case("segresnet", image, crop_one_window)
    assert labels.shape == data["label"].shape and windows == 1 and seconds > 0
    assert set(np.unique(labels)) <= {0, 1, 2, 4}
    assert foreground_crop.dice_per_label(labels, labels) == {"1": 1.0, "2": 1.0, "4": 1.0}
    edge = foreground_crop.brain_edge(data["image"])
    assert foreground_crop.edge_share(labels, labels, edge) is None
    outside = labels.copy()
    outside[np.abs(data["image"]).sum(0) == 0] = 2  # every difference outside the brain: all on its edge
    inside = tuple(np.argwhere(~edge)[0])  # a voxel deeper in the brain than the edge's width
    deep = labels.copy()
    deep[inside] = 4 if labels[inside] != 4 else 0
    assert foreground_crop.edge_share(outside, labels, edge) == 1.0
    assert foreground_crop.edge_share(deep, labels, edge) == 0.0
