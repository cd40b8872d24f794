"""crop_foreground and one_window of the BraTS bundles through ``python -m monai.bundle run --config_file
configs/inference.json``: the label map lands on the input's full grid with its affine, equal to the uncropped
sliding window's inside the brain's box.

The network is swapped for a 1x1x1 convolution (``network_def`` overridden, random weights seeded by the bundle's
``set_determinism``): its logits are a function of each voxel's intensities, so the different window grids of the
cropped and the uncropped volume cannot change the label map, and any difference is the crop's or the paste's.
A 48 x 48 x 32 phantom, 32^3 windows.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ci import zoo
from common.synthetic.brats import generate_brats
from tests.helpers import REPO_ROOT

BUNDLES = {
    "cohra_unet_brats": ({"_target_": "torch.nn.Conv3d", "in_channels": 4, "out_channels": 3, "kernel_size": 1}, "t1"),
    "mtcm_kd_t1ce_student": (
        {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 4, "kernel_size": 1},
        "t1ce",
    ),
}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    data = tmp_path_factory.mktemp("brats")
    (case,) = generate_brats(data, cases=1, size=(48, 48, 32), seed=3, workers=1, verbose=False)
    return data, case


VARIANTS = {  # settings on top of the uncropped sliding window, the reference
    "crop": {"crop_foreground": True},
    "crop, one window": {"crop_foreground": True, "one_window": True},
    "one window": {"one_window": True},
}


def _infer(tmp_path, root, data, name: str, settings: dict) -> Path:
    out = tmp_path / name.replace(", ", "_").replace(" ", "_")
    overlay = out.with_suffix(".json")
    base = {"bundle_root": str(root), "dataset_dir": str(data), "output_dir": str(out), "load_pretrain": False,
            "roi_size": [32, 32, 32], "num_workers": 0, "dataloader#num_workers": 0}  # fmt: skip
    overlay.write_text(json.dumps({**base, **settings}))
    zoo.monai_bundle_run([root / "configs" / "inference.json", overlay], log_file=out.with_suffix(".log"))
    return out


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_inference_with_the_crop_or_one_window_writes_the_full_grid(tmp_path, phantom, bundle):
    data, case = phantom
    network, modality = BUNDLES[bundle]
    root = REPO_ROOT / "bundles" / bundle
    maps = {}
    for name, settings in {"reference": {}, **VARIANTS}.items():
        out = _infer(tmp_path, root, data, name, {"network_def": network, **settings})
        maps[name] = nib.load(out / f"{case}_seg.nii.gz")
    source = nib.load(data / case / f"{case}_{modality}.nii.gz")
    for written in maps.values():
        assert written.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine)
    full = np.asarray(maps["reference"].dataobj)
    brain = np.asarray(source.dataobj) != 0
    box = tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in np.nonzero(brain))
    assert brain.sum() < brain.size and box != tuple(slice(0, n) for n in brain.shape)  # the crop crops
    assert any((s.stop - s.start) % 16 for s in box), "the one window over the box needs padding"
    outside = np.ones(brain.shape, bool)
    outside[box] = False
    for name in VARIANTS:
        label_map = np.asarray(maps[name].dataobj)
        np.testing.assert_array_equal(label_map[box], full[box], err_msg=name)
        if "crop" in name:
            assert not label_map[outside].any(), f"{name}: pasted as background"
        else:
            np.testing.assert_array_equal(label_map, full, err_msg=name)


def test_one_window_pads_the_crop_to_what_cohra_unet_accepts(tmp_path, phantom):
    """COHRA-UNet refuses a size its total stride (16) does not divide; the padding makes the brain's box one."""
    data, case = phantom
    root = REPO_ROOT / "bundles" / "cohra_unet_brats"
    tiny = {"network_def#channels": [8, 16, 32, 64], "network_def#transformer_heads": 4}
    out = _infer(tmp_path, root, data, "cohra", {**tiny, "crop_foreground": True, "one_window": True})
    written = nib.load(out / f"{case}_seg.nii.gz")
    assert written.shape == nib.load(data / case / f"{case}_t1.nii.gz").shape
