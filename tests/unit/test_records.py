"""Study records (``common.records``): the working directory's paths are written as ``{study_root}`` and back."""

from __future__ import annotations

import json
import subprocess

import pytest

from common.ablation import RECORDED_FILES, RECORDED_PATTERNS
from common.records import RECORD_ROOT, relocate, restore, save
from tests.helpers import REPO_ROOT


def test_paths_are_moved_whole_and_inside_strings_but_not_lookalikes():
    value = {
        "dir": "/work/main",
        "file": "/work/main/data/a.nii.gz",
        "cmd": "python -m monai.bundle run --config_file ['/work/main/configs/t.json','/work/main/o.json']",
        "other": ["/work/mainline/x", "/elsewhere/work/main", "/elsewhere/work/main/x", 3],
    }
    moved = relocate(value, "/work/main", RECORD_ROOT)
    assert moved == {
        "dir": RECORD_ROOT,
        "file": RECORD_ROOT + "/data/a.nii.gz",
        "cmd": f"python -m monai.bundle run --config_file ['{RECORD_ROOT}/configs/t.json','{RECORD_ROOT}/o.json']",
        "other": ["/work/mainline/x", "/elsewhere/work/main", "/elsewhere/work/main/x", 3],
    }
    assert relocate(moved, RECORD_ROOT, "/clone") == relocate(value, "/work/main", "/clone")


def test_a_saved_manifest_comes_back_under_another_root(tmp_path):
    source, record, clone = tmp_path / "run", tmp_path / "record", tmp_path / "clone"
    source.mkdir()
    manifest = {"command": f"python -m monai.bundle run --config_file ['{tmp_path}/run/overlay.json']"}
    (source / ".run.json").write_text(json.dumps(manifest))
    save([source / ".run.json"], source, record, str(tmp_path))
    assert str(tmp_path) not in (record / ".run.json").read_text()
    assert restore(record, clone, ".run.json", lambda manifest: "command" in manifest, "/new/root")
    assert json.loads((clone / ".run.json").read_text())["command"].endswith("['/new/root/run/overlay.json']")


def test_git_keeps_every_file_a_study_record_holds():
    """A record restores a run on a fresh clone only if git commits it: no ignore rule (for a bundle's own models/
    and eval/ folders, say) may hide a recorded file under studies/."""
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout (an unpacked release has no studies/)")
    run = "studies/cohra/network=cohra_unet/seed0"
    examples = [*RECORDED_FILES, *(p.replace("**/", "").replace("*", "x") for p in RECORDED_PATTERNS)]
    paths = [f"{run}/{name}" for name in examples]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert ignored.stdout == "", f"git ignores recorded files: {ignored.stdout.split()}"
