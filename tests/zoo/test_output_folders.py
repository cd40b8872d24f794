"""Inference output folders: checked before the first case, all-or-nothing per case, one model per folder.

The promises of :mod:`common.outputs`, through the real ``python -m monai.bundle run`` of the bundles' inference
configs on tiny inputs (FCT for the 2D PNG label map + overlay pair, MTCM-KD and RefNet for the 3D NIfTI writer and
their configs' wiring). The runs are independent, so one module fixture starts them all at once (a few threads,
each running its runs one after the other) and the tests read what each left: exit status, the last stderr line,
and the files on disk. Write failures are real: ``RLIMIT_FSIZE`` makes the kernel refuse a file past the limit
(``EFBIG``). A folder that is not writable is a ``chmod 555`` folder, entered as root without the capability to
override permissions (``setpriv``), since root ignores permission bits. Low free space is simulated: a
``sitecustomize`` module makes ``shutil.disk_usage`` report 1 MiB free.

Each bundle run costs seconds (imports), so the default tier runs one scenario per promise (unwritable folder, a
full disk between two slices, two models into one folder); the rest (3D writer, locks, free space, a folder that
cannot be created, another version's manifest) are ``slow``.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from common.outputs import LOCK_NAME, MANIFEST_NAME, OUTPUT_MIN_FREE_MB, OutputFolderError
from tests.helpers import REPO_ROOT

BUNDLES = REPO_ROOT / "bundles"
FCT_TINY = {
    "image_size": 32,
    "network_def#filters": [8, 16, 32, 64, 128, 64, 32, 16, 8],
    "network_def#heads": [1, 1, 1, 1, 1, 1, 1, 1, 1],
    "num_workers": 0,
    "load_pretrain": False,
}
MTCM_TINY = {"roi_size": [32, 32, 32], "channels": [8, 16, 32, 64], "num_workers": 0, "load_pretrain": False}


def photograph(path: Path, height: int, width: int, seed: int) -> Path:
    """Noise, so its overlay PNG hardly compresses: its size on disk is about 3 x height x width bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def nifti_noise(path: Path, shape: tuple[int, ...]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.random.default_rng(0).uniform(0, 100, shape).astype(np.float32), np.eye(4)), path)
    return path


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def last_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ---------------------------------------------------------------------------------------------------------------
# running a bundle
# ---------------------------------------------------------------------------------------------------------------


