"""OpenVINO as the fast path's CPU runtime (``fast_cpu_runtime: "openvino"``): the same logits as PyTorch, each
network and window shape converted once and kept on disk, new weights converted again, and clear errors.

Run by ``tests/unit/test_openvino_runtime.py`` in a process of its own, not collected with the rest: OpenVINO's
thread pool does not survive a fork, and later tests fork DataLoader workers (a training test crashed with SIGSEGV
when these ran in the same pytest process).
"""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from monai.inferers import SlidingWindowInferer

from bench import inference
from common.cpu import native_bf16
from common.fast_inference import FastInferer
from common.openvino_runtime import OpenVINONetwork, OpenVINOUnavailableError
from common.settings import SettingError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino missing")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv3d(8, 3, 1)).eval()


WINDOW = SlidingWindowInferer((16, 16, 16), overlap=0.5, mode="gaussian")


def _openvino_inferer(cache, bf16: bool = False) -> FastInferer:
    return FastInferer(WINDOW, bf16=bf16, runtime="openvino", openvino_cache_dir=str(cache))


def test_float32_logits_match_pytorch_through_the_sliding_window(tmp_path):
    net, x = _net(), torch.rand(1, 2, 24, 20, 16)
    with torch.no_grad():
        eager = FastInferer(WINDOW, enabled=False)(x, net)
    out = _openvino_inferer(tmp_path)(x, net)
    assert out.dtype == torch.float32 and out.shape == eager.shape and not out.is_inference()
    torch.testing.assert_close(out, eager.as_tensor() if hasattr(eager, "as_tensor") else eager, atol=1e-5, rtol=0)


@pytest.mark.skipif(not native_bf16(), reason="bf16 is compiled in only where the CPU runs it natively")
def test_bf16_stays_close_where_the_cpu_runs_it(tmp_path):
    net, x = _net(), torch.rand(1, 2, 24, 20, 16)
    with torch.no_grad():
        eager = FastInferer(WINDOW, enabled=False)(x, net)
    out = _openvino_inferer(tmp_path, bf16=True)(x, net)
    assert (out - eager).abs().max() < 0.05


