"""``make bench`` smoke test and the fast_cpu agreement check of every bundle's inference config. No time asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import inference
from bench.harness import run_isolated, summarise
from bench.run import goal_rows, summarise_figures
from bench.run import main as bench_main
from common.cpu import native_bf16
from common.fast_inference import FastInferer
from tests.helpers import REPO_ROOT

BUNDLE_CASES = ("cohra", "student", "fct", "refnet")


def test_summarise_and_isolated_worker():
    s = summarise([3.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 3)
    info = run_isolated("bench.harness:machine_info", threads=1)
    assert info["torch_threads"] == 1 and info["peak_rss_mib"] > 0
    with pytest.raises(ValueError, match="module:function"):
        run_isolated("no_colon")


@pytest.mark.parametrize("key", BUNDLE_CASES)
def test_fast_cpu_agrees_with_eager_on_bundle_config(key, tmp_path):
    """The bundle's inference.json with fast_cpu true and false: label maps agree (Dice >= 0.995) on a tiny input."""
    case = inference.CASES[key]
    torch.manual_seed(0)
    eager_nets, eager = inference.build(case, quick=True, fast=False)
    # the PyTorch passes; OpenVINO (the default runtime of two bundles) has its own agreement tests in a process of
    # their own (tests/unit/openvino_cases.py), since its thread pool would not survive this process's later forks
    fast_nets, fast = inference.build(case, quick=True, fast=True, runtime="torch")
    assert isinstance(fast if key != "refnet" else fast.base_inferer, FastInferer)
    for name, net in fast_nets.items():
        net.load_state_dict(eager_nets[name].state_dict())
    data = np.load(inference.make_data(case.data, "test", True, str(tmp_path))["path"])
    x = torch.from_numpy(data["image"])
    x = x if case.data == "vk" else x[None]
    with torch.no_grad():
        eager_logits, fast_logits = eager(x, eager_nets["net"]), fast(x, fast_nets["net"])
    assert fast_logits.dtype == torch.float32 and not fast_logits.is_inference()
    a, b = inference.label_map(case, eager_logits), inference.label_map(case, fast_logits)
    assert a.shape == b.shape
    dice = inference.dice_agreement(a, b, regions=case.label == "regions")
    if key == "refnet":
        # its fast path stays in float32 by default (fast_cpu_bf16 false: bf16 agreed only to Dice 0.94 in make bench)
        config = json.loads((REPO_ROOT / "bundles/refnet_synapse/configs/inference.json").read_text())
        assert config["fast_cpu"] is True and config["fast_cpu_bf16"] is False
        assert fast.base_inferer.cpu_sw_batch_size == 1
        # the untrained base's near-uniform argmax can still flip on float32 rounding (one voxel in ~10^5 here), and
        # a flipped base label changes RefNet's input: compare the base probabilities, then the final label maps
        with torch.no_grad():
            p_eager, p_fast = eager.base_probabilities(x[0]), fast.base_probabilities(x[0])
        assert (p_eager - p_fast).abs().max() < 1e-4
        assert dice >= 0.995
        return
    if key == "fct":
        # untrained, FCT's bf16 path moves near-ties (attention and LayerNorm in bf16; Dice ~0.985 here); on
        # phantom-trained weights make bench measured 0.9996, so fast_cpu is on by default: it must still run close
        default = json.loads((REPO_ROOT / "bundles/fct_visible_korean/configs/inference.json").read_text())["fast_cpu"]
        assert default is True and dice >= 0.98
        return
    # untrained weights leave many near-ties; wherever the fp32 decision is clear, bf16 must make the same one
    if case.label == "regions":
        confident = eager_logits.float().abs() > 0.1
        assert torch.equal(torch.from_numpy(a)[confident], torch.from_numpy(b)[confident])
    else:
        top2 = eager_logits.float().topk(2, dim=1).values
        confident = (top2[:, 0] - top2[:, 1]) > 0.1
        assert torch.equal(torch.from_numpy(a)[confident], torch.from_numpy(b)[confident])
    assert dice >= 0.995


def test_bench_run_quick_writes_json_and_markdown(tmp_path):
    # in a process of its own, as make bench runs it: cohra_unet_brats and the student run on OpenVINO by default
    cmd = [sys.executable, "-m", "bench.run", "--quick", "--out", str(tmp_path), "--only", "bench.inference"]
    run = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200)
    report = json.loads((tmp_path / "latest.json").read_text())
    assert run.returncode == 0, (report["modules"], run.stderr[-3000:])
    assert report["machine"]["cpu_model"] and report["machine"]["torch"] == torch.__version__
    assert {f["group"] for f in report["figures"]} == {"inference"}
    bundles = {f["bundle"] for f in report["figures"]}
    for name in ("cohra_unet_brats", "mtcm_kd_t1ce_student", "fct_visible_korean", "refnet_synapse"):
        assert name in bundles
    ratios = [f for f in report["figures"] if "ratio" in f]
    assert ratios and all(f["ratio"] > 0 for f in ratios)
    assert all(f["summary"]["n"] == len(f["values"]) for f in report["figures"])
    md = (tmp_path / "latest.md").read_text()
    assert "## inference" in md and "Machine:" in md
    assert {row["bundle"] for row in goal_rows(report)} == {
        "cohra_unet_brats", "mtcm_kd_t1ce_student", "reference: MONAI SegResNet", "refnet_synapse",
        "fct_visible_korean"}  # fmt: skip
    assert "## Goals: a whole case on 2 cores" in md and "not measured (quick)" in md
    levers = [f for f in report["figures"] if f.get("lever") == "crop_foreground"]
    assert {f["bundle"] for f in levers} == {
        "cohra_unet_brats", "mtcm_kd_t1ce_student", "reference: MONAI SegResNet", "refnet_synapse"}  # fmt: skip
    assert all(0.0 <= f["values"][0] <= 1.0 for f in levers if f["unit"] == "Dice")
    runtimes = {f["bundle"]: f["lever"] for f in report["figures"] if f.get("lever", "").startswith("fast_cpu_runtime")}
    assert runtimes == {
        "cohra_unet_brats": "fast_cpu_runtime torch",  # OpenVINO by default
        "mtcm_kd_t1ce_student": "fast_cpu_runtime torch",
        "reference: MONAI SegResNet": "fast_cpu_runtime openvino",
        # "auto": OpenVINO by default where bf16 is native
        "fct_visible_korean": "fast_cpu_runtime " + ("torch" if native_bf16() else "openvino"),
    }
    default = [f for f in report["figures"] if "goal" in f and f["bundle"] == "cohra_unet_brats"]
    assert len(default) == 1 and "fast_cpu path on OpenVINO" in default[0]["name"]
    assert len(list(Path(tmp_path).glob("2*.json"))) == 1


