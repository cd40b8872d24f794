"""crop_foreground of the BraTS bundles through ``python -m monai.bundle run --config_file configs/inference.json``:
the label map lands on the input's full grid with its affine, equal to the uncropped one inside the brain's box.

The network is swapped for a 1x1x1 convolution (``network_def`` overridden, random weights seeded by the bundle's
``set_determinism``): its logits are a function of each voxel's intensities, so the different window grids of the
cropped and the uncropped volume cannot change the label map, and any difference is the crop's or the paste's.
A 48 x 48 x 32 phantom, 32^3 windows.
"""

from __future__ import annotations

import json

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


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_inference_with_the_crop_writes_the_full_grid(tmp_path, phantom, bundle):
    data, case = phantom
    network, modality = BUNDLES[bundle]
    root = REPO_ROOT / "bundles" / bundle
    maps = {}
    for crop in (True, False):
        out = tmp_path / f"crop_{crop}"
        settings = {
            "bundle_root": str(root),
            "dataset_dir": str(data),
            "output_dir": str(out),
            "load_pretrain": False,
            "roi_size": [32, 32, 32],
            "network_def": network,
            "crop_foreground": crop,
            "num_workers": 0,
            "dataloader#num_workers": 0,
        }
        overlay = tmp_path / f"crop_{crop}.json"
        overlay.write_text(json.dumps(settings))
        zoo.monai_bundle_run([root / "configs" / "inference.json", overlay], log_file=tmp_path / f"crop_{crop}.log")
        maps[crop] = nib.load(out / f"{case}_seg.nii.gz")
    source = nib.load(data / case / f"{case}_{modality}.nii.gz")
    for written in maps.values():
        assert written.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine)
    cropped, full = (np.asarray(maps[c].dataobj) for c in (True, False))
    brain = np.asarray(source.dataobj) != 0
    box = tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in np.nonzero(brain))
    assert brain.sum() < brain.size and box != tuple(slice(0, n) for n in brain.shape)  # the crop crops
    np.testing.assert_array_equal(cropped[box], full[box])
    outside = np.ones(brain.shape, bool)
    outside[box] = False
    assert not cropped[outside].any()  # pasted as background