def run_bundle(
    bundle: str,
    overlay: dict[str, Any],
    work: Path,
    name: str,
    configs: tuple[str, ...] = ("inference.json",),
    prefix: tuple[str, ...] = (),
    preexec_fn: Callable[[], None] | None = None,
    pythonpath: Path | None = None,
) -> dict[str, Any]:
    """One ``python -m monai.bundle run``; returns its exit status, stdout and stderr."""
    from common.bundle_run import bundle_env

    overlay_file = work / f"{name}.json"
    overlay_file.write_text(json.dumps({"bundle_root": str(BUNDLES / bundle), **overlay}))
    files = [str(BUNDLES / bundle / "configs" / c) for c in configs] + [str(overlay_file)]
    config_file = "[" + ",".join(map(repr, files)) + "]"
    cmd = [*prefix, sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file]
    env = bundle_env()
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, preexec_fn=preexec_fn
    )
    return {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


def file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def unprivileged_prefix() -> tuple[str, ...] | None:
    """A command prefix under which permission bits apply (nothing for non-root; None if root cannot drop them)."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    probe = subprocess.run([setpriv, "--bounding-set=-dac_override,-dac_read_search", "true"], capture_output=True)
    return (setpriv, "--bounding-set=-dac_override,-dac_read_search") if probe.returncode == 0 else None


# ---------------------------------------------------------------------------------------------------------------
# the scenarios, each in its own folder
# ---------------------------------------------------------------------------------------------------------------


def unwritable_folder(work: Path) -> dict[str, Any]:
    prefix = unprivileged_prefix()
    if prefix is None:
        return {"skip": "running as root without setpriv: cannot make a folder unwritable"}
    photograph(work / "images" / "VK_0000.png", 12, 16, 0)
    out = work / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        overlay = {**FCT_TINY, "input_dir": str(work / "images"), "output_dir": str(out)}
        result = run_bundle("fct_visible_korean", overlay, work, "run", prefix=prefix)
    finally:
        out.chmod(0o755)
    return {**result, "out": out}


def not_creatable_folder(work: Path) -> dict[str, Any]:
    """RefNet (3D) with its output folder below a plain file."""
    ct = nifti_noise(work / "ct" / "img0001.nii.gz", (16, 16, 8))
    (work / "a_file").write_text("not a folder")
    demo = json.loads((BUNDLES / "refnet_synapse" / "configs" / "demo.json").read_text())["inference"]
    overlay = {
        **demo,
        "dataset_dir": str(ct.parent),
        "datalist": "$common.data.btcv.ct_datalist(@dataset_dir)",
        "output_dir": str(work / "a_file" / "out"),
        "load_pretrain": False,
        "base_roi_size": [16, 16, 8],
    }
    return {**run_bundle("refnet_synapse", overlay, work, "run"), "out": work / "a_file" / "out"}


def low_free_space(work: Path) -> dict[str, Any]:
    photograph(work / "images" / "VK_0000.png", 12, 16, 0)
    site = work / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import collections, shutil\n"
        "_usage = collections.namedtuple('usage', 'total used free')\n"
        "shutil.disk_usage = lambda path: _usage(2**30, 2**30 - 2**20, 2**20)\n"
    )
    out = work / "out"
    overlay = {**FCT_TINY, "input_dir": str(work / "images"), "output_dir": str(out)}
    return {**run_bundle("fct_visible_korean", overlay, work, "run", pythonpath=site), "out": out}


def full_disk_2d(work: Path) -> dict[str, Any]:
    """Two slices: the first's label map and overlay fit under the file-size limit; of the second, the label map
    (written first) fits and the overlay does not, so without all-or-nothing its label map would stay alone."""
    photograph(work / "images" / "VK_0000.png", 12, 16, 0)  # overlay about 0.6 kB
    photograph(work / "images" / "VK_0001.png", 64, 96, 1)  # overlay about 18 kB
    out = work / "out"
    overlay = {**FCT_TINY, "input_dir": str(work / "images"), "output_dir": str(out)}
    return {**run_bundle("fct_visible_korean", overlay, work, "run", preexec_fn=file_size_limit(8192)), "out": out}


def full_disk_3d(work: Path) -> dict[str, Any]:
    """MTCM-KD's label map of noise (about 10 kB compressed) past a 4 kB file-size limit."""
    image = work / "BraTS2021_00000_t1ce.nii.gz"
    nifti_noise(image, (32, 32, 32))
    out = work / "out"
    overlay = {**MTCM_TINY, "input_image": str(image), "output_dir": str(out)}
    result = run_bundle("mtcm_kd_t1ce_student", overlay, work, "run", preexec_fn=file_size_limit(4096))
    return {**result, "out": out}


def two_models(work: Path) -> dict[str, Any]:
    """The untrained network twice into one folder (overwrites), then a trained checkpoint (refused)."""
    import torch
    from monai.bundle import ConfigParser

    photograph(work / "images" / "VK_0000.png", 12, 16, 0)
    out = work / "out"
    overlay = {**FCT_TINY, "input_dir": str(work / "images"), "output_dir": str(out), "ckpt_dir": str(work / "models")}
    first = run_bundle("fct_visible_korean", overlay, work, "first")
    first_files = {name: (out / name).read_bytes() for name in files_in(out)}
    again = run_bundle("fct_visible_korean", overlay, work, "again")
    again_manifest = json.loads((out / MANIFEST_NAME).read_text()) if (out / MANIFEST_NAME).is_file() else None
    again_files = {name: (out / name).read_bytes() for name in files_in(out)}

    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "fct_visible_korean" / "configs" / "inference.json"))
    parser.update({k: v for k, v in FCT_TINY.items()})
    (work / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), work / "models" / "model.pt")
    other = run_bundle("fct_visible_korean", {**overlay, "load_pretrain": True}, work, "other")
    return {
        "first": first,
        "first_files": first_files,
        "again": again,
        "again_manifest": again_manifest,
        "again_files": again_files,
        "other": other,
        "other_files": {name: (out / name).read_bytes() for name in files_in(out)},
        "out": out,
        "checkpoint": work / "models" / "model.pt",
    }


