"""What a user types after ``python -m monai.bundle run`` is read as meant or refused before any work.

- Every boolean setting of every bundle is read through ``common.settings.flag`` (so ``false`` is false, from the
  command line or from MONAI Label's request strings), and its command-line spellings are checked.
- ``common.settings.check_command_line`` is the first thing every runnable config stack evaluates; it refuses an id
  no stacked config defines (naming the closest ids), a boolean spelled otherwise, and a common knob of the wrong
  type or range, each with one ``error:`` line.
- The real entry point: a mistyped or bad setting stops ``monai.bundle run`` with exit status 2 before any folder is
  made, and ``--load_pretrain false`` runs inference without weights.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ci import zoo
from common.settings import SettingError, check_command_line, command_line_problems, flag
from tests.helpers import REPO_ROOT

BUNDLES = REPO_ROOT / "bundles"

#: The config stacks users run (the bundle READMEs' commands), per bundle.
STACKS: dict[str, list[list[str]]] = {
    bundle: [
        ["train.json"],
        ["train.json", "evaluate.json"],
        ["train.json", "multi_gpu_train.json"],
        ["inference.json"],
    ]
    for bundle in ("cohra_unet_brats", "fct_visible_korean", "mtcm_kd_t1ce_student", "refnet_synapse")
}
STACKS["mtcm_kd_t1ce_student"] += [["train.json", "faithful.json"], ["inference.json", "faithful.json"]]
STACKS["refnet_synapse"] += [
    ["train_base.json"],
    ["train_base.json", "predict_base.json"],
    ["inference.json", "refine.json"],
]


def _files(bundle: str, stack: list[str]) -> list[str]:
    return [str(BUNDLES / bundle / "configs" / name) for name in stack]


def _config_file_argument(bundle: str, stack: list[str]) -> list[str]:
    return ["--config_file", "[" + ",".join(repr(f) for f in _files(bundle, stack)) + "]"]


def _boolean_settings() -> list[tuple[str, list[str], str]]:
    """(bundle, the first stack that defines it, key) for every top-level boolean setting of every bundle."""
    found: dict[tuple[str, str], list[str]] = {}
    for bundle, stacks in STACKS.items():
        for stack in stacks:
            merged: dict = {}
            for f in _files(bundle, stack):
                merged.update(json.loads(Path(f).read_text()))
            for key, value in merged.items():
                if (isinstance(value, bool) and "#" not in key) or key == "amp":
                    found.setdefault((bundle, key), stack)
    return [(bundle, stack, key) for (bundle, key), stack in sorted(found.items())]


BOOLEAN_SETTINGS = _boolean_settings()


def test_the_boolean_settings_are_found():
    keys = {key for _, _, key in BOOLEAN_SETTINGS}
    assert {"resume", "load_pretrain", "amp", "fast_cpu", "fast_cpu_bf16", "tta_mirroring", "use_kd"} <= keys
    assert len(BOOLEAN_SETTINGS) >= 30


@pytest.mark.parametrize("spelling, meaning", [
    (True, True), (False, False), (1, True), (0, False), ("true", True), ("false", False), ("True", True),
    ("FALSE", False), ("1", True), ("0", False), (" false ", False),
])  # fmt: skip
def test_flag_reads_every_spelling(spelling, meaning):
    assert flag(spelling) is meaning


@pytest.mark.parametrize("value", ["yes", "no", "", 2, -1, None, 0.5, [False]])
def test_flag_refuses_anything_else(value):
    with pytest.raises(SettingError, match="true or false"):
        flag(value)


@pytest.mark.parametrize("bundle, stack, key", BOOLEAN_SETTINGS, ids=[f"{b}-{k}" for b, _, k in BOOLEAN_SETTINGS])
def test_each_boolean_setting_is_read_through_flag(bundle, stack, key):
    """Every reference to the setting, in every config of the bundle, is ``common.settings.flag(@key)``."""
    bare = re.compile(rf"@{re.escape(key)}(?![\w#])")
    wrapped = f"common.settings.flag(@{key})"
    for path in sorted((BUNDLES / bundle / "configs").glob("*.json")):
        text = path.read_text()
        assert len(bare.findall(text)) == text.count(wrapped), f"{path.name}: @{key} read without flag()"
    arguments = _config_file_argument(bundle, stack)
    for spelling in ("false", "False", "0", "true", "TRUE", "1"):
        assert command_line_problems([*arguments, f"--{key}", spelling]) == []
    assert command_line_problems([*arguments, f"--{key}", "maybe"]) == [
        f"--{key}: expected true or false (or 1 or 0), got 'maybe'"
    ]


@pytest.mark.parametrize(
    "bundle, stack",
    [(b, s) for b, stacks in STACKS.items() for s in stacks],
    ids=lambda x: "+".join(x) if isinstance(x, list) else x,
)
def test_every_stack_checks_its_command_line_first_and_its_defaults_pass(bundle, stack):
    from monai.bundle import ConfigParser

    merged = ConfigParser.load_config_files(_files(bundle, stack))
    assert merged["initialize"][0] == "$common.settings.check_command_line()"
    assert "$import common.settings" in merged["imports"]
    assert command_line_problems(_config_file_argument(bundle, stack)) == []


@pytest.mark.parametrize("override, message", [
    (["--epochs_typo", "1"], "--epochs_typo: no such setting in train.json; did you mean --epochs?"),
    (["--lerning_rate", "0.1"], "--lerning_rate: no such setting in train.json; did you mean --learning_rate?"),
    (["--network_def#chanels", "[8,16,32,64]"], "did you mean --network_def#channels or"),
    (["--validate#inferer#roi_sise", "[8,8,8]"], "did you mean --validate#inferer#roi_size?"),
    (["--epochs", "abc"], "--epochs: expected an integer >= 1, got 'abc'"),
    (["--epochs", "-2"], "--epochs: expected an integer >= 1, got -2"),
    (["--epochs", "2.5"], "--epochs: expected an integer >= 1, got 2.5"),
    (["--batch_size", "0"], "--batch_size: expected an integer >= 1, got 0"),
    (["--learning_rate", "0"], "--learning_rate: expected a number > 0, got 0"),
    (["--learning_rate", "fast"], "--learning_rate: expected a number > 0, got 'fast'"),
    (["--roi_size", "64"], "--roi_size: expected a list of 2 or 3 positive integers, e.g. [96,96,96], got 64"),
    (["--roi_size", "[64,0,64]"], "--roi_size: expected a list of 2 or 3 positive integers"),
    (["--fold", "-1"], "--fold: expected an integer >= 0, got -1"),
    (["--resume", "maybe"], "--resume: expected true or false (or 1 or 0), got 'maybe'"),
    (["--train#dataloader#shuffle", "false"], "--train#dataloader#shuffle: write False here"),
    (["--network_def#deep_supervision", "false"], "--network_def#deep_supervision: write False here"),
])  # fmt: skip
def test_wrong_settings_are_named(override, message):
    problems = command_line_problems([*_config_file_argument("cohra_unet_brats", ["train.json"]), *override])
    assert len(problems) == 1 and message in problems[0], problems


@pytest.mark.parametrize("bundle, stack, override, message", [
    ("fct_visible_korean", ["inference.json"], ["--fct_preset", "nosuch"],
     "--fct_preset: expected one of 'paper', 'tf_main', 'wide_32_512', got 'nosuch'"),
    ("fct_visible_korean", ["train.json", "evaluate.json"], ["--eval_split", "tset"],
     "--eval_split: expected one of 'test', 'training', 'validation', got 'tset'"),
    ("mtcm_kd_t1ce_student", ["train.json"], ["--student_modality", "t1c"], "--student_modality: expected one of"),
    ("mtcm_kd_t1ce_student", ["train.json"], ["--teacher_dice", "slice"], "--teacher_dice: expected one of"),
    ("refnet_synapse", ["train.json"], ["--base_input", "label"], "--base_input: expected one of"),
    ("refnet_synapse", ["inference.json"], ["--lod_pretrain", "false"], "did you mean --load_pretrain?"),
    ("cohra_unet_brats", ["inference.json"], ["--inferer#inferer#ovrlap", "0.25"],
     "did you mean --inferer#inferer#overlap?"),
])  # fmt: skip
def test_presets_splits_and_names_are_checked(bundle, stack, override, message):
    problems = command_line_problems([*_config_file_argument(bundle, stack), *override])
    assert len(problems) == 1 and message in problems[0], problems


def test_a_bad_value_in_a_stacked_file_is_named_with_the_file(tmp_path):
    overlay = tmp_path / "settings.json"
    overlay.write_text(json.dumps({"epochs": 0}))
    arguments = ["--config_file", repr([str(BUNDLES / "cohra_unet_brats/configs/train.json"), str(overlay)])]
    assert command_line_problems(arguments) == ["epochs in settings.json: expected an integer >= 1, got 0"]


@pytest.mark.parametrize("override", [
    ["--network_def#transformer_dropout", "0.1"],  # an argument of the component's _target_, not in the config yet
    ["--my_epochs", "3", "--epochs", "@my_epochs"],  # a new id that another setting refers to
    ["--tracking", "mlflow", "--experiment_name", "x", "--run_name", "y"],  # what --tracking adds
    ["--args_file", "{args_file}"],
    ["--epochs=2", "--resume=false"],
    ["--train#handlers#0#_disabled_", "True"],
    ["--epochs", "$2 * 3"],
    ["--_meta_#version", "9.9.9"],
])  # fmt: skip
def test_legitimate_settings_pass(override, tmp_path):
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"epochs": 3, "resume": "false"}))
    override = [o.format(args_file=args_file) for o in override]
    assert command_line_problems([*_config_file_argument("cohra_unet_brats", ["train.json"]), *override]) == []


def test_an_args_file_is_checked_like_the_command_line(tmp_path):
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"epoch": 3}))
    problems = command_line_problems(
        [*_config_file_argument("cohra_unet_brats", ["train.json"]), "--args_file", str(args_file)]
    )
    assert problems == ["--epoch: no such setting in train.json; did you mean --epochs?"]


def test_runs_started_from_python_are_not_read_from_the_command_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pytest", "--epochs_typo", "1"])
    check_command_line()  # no SystemExit: sys.argv is not a monai.bundle command line


# ---------------------------------------------------------------------------------------------------------------
# the real entry point
# ---------------------------------------------------------------------------------------------------------------


def _run(bundle: str, stack: list[str], *override: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", *_config_file_argument(bundle, stack), *override]
    return subprocess.run(
        cmd, cwd=cwd or BUNDLES / bundle, env=zoo.bundle_env(), capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("bundle, stack, override, message", [
    ("cohra_unet_brats", ["train.json"], ["--epochs_typo", "1"],
     "--epochs_typo: no such setting in train.json; did you mean --epochs?"),
    ("fct_visible_korean", ["train.json"], ["--epochs", "abc"], "--epochs: expected an integer >= 1, got 'abc'"),
    ("mtcm_kd_t1ce_student", ["train.json", "evaluate.json"], ["--resume", "maybe"],
     "--resume: expected true or false"),
    ("refnet_synapse", ["inference.json"], ["--lod_pretrain", "false"], "did you mean --load_pretrain?"),
    ("fct_visible_korean", ["inference.json"], ["--fct_preset", "nosuch"], "--fct_preset: expected one of"),
])  # fmt: skip
def test_monai_bundle_run_stops_before_any_work(bundle, stack, override, message, tmp_path):
    """Exit status 2, one error line last, and neither the checkpoint nor the output folder made."""
    proc = _run(
        bundle, stack, *override, "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval")
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_load_pretrain_false_runs_inference_without_weights(tmp_path):
    """``--load_pretrain false`` (lower case, as users type it) skips models/model.pt: a pipeline check runs."""
    images = tmp_path / "visible_korean" / "images"
    images.mkdir(parents=True)
    for i in range(2):
        rgb = np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(images / f"VK_{i:04d}.png")
    proc = _run(
        "fct_visible_korean", ["inference.json"],
        "--dataset_dir", str(tmp_path / "visible_korean"), "--ckpt_dir", str(tmp_path / "no_models"),
        "--output_dir", str(tmp_path / "eval"), "--load_pretrain", "false", "--image_size", "32",
        "--network_def#filters", "[4,8,8,8,16,8,8,8,4]", "--network_def#heads", "[1,1,1,1,1,1,1,1,1]",
        "--num_workers", "0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "eval").glob("*_seg.png")) == ["VK_0000_seg.png", "VK_0001_seg.png"]


@pytest.mark.parametrize(
    "bundle, stack", [("cohra_unet_brats", ["train.json"]), ("refnet_synapse", ["train_base.json"])]
)
def test_resume_without_a_checkpoint_stops_before_any_work(bundle, stack, tmp_path):
    """The checkpoint to resume from is found first thing, so a run with none leaves no logs or folders behind."""
    (tmp_path / "models").mkdir()
    proc = _run(
        bundle,
        stack,
        "--resume",
        "true",
        "--ckpt_dir",
        str(tmp_path / "models"),
        "--output_dir",
        str(tmp_path / "eval"),
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {tmp_path / 'models'}: no checkpoint to resume from"), proc.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["models"] and not any((tmp_path / "models").iterdir())


GRID = "bundles/cohra_unet_brats/configs/ablation.json"


@pytest.mark.parametrize("command, message", [
    (["common.ablation", "--bundle-root", "bundles/cohra_unet_brats", "--grid", GRID, "--seeds", "0"],
     "error: --seeds must be >= 1, got 0"),
    (["common.ablation", "--bundle-root", "bundles/cohra_unet_brats", "--grid", GRID, "--axes", "nosuch"],
     "error: unknown axes ['nosuch']; the grid has"),
    (["common.ablation", "--bundle-root", "bundles/cohra_unet_brats", "--grid", "nosuch.json"], "error: "),
    (["common.data.brats", "make-split", "--dataset-dir", "/nonexistent"],
     "error: BraTS dataset folder '/nonexistent'"),
    (["common.data.visible_korean", "prepare", "--dataset-dir", "/nonexistent"], "error: "),
])  # fmt: skip
def test_the_runners_and_data_commands_refuse_with_one_error_line(command, message, tmp_path):
    """The other entry points a user types: exit status 2, an ``error:`` line, and no output folder made."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", *command, "--out", str(out)],
        cwd=REPO_ROOT, env=zoo.bundle_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not out.exists()
