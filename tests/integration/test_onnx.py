"""Every bundle's network exports to ONNX with ``python -m monai.bundle onnx_export`` and ONNX Runtime agrees.

The network is the one ``configs/inference.json`` builds with the demo's inference overlay (tiny widths); its
initial weights stand in for trained ones. The export uses the command the READMEs give: input and output named
after the bundle's ``image`` and ``pred``, a dynamic batch axis (a sliding-window inferer hands the network a
smaller last batch) and a fixed spatial shape, the patch size (here the metadata's smallest-but-one valid
shape, as in ``ci/verify_bundle.py``). ONNX Runtime's output on CPU must match PyTorch's elementwise within
``|onnx - torch| <= ATOL + RTOL * |torch|`` (float32), for batch sizes 1 and 2.

A bundle whose network cannot be exported is listed in ``ONNX_UNSUPPORTED`` with the reason; for it the test
asserts that the export still fails, so that the list stays true.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ci import zoo
from tests.helpers import BUNDLES_UNDER_TEST

pytestmark = pytest.mark.integration

RTOL, ATOL = 1e-3, 1e-4
#: bundle name -> why its network cannot go through ``onnx_export``
ONNX_UNSUPPORTED: dict[str, str] = {}
CONVERTER_KWARGS = "{'input_names': ['image'], 'output_names': ['pred'], 'dynamic_axes': {'image': {0: 'batch'}}}"


def _network_and_shape(bundle: Path, overlay: dict) -> tuple[torch.nn.Module, list[int]]:
    """The inference network under ``overlay`` and the input shape it is exported with."""
    from monai.bundle import ConfigParser
    from monai.bundle.scripts import _get_fake_spatial_shape

    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "inference.json")])
    for key, value in overlay.items():
        parser[key] = value
    meta = zoo.load_json(bundle / "configs" / "metadata.json")["network_data_format"]["inputs"]["image"]
    spatial = _get_fake_spatial_shape(meta["spatial_shape"], p=1, n=2, any=32)
    return parser.get_parsed_content("network_def").eval(), [1, meta["num_channels"], *spatial]


@pytest.mark.parametrize("bundle", BUNDLES_UNDER_TEST, ids=[b.name for b in BUNDLES_UNDER_TEST])
def test_onnx_export_matches_pytorch(bundle: Path, tmp_path: Path):
    import onnxruntime

    spec = zoo.load_json(bundle / "configs" / "demo.json")
    overlay = {"bundle_root": str(bundle), "demo_work_dir": str(tmp_path), **spec.get("inference", {})}
    overlay_file = tmp_path / "overlay.json"
    overlay_file.write_text(json.dumps(overlay))
    torch.manual_seed(0)
    net, shape = _network_and_shape(bundle, overlay)
    ckpt, exported = tmp_path / "model.pt", tmp_path / "model.onnx"
    torch.save(net.state_dict(), ckpt)

    configs = f"['{bundle / 'configs' / 'inference.json'}','{overlay_file}']"
    cmd = [sys.executable, "-m", "monai.bundle", "onnx_export", "network_def", "--filepath", str(exported)]
    cmd += ["--ckpt_file", str(ckpt), "--meta_file", str(bundle / "configs" / "metadata.json")]
    cmd += ["--config_file", configs, "--bundle_root", str(bundle), "--input_shape", json.dumps(shape)]
    cmd += ["--converter_kwargs", CONVERTER_KWARGS]
    result = subprocess.run(cmd, cwd=tmp_path, env=zoo.bundle_env(), capture_output=True, text=True)
    log = result.stdout[-3000:] + result.stderr[-3000:]
    if bundle.name in ONNX_UNSUPPORTED:
        assert result.returncode != 0, f"{bundle.name} now exports: drop it from ONNX_UNSUPPORTED"
        return
    assert result.returncode == 0, f"{bundle.name}: onnx_export failed\n{log}"
    assert exported.is_file(), f"{bundle.name}: onnx_export wrote no {exported}\n{log}"

    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert session.get_outputs()[0].name == "pred"
    for batch in (1, 2):
        x = torch.rand(batch, *shape[1:])
        with torch.no_grad():
            expected = net(x)
        expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        actual = session.run(None, {"image": x.numpy()})
        assert len(actual) == len(expected), f"{bundle.name}: ONNX gives {len(actual)} outputs, PyTorch {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            worst = float(np.max(np.abs(a - e.numpy()) - RTOL * np.abs(e.numpy())))
            assert a.shape == tuple(e.shape), f"{bundle.name}: output {i} shape {a.shape}, PyTorch {tuple(e.shape)}"
            assert worst <= ATOL, f"{bundle.name}: output {i}, batch {batch}: max(|diff| - RTOL |torch|) = {worst:.3g}"