def locks(work: Path) -> dict[str, Any]:
    """A lock of a live process (this test's), then a stale one of a process that has exited."""
    photograph(work / "images" / "VK_0000.png", 12, 16, 0)
    out = work / "out"
    out.mkdir()
    overlay = {**FCT_TINY, "input_dir": str(work / "images"), "output_dir": str(out)}
    live = {"pid": os.getpid(), "host": socket.gethostname(), "started": "2020-01-01T00:00:00+00:00"}
    (out / LOCK_NAME).write_text(json.dumps(live))
    held = run_bundle("fct_visible_korean", overlay, work, "held")
    held_files = files_in(out)
    held_lock = json.loads((out / LOCK_NAME).read_text())

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (out / LOCK_NAME).write_text(json.dumps({**live, "pid": gone.pid}))
    stale = run_bundle("fct_visible_korean", overlay, work, "stale")
    return {"held": held, "held_files": held_files, "held_lock": held_lock, "live_pid": os.getpid(),
            "stale": stale, "stale_pid": gone.pid, "out": out}  # fmt: skip


def other_version_3d(work: Path) -> dict[str, Any]:
    """MTCM-KD into a folder whose manifest says another version of the bundle wrote it."""
    image = work / "BraTS2021_00000_t1ce.nii.gz"
    nifti_noise(image, (32, 32, 32))
    out = work / "out"
    out.mkdir()
    manifest = {"bundle": "mtcm_kd_t1ce_student", "version": "0.0.1", "configs": ["inference.json"], "checkpoints": []}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    (out / "BraTS2021_00000_t1ce_seg.nii.gz").write_bytes(b"the old model's label map")
    overlay = {**MTCM_TINY, "input_image": str(image), "output_dir": str(out)}
    return {**run_bundle("mtcm_kd_t1ce_student", overlay, work, "run"), "out": out}


SCENARIOS = {
    "unwritable": unwritable_folder,
    "not_creatable": not_creatable_folder,
    "low_space": low_free_space,
    "full_disk_2d": full_disk_2d,
    "full_disk_3d": full_disk_3d,
    "two_models": two_models,
    "locks": locks,
    "other_version_3d": other_version_3d,
}


def scenario(name: str) -> Callable:
    """Mark a test as reading the runs of scenario ``name`` (the fixture starts only the selected tests' ones)."""

    def mark(test: Callable) -> Callable:
        test.scenario = name  # type: ignore[attr-defined]
        return test

    return mark


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("output_folders")
    selected = {getattr(item.function, "scenario", None) for item in request.session.items}
    names = [name for name in SCENARIOS if name in selected]

    def start(name: str) -> dict[str, Any]:
        work = root / name
        work.mkdir()
        return SCENARIOS[name](work)

    # the runs wait on subprocesses; threads let them overlap on the 2 cores
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(start, name) for name in names}
        return {name: future.result() for name, future in futures.items()}


def failed_with(result: dict[str, Any], *needles: str) -> str:
    """Assert a failed run whose last stderr line is an ``error:`` holding every needle; return that line."""
    assert result["returncode"] != 0, result["stderr"][-3000:]
    line = last_line(result["stderr"])
    assert line.startswith("error: "), result["stderr"][-3000:]
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def no_network_work(result: dict[str, Any]) -> None:
    assert "Engine run" not in result["stdout"] + result["stderr"], "the evaluator ran before the folder check"


