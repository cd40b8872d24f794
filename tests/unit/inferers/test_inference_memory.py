"""Inference under load: a bundle's real inference pipeline runs over many cases in one process without its memory
growing case over case.

The pipeline is fct_visible_korean's ``configs/inference.json`` (load, resize, FCT, inverse, save PNGs), run as one
evaluator over ``CASES`` images. After every case the test collects garbage and records two things:

- the number of live tensors (``torch.Tensor`` and MONAI ``MetaTensor`` objects gc can see). A pipeline that keeps
  anything of a finished case alive (a handler appending ``engine.state.output`` to a list, a cache keyed by case)
  adds tensors every case, however small the images are, so this count is exact where RSS is noisy;
- the resident set size, whose least-squares slope over the steady cases must stay below ``MAX_RSS_GROWTH``: it
  catches growth outside Python objects (native buffers, allocator fragmentation).

``test_the_check_catches_a_leak`` runs the same check with a handler that keeps every case's output, and expects
the check to report it, so the check itself is known to be able to fail.
"""

from __future__ import annotations

import gc
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser

from common.synthetic.visible_korean import generate_visible_korean
from tests.helpers import REPO_ROOT

BUNDLE = REPO_ROOT / "bundles" / "fct_visible_korean"
CASES, WARM_UP = 24, 8
# 64x64 inputs: a retained case is ~100 KiB of tensors, below RSS noise, which is why the tensor count is the
# primary check. RSS may wobble by a few pages per case from the allocator; 256 KiB per case is a real leak.
MAX_RSS_GROWTH = 256 * 1024


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _live_tensors() -> int:
    return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


@pytest.fixture(scope="module")
def many_cases(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vk_many")
    generate_visible_korean(root, cases=2, size=(64, 64), seed=0, workers=1, verbose=False)
    images = sorted((root / "images").glob("*.png"))
    for i in range(CASES - len(images)):  # copies of two phantoms: the pipeline cannot tell them apart
        shutil.copy(images[i % len(images)], root / "images" / f"VK_{i + 100:04d}.png")
    return root


def _profile(dataset_dir: Path, output_dir: Path, leak: bool = False) -> tuple[list[int], list[int]]:
    """Run inference over every image of ``dataset_dir``; live-tensor counts and RSS after each case."""
    demo = ConfigParser.load_config_file(BUNDLE / "configs" / "demo.json")
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "inference.json")
    overrides = {
        **demo["inference"],
        "bundle_root": str(BUNDLE),
        "dataset_dir": str(dataset_dir),
        "output_dir": str(output_dir),
        "load_pretrain": False,  # no published weights; random ones exercise the same code and memory
        "fast_cpu_runtime": "torch",  # in this process: OpenVINO's thread pool would not survive later forks
    }
    for key, value in overrides.items():
        parser[key] = value
    parser.get_parsed_content("initialize")
    evaluator = parser.get_parsed_content("evaluator")
    tensors: list[int] = []
    rss: list[int] = []
    kept = []

    def record(engine) -> None:
        if leak:
            kept.append(engine.state.output)
        gc.collect()
        tensors.append(_live_tensors())
        rss.append(_rss())

    evaluator.add_event_handler(Events.ITERATION_COMPLETED, record)
    evaluator.run()
    assert len(tensors) == CASES, f"ran {len(tensors)} of {CASES} cases"
    return tensors, rss


def _growth(tensors: list[int], rss: list[int]) -> list[str]:
    """What grew over the steady cases (after the warm-up); empty when nothing did."""
    problems = []
    steady_tensors = tensors[WARM_UP:]
    if max(steady_tensors) > steady_tensors[0]:
        problems.append(f"live tensors grew from {steady_tensors[0]} to {max(steady_tensors)}: {tensors}")
    slope = np.polyfit(np.arange(len(rss) - WARM_UP), np.asarray(rss[WARM_UP:], dtype=float), 1)[0]
    if slope > MAX_RSS_GROWTH:
        problems.append(
            f"RSS grows {slope / 1024:.0f} KiB per case (limit {MAX_RSS_GROWTH // 1024} KiB): "
            f"{[round(r / 2**20, 1) for r in rss]} MiB"
        )
    return problems


def test_memory_does_not_grow_case_over_case(many_cases, tmp_path):
    tensors, rss = _profile(many_cases, tmp_path / "out")
    assert len(list((tmp_path / "out").rglob("*_seg.png"))) == CASES, "not every case wrote its label map"
    assert not _growth(tensors, rss), _growth(tensors, rss)


def test_the_check_catches_a_leak(many_cases, tmp_path):
    tensors, rss = _profile(many_cases, tmp_path / "out", leak=True)
    problems = _growth(tensors, rss)
    assert problems and problems[0].startswith("live tensors grew"), (tensors, rss)