def test_the_network_is_converted_once_for_every_shape_and_a_new_process_reads_it_from_disk(tmp_path, monkeypatch):
    net = _net()
    runtime = OpenVINONetwork(net, bf16=False, cache_dir=tmp_path)
    a, b = torch.rand(1, 2, 16, 16, 16), torch.rand(2, 2, 24, 16, 8)
    first = runtime(a)
    runtime(a)
    with torch.no_grad():
        torch.testing.assert_close(runtime(b), net(b), atol=1e-5, rtol=0)
    assert runtime.conversions == 1 and len(list(tmp_path.glob("*/model.xml"))) == 1
    checks = sorted(p.name for p in tmp_path.glob("*/check_*.json"))
    assert checks == ["check_1x2x16x16x16.json", "check_2x2x24x16x8.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary folder left"

    import openvino

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although the disk cache holds the model")

    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    again = OpenVINONetwork(net, bf16=False, cache_dir=tmp_path)
    torch.testing.assert_close(again(a), first, atol=0, rtol=0)
    assert again.conversions == 0


class _ShapeBranches(nn.Module):
    """Python branches on the input's size, which a trace on a smaller input bakes in: a bias added only at one grid
    (as a positional embedding at its training grid) and a factor only above a size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 3, 3, padding=1)
        self.bias = nn.Parameter(torch.rand(1, 3, 8, 8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if tuple(y.shape[2:]) == (8, 8, 8):
            y = y + self.bias
        if y.shape[-1] > 10:
            y = y * 2
        return y


@pytest.mark.parametrize("shape", [(1, 2, 16, 16, 16), (1, 2, 16, 16, 12)])
def test_a_shape_the_small_trace_does_not_fit_is_converted_on_its_own(shape, tmp_path):
    """16^3 traced at 8^3 keeps the bias (its shape cannot be fixed to 16^3); 16x16x12 traced at 8x8x6 misses the
    factor the network applies at 16 (its check fails): both are converted for their exact shape, with PyTorch's
    logits."""
    torch.manual_seed(0)
    net, x = _ShapeBranches().eval(), torch.rand(*shape)
    runtime = OpenVINONetwork(net, bf16=False, cache_dir=tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(runtime(x), net(x), atol=1e-5, rtol=0)
    assert runtime.model_dir(shape).joinpath("model.xml").is_file()
    checks = [json.loads(p.read_text()) for p in tmp_path.glob("*/check_*.json")]
    assert [c["ok"] for c in checks] == ([] if shape[-1] == 16 else [False])


def test_weights_loaded_later_into_the_same_module_are_converted_again(tmp_path):
    net, x = _net(), torch.rand(1, 2, 16, 16, 16)
    inferer = _openvino_inferer(tmp_path)
    before = inferer(x, net)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(-1.0)
    after = inferer(x, net)
    with torch.no_grad():
        expected = FastInferer(WINDOW, enabled=False)(x, net)
    torch.testing.assert_close(after, expected.as_tensor() if hasattr(expected, "as_tensor") else expected, atol=1e-5,
                               rtol=0)  # fmt: skip
    assert not torch.allclose(before, after)
    assert len(list(tmp_path.glob("*/model.xml"))) == 2


def test_an_unknown_runtime_is_refused_by_name():
    expected = "fast_cpu_runtime: expected one of \\['torch', 'openvino', 'auto'\\], got 'onnx'"
    with pytest.raises(SettingError, match=expected):
        FastInferer(WINDOW, runtime="onnx")


@pytest.mark.parametrize("bf16_native, runtime", [(True, "openvino"), (False, "torch")])
def test_auto_runs_openvino_only_where_bf16_is_native(tmp_path, monkeypatch, bf16_native, runtime):
    monkeypatch.setattr("common.fast_inference.native_bf16", lambda: bf16_native)
    net, x = _net(), torch.rand(1, 2, 16, 16, 16)
    inferer = FastInferer(WINDOW, bf16=False, runtime="auto", openvino_cache_dir=str(tmp_path))
    assert inferer.runtime == runtime
    ran_on = type(inferer.runtime_network(x, net))
    assert ran_on is (OpenVINONetwork if runtime == "openvino" else nn.Sequential)


def test_without_openvino_the_inferer_warns_how_to_install_it_and_runs_pytorch(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)
    net, x = _net(), torch.rand(1, 2, 16, 16, 16)
    inferer = _openvino_inferer(tmp_path)
    out = inferer(x, net)
    warning = "warning: fast_cpu_runtime: 'openvino' needs the openvino package (openvino==2026.4.1, in "
    assert capsys.readouterr().err.startswith(warning + "requirements.txt: pip install openvino==2026.4.1); running "
                                              "Sequential on PyTorch instead")  # fmt: skip
    with torch.no_grad():
        expected = FastInferer(WINDOW, enabled=False)(x, net)
    torch.testing.assert_close(
        out, expected.as_tensor() if hasattr(expected, "as_tensor") else expected, atol=1e-5, rtol=0
    )
    inferer(x, net)
    assert capsys.readouterr().err == ""  # said once: that network stays on PyTorch
    with pytest.raises(OpenVINOUnavailableError, match="pip install openvino==2026.4.1"):
        OpenVINONetwork(net, cache_dir=tmp_path)


def test_a_network_openvino_cannot_convert_is_named_with_the_way_out(tmp_path, monkeypatch):
    import openvino

    def converter_failure(*args, **kwargs):  # what the converter raises for an operation it does not support
        raise RuntimeError("Check 'is_conversion_successful' failed\nno translator for aten::some_op")

    monkeypatch.setattr(openvino, "convert_model", converter_failure)
    message = r"OpenVINO could not convert Sequential for input shape \[1, 2, 8, 8, 8\] \(Check 'is_conversion_succ"
    with pytest.raises(OpenVINOUnavailableError, match=message + r".*\)$"):
        OpenVINONetwork(_net(), bf16=False, cache_dir=tmp_path)(torch.rand(1, 2, 8, 8, 8))
    assert not list(tmp_path.glob("*/model.xml"))


def _disk_full(*args, **kwargs):  # what OpenVINO's writer raises on a full disk or past a file-size limit
    raise RuntimeError("basic_ios::clear: iostream error")


@pytest.mark.parametrize("failure", ["disk full", "cache folder under a file"])
def test_a_cache_that_cannot_be_written_leaves_the_run_on_pytorch_after_one_warning(
    tmp_path, monkeypatch, capsys, failure
):
    import openvino

    cache = tmp_path / "cache"
    if failure == "disk full":
        monkeypatch.setattr(openvino, "save_model", _disk_full)
    else:
        (tmp_path / "file").write_text("")
        cache = tmp_path / "file" / "cache"
    net, x = _net(), torch.rand(1, 2, 24, 20, 16)
    out = _openvino_inferer(cache)(x, net)
    err = capsys.readouterr().err
    assert err.startswith(f"warning: fast_cpu_runtime: OpenVINO could not write its converted model into {cache} (")
    assert "ZOO_OPENVINO_CACHE names another folder; running Sequential on PyTorch instead" in err
    assert err.count("warning:") == 1
    assert not list(tmp_path.rglob("*.failed"))  # the network itself is not marked as unconvertible
    with torch.no_grad():
        expected = FastInferer(WINDOW, enabled=False)(x, net)
    torch.testing.assert_close(
        out, expected.as_tensor() if hasattr(expected, "as_tensor") else expected, atol=1e-5, rtol=0
    )


def test_a_network_openvino_cannot_convert_runs_on_pytorch_after_one_warning(tmp_path, monkeypatch, capsys):
    import openvino

    def converter_failure(*args, **kwargs):
        raise RuntimeError("no translator for aten::some_op")

    monkeypatch.setattr(openvino, "convert_model", converter_failure)
    net, x = _net(), torch.rand(1, 2, 24, 20, 16)
    out = _openvino_inferer(tmp_path)(x, net)
    err = capsys.readouterr().err
    warning = "warning: fast_cpu_runtime: OpenVINO could not convert Sequential for input shape [1, 2, 16, 16, 16]"
    assert err.startswith(warning + " (no translator for aten::some_op); running Sequential on PyTorch")
    assert err.count("warning:") == 1
    with torch.no_grad():
        expected = FastInferer(WINDOW, enabled=False)(x, net)
    torch.testing.assert_close(
        out, expected.as_tensor() if hasattr(expected, "as_tensor") else expected, atol=1e-5, rtol=0
    )


def test_fast_cpu_false_ignores_the_runtime(tmp_path):
    net, x = _net(), torch.rand(1, 2, 16, 16, 16)
    FastInferer(WINDOW, enabled=False, runtime="openvino", openvino_cache_dir=str(tmp_path))(x, net)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.parametrize("key", ["cohra", "student", "fct", "refnet"])
def test_every_bundle_network_runs_on_openvino_with_pytorchs_logits(key, tmp_path):
    """Each bundle's inference.json network and inferer (demo widths, random weights) in float32 on OpenVINO."""
    case = inference.CASES[key]
    torch.manual_seed(0)
    nets, eager = inference.build(case, quick=True, fast=False)
    fast_nets, fast = inference.build(case, quick=True, fast=True)
    for name, net in fast_nets.items():  # the cascade's base network too
        net.load_state_dict(nets[name].state_dict())
    stages = [fast.base_inferer, fast.refine_inferer] if key == "refnet" else [fast]
    for stage in stages:
        stage.bf16, stage.runtime, stage.openvino_cache_dir = False, "openvino", str(tmp_path)
    data = np.load(inference.make_data(case.data, "test", True, str(tmp_path / "data"))["path"])
    x = torch.from_numpy(data["image"])
    x = x if case.data == "vk" else x[None]
    with torch.no_grad():
        reference = eager(x, nets["net"])
    out = fast(x, fast_nets["net"])
    assert list(tmp_path.glob("*/model.xml")), "OpenVINO ran the network"
    if key == "refnet":  # an untrained base's near-tied argmax may flip and change RefNet's input: compare the base
        with torch.no_grad():
            p_eager, p_fast = eager.base_probabilities(x[0]), fast.base_probabilities(x[0])
        assert (p_eager - p_fast).abs().max() < 1e-3
    else:
        scale = float(reference.abs().max())  # logits of random weights reach 8-20 here
        assert float((out - reference).abs().max()) < 1e-3 * scale
    a, b = inference.label_map(case, reference), inference.label_map(case, out)
    assert inference.dice_agreement(a, b, regions=case.label == "regions") >= 0.995