def test_bench_training_and_fct_comparison_quick(tmp_path):
    """Training, data-pipeline and FCT-comparison modules in smoke mode: every group and pairing is reported."""
    code = bench_main(["--quick", "--out", str(tmp_path), "--only", "bench.training", "--only", "bench.fct_comparison"])
    report = json.loads((tmp_path / "latest.json").read_text())
    assert code == 0, report["modules"]
    figures = report["figures"]
    assert {f["group"] for f in figures} == {"training", "data", "fct_comparison"}
    training = [f for f in figures if f["group"] == "training"]
    bundles = {"cohra_unet_brats", "mtcm_kd_t1ce_student", "fct_visible_korean", "refnet_synapse"}
    assert {f["bundle"] for f in training} == bundles
    # every network is timed next to its reference, and both have their own peak RSS
    paired = {f["bundle"] for f in training if f.get("reference") and f["unit"] == "s" and f["ratio"] > 0}
    assert paired == bundles
    ablation = [f for f in training if "retain_freed_memory false" in f["name"] and f["unit"] == "s"]
    assert len(ablation) == 1 and ablation[0]["reference"].startswith("cohra_unet_brats: COHRA-UNet training step")
    assert all(v > 0 for f in training if f["unit"] == "MiB" for v in f["values"])
    overhead = [f for f in training if f["unit"] == "ratio"]
    assert len(overhead) == 1 and overhead[0]["values"][0] > 0
    fractions = [f for f in figures if f["unit"] == "fraction"]
    assert fractions and all(0.0 <= v <= 1.0 for f in fractions for v in f["values"])
    dice = {f["name"].split(" (")[0]: f for f in figures if f["unit"] == "Dice"}
    assert set(dice) == {
        f"{net}: held-out {organ} Dice" for net in ("FCT", "MONAI BasicUNet 2D") for organ in ("bone", "muscle")
    }
    assert all(0.0 <= v <= 1.0 and len(f["values"]) >= 1 for f in dice.values() for v in f["values"])
    fct_steps = [f for f in training if f["bundle"] == "fct_visible_korean" and f["unit"] == "s"]
    assert len(fct_steps) == 2 and any("MONAI BasicUNet 2D training step" in f.get("reference", "") for f in fct_steps)
    md = (tmp_path / "latest.md").read_text()
    assert "## training" in md and "## data" in md and "## fct_comparison" in md


def test_goal_rows_say_met_or_missed_and_why_from_the_same_run():
    def fig(bundle, name, unit, values, **extra):
        return {"group": "inference", "bundle": bundle, "name": name, "unit": unit, "values": values, **extra}

    figures = summarise_figures([
        fig("cohra_unet_brats", "COHRA fast, full case", "s", [30.0, 31.0, 29.0], goal={"max_s": 15.0}),
        fig("cohra_unet_brats", "COHRA fast, full case [fraction of bfloat16 matmul peak]", "fraction", [0.5]),
        fig("cohra_unet_brats", "COHRA agreement, one window", "Dice", [0.999]),
        fig("cohra_unet_brats", "COHRA fast + crop", "s", [12.0], lever="crop_foreground"),
        fig("cohra_unet_brats", "COHRA fast + crop agreement", "Dice", [0.93], lever="crop_foreground"),
        fig("reference: MONAI SegResNet", "SegResNet fast, full case", "s", [2.5], goal={"max_s": 3.0}),
        fig("reference: MONAI SegResNet", "SegResNet agreement", "Dice", [0.99]),
        fig("fct_visible_korean", "FCT eager", "s", [4.0]),
        fig("fct_visible_korean", "FCT fast", "s", [1.0], reference="FCT eager", goal={"min_speedup": 3.0}),
        fig("fct_visible_korean", "FCT agreement", "Dice", [1.0]),
    ])  # fmt: skip
    report = {"figures": figures, "quick": False}
    rows = {row["bundle"]: row for row in goal_rows(report)}
    assert rows["cohra_unet_brats"]["met"] is False
    assert rows["cohra_unet_brats"]["reasons"] == [
        "2.0x the time", "the path already runs at 0.50 of the matmul peak (at the whole peak: 15.00 s)",
        "with crop_foreground: 12.00 s, label maps agree at Dice 0.9300"]  # fmt: skip
    assert rows["cohra_unet_brats"]["agreement"] == 0.999, "a lever's agreement is not the default path's"
    assert rows["reference: MONAI SegResNet"]["met"] is False
    assert rows["reference: MONAI SegResNet"]["reasons"][0] == "label maps agree at Dice 0.9900 < 0.995"
    assert rows["fct_visible_korean"]["met"] is True and rows["fct_visible_korean"]["measured"] == "4.00x (1.00 s)"