# ---------------------------------------------------------------------------------------------------------------
# 1. the folder is checked before the first case
# ---------------------------------------------------------------------------------------------------------------


@scenario("unwritable")
def test_unwritable_folder_fails_before_any_case(runs):
    result = runs["unwritable"]
    if "skip" in result:
        pytest.skip(result["skip"])
    failed_with(result, f"error: {result['out']}: is not writable", "Permission denied")
    no_network_work(result)
    assert files_in(result["out"]) == []


@pytest.mark.slow
@scenario("not_creatable")
def test_folder_that_cannot_be_created_fails_before_any_case(runs):
    result = runs["not_creatable"]
    failed_with(result, f"error: {result['out']}: cannot be created", "Not a directory")
    no_network_work(result)


@pytest.mark.slow
@scenario("low_space")
def test_too_little_free_space_fails_before_any_case(runs):
    result = runs["low_space"]
    failed_with(result, f"error: {result['out']}: only 1.0 MiB free", f"at least {OUTPUT_MIN_FREE_MB} MiB")
    no_network_work(result)
    assert files_in(result["out"]) == []


# ---------------------------------------------------------------------------------------------------------------
# 2. a case's outputs appear together or not at all
# ---------------------------------------------------------------------------------------------------------------


@scenario("full_disk_2d")
def test_full_disk_keeps_complete_cases_only_2d(runs):
    result = runs["full_disk_2d"]
    out = result["out"]
    failed_with(result, f"error: {out}: writing VK_0001_overlay.png failed", "File too large", "VK_0001")
    # the first slice complete, nothing of the second (no label map without overlay or the reverse), no temporaries
    assert files_in(out) == [MANIFEST_NAME, "VK_0000_overlay.png", "VK_0000_seg.png"]
    assert np.asarray(Image.open(out / "VK_0000_seg.png")).shape == (12, 16)


@pytest.mark.slow
@scenario("full_disk_3d")
def test_full_disk_leaves_nothing_of_the_case_3d(runs):
    result = runs["full_disk_3d"]
    out = result["out"]
    # SaveImaged reports a failed writer only as "cannot find a suitable writer"; the cause must still come last
    failed_with(result, f"error: {out}: writing BraTS2021_00000_t1ce_seg.nii.gz failed", "File too large")
    assert files_in(out) == []


def test_rename_failure_takes_back_the_renamed_files(tmp_path, monkeypatch):
    """If the second rename of a case fails, the first target is removed again and no temporary is left."""
    import common.outputs as outputs

    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", replace)
    with pytest.raises(OutputFolderError, match=rf"{tmp_path}: renaming the finished b.png into place failed"):
        with outputs.outputs_of_one_case("case"):
            outputs.write_output_bytes(tmp_path / "a.png", b"a")
            outputs.write_output_bytes(tmp_path / "b.png", b"b")
    assert files_in(tmp_path) == []


