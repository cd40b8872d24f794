"""``refnet_synapse`` inference holds memory proportional to the CT, not to ``num_classes`` copies of it.

The cascade (Swin UNETR base, then RefNet per axial slice) once held the base probabilities, RefNet's one-hot
input and RefNet's logits as whole volumes of 13 float32 channels at the CT's resolution (5.5 GB each at
512 x 512 x 400) and did not finish within 12 GB. This runs the real ``python -m monai.bundle run`` inference
on two phantom CTs with the same in-plane size, one deep and one a single slab deep, and reads each run's peak
resident set size from ``os.wait4`` (the process and its waited-for children, DataLoader workers included). The
deep run may exceed the shallow one by less than one such 13-channel float32 volume of the extra slices (176 MiB
here). Measured on 2 cores: the slab-wise cascade grew by 23 MiB (700 -> 723 MiB), the old whole-volume one by
300 MiB (885 -> 1185 MiB). Networks are tiny (random weights; memory does not depend on them), so each run takes
seconds. ``make bench-full`` measures the full-size case with the bundle's own networks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer, SlidingWindowInferer

from common.bundle_run import bundle_env
from common.inferers.refinement import BaseThenRefineInferer
from common.networks.refnet import RefNet
from common.synthetic._fields import case_rng
from common.synthetic.btcv import make_btcv_case
from common.transforms.refinement import RefNetInputd
from tests.helpers import REPO_ROOT

BUNDLE = REPO_ROOT / "bundles" / "refnet_synapse"
NUM_CLASSES = 13
IN_PLANE = (192, 192)
DEEP, SHALLOW = 112, 16  # slices; SHALLOW is one slab of the cascade (inference.json's slab_size)
SPACING = (0.7, 0.7, 1.0)
# tiny networks, and a base grid that one window covers: the memory under test is the CT-sized part
TINY = {
    "base_feature_size": 12,
    "base_network_def#depths": [1, 1, 1, 1],
    "base_network_def#num_heads": [1, 1, 1, 1],
    "base_roi_size": [64, 64, 32],
    "base_spacing": [3.0, 3.0, 4.0],
    "network_def#features": [8, 8, 16, 32, 64, 8],
    "load_pretrain": False,
    "load_base_model": False,
    "num_workers": 0,
}


def _ct(path: Path, depth: int) -> Path:
    case = make_btcv_case((*IN_PLANE, depth), case_rng(0, 1), spacing=SPACING)
    nib.save(nib.Nifti1Image(case.image, case.affine), str(path))
    return path


def _peak_rss_bytes(ct: Path, work: Path) -> int:
    """Peak RSS of ``python -m monai.bundle run`` inference on ``ct``; the label map must be written."""
    work.mkdir()
    overlay = work / "overlay.json"
    overlay.write_text(
        json.dumps({"bundle_root": str(BUNDLE), "dataset_dir": str(ct), "output_dir": str(work / "out"), **TINY})
    )
    configs = [str(BUNDLE / "configs" / "inference.json"), str(overlay)]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "[" + ",".join(map(repr, configs)) + "]"]
    with open(work / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=bundle_env(), stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    tail = (work / "log.txt").read_text()[-3000:]
    assert proc.returncode == 0, f"inference failed:\n{tail}"
    seg = work / "out" / f"{ct.name.removesuffix('.nii.gz')}_seg.nii.gz"
    assert seg.is_file(), f"no label map written:\n{tail}"
    assert nib.load(str(seg)).shape == (*IN_PLANE, nib.load(str(ct)).shape[2])
    return usage.ru_maxrss * 1024  # Linux: KiB


def test_inference_memory_grows_by_less_than_one_class_volume(tmp_path):
    deep = _peak_rss_bytes(_ct(tmp_path / "deep.nii.gz", DEEP), tmp_path / "deep")
    shallow = _peak_rss_bytes(_ct(tmp_path / "shallow.nii.gz", SHALLOW), tmp_path / "shallow")
    one_class_volume = NUM_CLASSES * 4 * int(np.prod(IN_PLANE)) * (DEEP - SHALLOW)  # float32, the extra slices
    growth = deep - shallow
    assert growth < one_class_volume, (
        f"peak RSS {deep / 2**20:.0f} MiB for {DEEP} slices vs {shallow / 2**20:.0f} MiB for {SHALLOW}: "
        f"{growth / 2**20:.0f} MiB more, budget {one_class_volume / 2**20:.0f} MiB (one {NUM_CLASSES}-class float32 "
        "volume of the extra slices); whole-volume copies of probabilities, one-hot input or logits are back"
    )


@pytest.mark.parametrize("use_image", [False, True], ids=["paper", "image_aware"])
def test_slabs_give_the_whole_volume_result(use_image):
    """Slabs change no value: the logits of any slab size equal one slab over the whole CT, and ``labels`` is
    their argmax. The image-aware variant's neighbouring slices reach across slab ends."""
    torch.manual_seed(0)
    affine = torch.diag(torch.tensor([0.8, 0.8, 2.5, 1.0], dtype=torch.float64))
    ct = MetaTensor(torch.rand(1, 1, 32, 32, 11), affine=affine)
    transform = RefNetInputd(base_input="probabilities", use_image=use_image, num_neighbours=2 if use_image else 0)
    refnet = RefNet(image_channels=transform.image_channels, label_input="probabilities", features=(4, 4, 8, 8, 16, 4))
    base = torch.nn.Conv3d(1, NUM_CLASSES, 3, padding=1)

    def cascade(output: str, slab_size: int) -> torch.Tensor:
        inferer = BaseThenRefineInferer(
            base.eval(),
            SlidingWindowInferer(roi_size=(16, 16, 16)),
            SliceInferer(spatial_dim=2, roi_size=(-1, -1), sw_batch_size=4),
            base_spacing=(1.6, 1.6, 3.0),
            network_input=transform,
            output=output,
            slab_size=slab_size,
        )
        with torch.no_grad():
            return inferer(ct, refnet.eval())

    whole = cascade("logits", 11)
    assert whole.shape == (1, NUM_CLASSES, 32, 32, 11)
    # float32 rounding only (convolutions batched differently, grid coordinates computed from a shifted origin)
    for slab_size in (1, 4):
        torch.testing.assert_close(cascade("logits", slab_size), whole, rtol=1e-4, atol=1e-4)
    labels = cascade("labels", 4)
    assert labels.shape == (1, 1, 32, 32, 11) and labels.dtype == torch.uint8
    torch.testing.assert_close(labels.affine, ct.affine)
    assert torch.equal(labels.as_tensor()[:, 0].long(), cascade("logits", 4).as_tensor().argmax(1))