def test_label_map_failing_after_the_overlay_removes_the_overlay(tmp_path, monkeypatch):
    """The original failure the other way round: the overlay written, then the label map refused (a full disk).
    Inside the bundle's postprocessing Compose neither remains, and the error names the folder and the cause."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import SaveImaged

    import common.outputs as outputs
    from common.transforms.overlay import SaveOverlayd
    from common.transforms.writers import AllOrNothingCompose

    image = photograph(tmp_path / "VK_0000.png", 12, 16, 0)
    out = tmp_path / "out"
    postprocessing = AllOrNothingCompose([
        SaveOverlayd("pred", output_dir=out),
        SaveImaged("pred", output_dir=out, output_postfix="seg", output_ext=".png", output_dtype=np.uint8,
                   scale=None, resample=False, separate_folder=False,
                   writer="common.transforms.overlay.AtomicPILWriter"),
    ])  # fmt: skip
    real_write = outputs.write_output_file

    def disk_full_for_label_maps(target, write):
        def half_then_enospc(tmp):
            Path(tmp).write_bytes(b"\x89PNG half")
            raise OSError(errno.ENOSPC, "No space left on device")

        real_write(target, half_then_enospc if str(target).endswith("_seg.png") else write)

    monkeypatch.setattr(outputs, "write_output_file", disk_full_for_label_maps)
    pred = MetaTensor(torch.ones(1, 16, 12, dtype=torch.uint8), meta={"filename_or_obj": str(image)})
    with pytest.raises(Exception) as info:
        postprocessing({"pred": pred})
    from common.errors import bad_input_message

    message = bad_input_message(info.value)
    assert message and message.startswith(f"{out}: writing VK_0000_seg.png failed: No space left on device")
    assert files_in(out) == []

    monkeypatch.setattr(outputs, "write_output_file", real_write)
    postprocessing({"pred": pred})
    assert files_in(out) == ["VK_0000_overlay.png", "VK_0000_seg.png"]


# ---------------------------------------------------------------------------------------------------------------
# 3. one model per folder
# ---------------------------------------------------------------------------------------------------------------


@scenario("two_models")
def test_same_model_overwrites_another_model_is_refused(runs):
    result = runs["two_models"]
    out = result["out"]
    assert result["first"]["returncode"] == 0, result["first"]["stderr"][-3000:]
    assert sorted(result["first_files"]) == [MANIFEST_NAME, "VK_0000_overlay.png", "VK_0000_seg.png"]
    assert result["again"]["returncode"] == 0, result["again"]["stderr"][-3000:]
    manifest = result["again_manifest"]
    assert manifest["bundle"] == "fct_visible_korean"
    assert (manifest["configs"], manifest["checkpoints"]) == (["inference.json"], [])
    line = failed_with(
        result["other"], f"error: {out}: holds the outputs of another model", "checkpoint contents",
        str(result["checkpoint"]), "another --output_dir",
    )  # fmt: skip
    no_network_work(result["other"])
    assert "no checkpoint (untrained network)" in line
    assert result["other_files"] == result["again_files"], "the refused run changed the folder"


@pytest.mark.slow
@scenario("locks")
def test_live_lock_refuses_and_stale_lock_is_taken_over(runs):
    result = runs["locks"]
    out = result["out"]
    failed_with(result["held"], f"error: {out}: another run (process {result['live_pid']} on this host")
    no_network_work(result["held"])
    assert result["held_files"] == [LOCK_NAME] and result["held_lock"]["pid"] == result["live_pid"]

    stale = result["stale"]
    assert stale["returncode"] == 0, stale["stderr"][-3000:]
    assert f"taking over the stale lock file {out / LOCK_NAME} (process {result['stale_pid']}" in stale["stderr"]
    assert files_in(out) == [MANIFEST_NAME, "VK_0000_overlay.png", "VK_0000_seg.png"], "lock left behind"


@pytest.mark.slow
@scenario("other_version_3d")
def test_manifest_of_another_version_is_refused_3d(runs):
    result = runs["other_version_3d"]
    out = result["out"]
    failed_with(result, f"error: {out}: holds the outputs of another model", "mtcm_kd_t1ce_student 0.0.1", "version")
    no_network_work(result)
    assert (out / "BraTS2021_00000_t1ce_seg.nii.gz").read_bytes() == b"the old model's label map"
    assert files_in(out) == [MANIFEST_NAME, "BraTS2021_00000_t1ce_seg.nii.gz"]


def test_a_file_as_output_folder(tmp_path):
    from common.outputs import prepare_output_folder

    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match=rf"{tmp_path / 'file'}: is a file, not a folder"):
        prepare_output_folder(tmp_path / "file")
