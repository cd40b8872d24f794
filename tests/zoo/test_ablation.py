"""The ablation runner (``python -m common.ablation``): grid files, run expansion, and a tiny study end to end."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

import common.crossval
from ci import zoo
from common.ablation import (
    Run,
    count_parameters,
    expand_grid,
    format_mean_sd,
    load_grid,
    results_table,
    run_study,
    seed_results_table,
    summarise_seeds,
    with_seeds,
)
from common.data.brats import write_split_file
from common.synthetic.brats import generate_brats
from tests.helpers import FIXTURE_BUNDLE, REPO_ROOT

COHRA = REPO_ROOT / "bundles" / "cohra_unet_brats"


def _grid(tmp_path: Path, grid: dict) -> Path:
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(grid))
    return path


def test_one_at_a_time_is_the_baseline_plus_every_other_setting(tmp_path):
    grid = load_grid(
        _grid(
            tmp_path,
            {
                "base": {"epochs": 2},
                "axes": {
                    "act": {"id": "network_def#act", "values": ["relu", "gelu", "mish"], "default": "relu"},
                    "loss": {"settings": {"a": {}, "b": {"loss#loss#gamma": 2.0}}, "default": "a"},
                },
            },
        )
    )
    runs = expand_grid(grid)
    assert [r.name for r in runs] == ["baseline", "act=gelu", "act=mish", "loss=b"]
    assert runs[0].overlay == {"epochs": 2}
    assert runs[2].overlay == {"epochs": 2, "network_def#act": "mish"}
    assert runs[3].settings == {"loss": "b"}
    assert [r.name for r in expand_grid(grid, axes=["loss"])] == ["baseline", "loss=b"]
    with pytest.raises(ValueError, match="unknown axes"):
        expand_grid(grid, axes=["depth"])


def test_full_mode_is_the_cartesian_product(tmp_path):
    grid = load_grid(
        _grid(
            tmp_path,
            {
                "mode": "full",
                "axes": {"a": {"id": "x", "values": [1, 2]}, "b": {"id": "y", "values": [True, False, None]}},
            },
        )
    )
    runs = expand_grid(grid)
    assert len(runs) == 6
    assert runs[0].name == "a=1,b=true" and runs[0].overlay == {"x": 1, "y": True}
    assert runs[-1].name == "a=2,b=null" and runs[-1].overlay == {"x": 2, "y": None}


@pytest.mark.parametrize(
    "grid, message",
    [
        ({}, "non-empty 'axes'"),
        ({"axes": {"a": {"id": "x", "values": [1]}}, "mode": "random"}, "'mode' must be one of"),
        ({"axes": {"a": {"id": "x", "values": [1, 2]}}}, "needs a 'default'"),
        ({"axes": {"a": {"id": "x", "values": [1, 2], "default": 3}}}, "default '3' is not one of"),
        ({"axes": {"a": {"settings": {"s": 1}, "default": "s"}}}, "map setting names to config overlay objects"),
        ({"axes": {"a": {"values": [1]}}}, "expected 'settings' or 'id'"),
    ],
)
def test_malformed_grids_name_the_file_and_the_problem(tmp_path, grid, message):
    path = _grid(tmp_path, grid)
    with pytest.raises(ValueError, match=message) as error:
        load_grid(path)
    assert str(path) in str(error.value)


def test_the_bundle_grid_covers_every_studied_axis():
    grid = load_grid(COHRA / "configs" / "ablation.json")
    assert set(grid["axes"]) >= {
        "activation",
        "normalization",
        "upsampling",
        "block",
        "channel_attention",
        "spatial_attention",
        "hybridization",
        "loss",
        "deep_supervision",
        "network",
    }
    assert set(grid["axes"]["activation"]["settings"]) == {"relu", "leakyrelu", "prelu", "gelu", "mish", "silu"}


def test_results_table_prints_n_a_for_a_metric_without_any_finite_case():
    results = [
        {
            "run": "baseline",
            "settings": {},
            "parameters": 10,
            "status": "ok",
            "metrics": {"val_dice_et": None, "val_dice_wt": 0.8},
            "metric_counts": {"val_dice_et": 0, "val_dice_wt": 3},
            "cases": 3,
        },
        {"run": "act=tanhh", "settings": {"act": "tanhh"}, "status": "failed"},
    ]
    header, rows = results_table(results, ["act"])
    assert header[-2:] == ["val_dice_et", "val_dice_wt"]
    assert rows[0][-2:] == ["n/a (0 of 3 cases)", "0.8000"]
    assert rows[1][-2:] == ["n/a", "n/a"], "a failed run has no metrics, and no 0 either"


def test_segresnet_baseline_is_the_model_zoo_network():
    """One stacked file swaps in MONAI's SegResNet with the brats_mri_segmentation widths (4,702,227 parameters)."""
    configs = COHRA / "configs"
    cohra = count_parameters([configs / "train.json"], cwd=COHRA)
    segresnet = count_parameters([configs / "train.json", configs / "segresnet.json"], cwd=COHRA)
    assert cohra == 13_806_214
    assert segresnet == 4_702_227


def test_tiny_study_end_to_end(tmp_path):
    """COHRA-UNet and the SegResNet baseline through the command, a table, and a second call that reuses the runs."""
    data = tmp_path / "brats"
    generate_brats(data, cases=4, size=(48, 48, 32), seed=2, workers=1, verbose=False)
    write_split_file(data, tmp_path / "split.json", folds=2, seed=0)
    base = {
        "dataset_dir": str(data),
        "split_file": str(tmp_path / "split.json"),
        "roi_size": [32, 32, 32],
        "network_def#channels": [8, 16, 32, 64],
        "network_def#transformer_heads": 4,
        "epochs": 1,
        "val_interval": 1,
        "num_workers": 0,
    }
    (tmp_path / "base.json").write_text(json.dumps(base))
    out = tmp_path / "study"
    cmd = [
        sys.executable,
        "-m",
        "common.ablation",
        "--bundle-root",
        str(COHRA),
        "--grid",
        str(COHRA / "configs" / "ablation.json"),
        "--axes",
        "network",
        "--base",
        str(tmp_path / "base.json"),
        "--out",
        str(out),
    ]
    first = subprocess.run(cmd, cwd=tmp_path, env=zoo.bundle_env(), capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    with open(out / "results.csv") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"baseline", "network=segresnet"}
    assert rows["network=segresnet"]["network"] == "segresnet"
    assert int(rows["network=segresnet"]["parameters"]) == 4_702_227
    for row in rows.values():
        assert row["status"] == "ok"
        assert 0.0 <= float(row["val_dice_wt"]) <= 1.0
    assert (out / "network=segresnet" / "models" / "model.pt").is_file()
    assert "| network=segresnet | segresnet |" in (out / "results.md").read_text()

    again = subprocess.run(cmd, cwd=tmp_path, env=zoo.bundle_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("done before, reusing") == 2

    # A configuration that cannot run is recorded as failed, the others stand, and the command exits non-zero.
    bad = _grid(
        tmp_path, {"axes": {"act": {"id": "network_def#act", "values": ["leakyrelu", "tanhh"], "default": "leakyrelu"}}}
    )
    cmd[cmd.index("--grid") + 1] = str(bad)
    cmd.remove("--axes")
    cmd.remove("network")
    failed = subprocess.run(cmd, cwd=tmp_path, env=zoo.bundle_env(), capture_output=True, text=True)
    assert failed.returncode == 1
    assert "failed runs: ['act=tanhh']" in failed.stderr
    assert "baseline: done before, reusing" in failed.stdout
    record = json.loads((out / "act=tanhh" / "result.json").read_text())
    assert record["status"] == "failed" and record["error"]


def _write(path: Path, content: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


def test_settings_may_name_overlay_files_merged_in_order(tmp_path):
    """A setting is an object, a file relative to the bundle root, or a list of both: top-level keys, a later one
    winning and moving last, so that MONAI applies it after the earlier ones (``y`` then ``y#z``)."""
    bundle = tmp_path / "bundle"
    _write(bundle / "configs" / "a.json", {"x": 1, "y#z": 1, "kept": "a"})
    _write(bundle / "configs" / "b.json", {"x": 3, "y#z": 5})
    parts = ["configs/a.json", {"x": 2, "y": {}}, "configs/b.json"]
    spec = {"settings": {"own": {}, "one": "configs/b.json", "many": parts}}
    grid_file = _write(tmp_path / "grid.json", {"base": {"x": 0, "b": 1}, "axes": {"p": {**spec, "default": "own"}}})
    grid = load_grid(grid_file, bundle)
    runs = {r.name: r for r in expand_grid(grid)}
    assert runs["p=one"].overlay == {"x": 3, "b": 1, "y#z": 5}
    many = runs["p=many"].overlay
    assert many == {"x": 3, "b": 1, "y#z": 5, "kept": "a", "y": {}}
    assert list(many) == ["b", "kept", "y", "x", "y#z"]

    # a grid in the bundle's configs/ finds its files without being told the bundle root; elsewhere it must be told
    in_bundle = _write(bundle / "configs" / "ablation.json", json.loads(grid_file.read_text()))
    assert load_grid(in_bundle)["axes"]["p"]["settings"]["many"] == {"kept": "a", "y": {}, "x": 3, "y#z": 5}
    with pytest.raises(ValueError, match="name overlay files, read relative to the bundle root"):
        load_grid(grid_file)
    spec = {"settings": {"s": ["configs/nope.json"]}, "default": "s"}
    missing = _write(tmp_path / "missing.json", {"axes": {"p": spec}})
    with pytest.raises(ValueError, match="overlay file 'configs/nope.json' not found"):
        load_grid(missing, bundle)


def test_seed_table_is_mean_and_sample_sd_over_seeds_as_crossval_prints_it():
    def record(run, seed, status="ok", **metrics):
        return {"run": run, "settings": {"a": run}, "seed": seed, "status": status, "metrics": metrics,
                "parameters": 7, "train_seconds": 10.0 + seed, "eval_seconds": 1.0}  # fmt: skip

    results = [
        record("x", 0, dice=0.5, hd=None),
        record("y", 0, dice=0.9, hd=3.0),
        record("x", 1, dice=0.7, hd=None),
        record("y", 1, dice=0.8, hd=None),
        record("y", 2, "failed"),  # a failed seed counts for nothing
    ]
    rows = {row["run"]: row for row in summarise_seeds(results)}
    mean, sd, n = rows["x"]["metrics"]["dice"]
    assert mean == pytest.approx(0.6) and sd == pytest.approx(statistics.stdev([0.5, 0.7])) and n == 2
    assert rows["x"]["metrics"]["hd"] == (None, None, 0)
    assert rows["y"]["metrics"]["hd"] == (3.0, None, 1)
    assert (rows["y"]["ok"], rows["y"]["status"], rows["x"]["train_seconds"]) == (2, "2 of 3 ok", 10.5)
    header, table = seed_results_table(results, ["a"])
    assert header[-3:] == ["n", "dice", "hd"]
    assert table[0][-3:] == ["2", "0.6000 ± 0.1414", "n/a (0 of 2 seeds)"]  # never 0.000
    assert table[1][-3:] == ["2", "0.8500 ± 0.0707", "3.0000 (1 of 2 seeds)"]
    assert common.crossval.format_mean_sd is format_mean_sd  # one way of printing mean ± SD in every study table


def test_seeds_refuse_a_bundle_without_a_seed_id_before_any_run(tmp_path):
    """The fixture's train.json calls set_determinism(seed=123): nothing a seed overlay could change."""
    grid = _grid(tmp_path, {"axes": {"lr": {"id": "learning_rate", "values": [0.001, 0.01], "default": 0.001}}})
    cmd = [sys.executable, "-m", "common.ablation", "--bundle-root", str(FIXTURE_BUNDLE), "--grid", str(grid)]
    result = subprocess.run(
        [*cmd, "--out", str(tmp_path / "study"), "--seeds", "2"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2
    train = FIXTURE_BUNDLE / "configs" / "train.json"
    assert result.stderr.strip().splitlines() == [f"error: {train}: defines no 'seed'; --seeds sets it per run"]
    assert not (tmp_path / "study").exists()


def _seeded_fixture(tmp_path: Path) -> Path:
    """The tiny fixture bundle with a ``seed`` id and an evaluation that writes ``metrics_summary.json``."""
    bundle = tmp_path / "bundle"
    shutil.copytree(FIXTURE_BUNDLE, bundle)
    train = json.loads((bundle / "configs" / "train.json").read_text())
    train["seed"] = 123
    train["initialize"] = ["$monai.utils.set_determinism(seed=@seed)"]
    _write(bundle / "configs" / "train.json", train)
    evaluate = json.loads((bundle / "configs" / "evaluate.json").read_text())
    evaluate["+imports"] = ["$import common", "$import common.metrics"]
    evaluate["finalize"] = ["$common.metrics.write_metrics_summary(@output_dir, 'all phantoms')"]
    _write(bundle / "configs" / "evaluate.json", evaluate)
    _write(bundle / "configs" / "lr_high.json", {"learning_rate": 0.01, "epochs": 3})
    _write(bundle / "configs" / "lr_mid.json", {"learning_rate": 0.005})
    return bundle


def _tensorboard_scalars(log_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for events in sorted(log_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            values.update((e.step, e.value) for e in accumulator.Scalars(tag))
    return values


def test_seeded_study_with_file_settings_and_training_curves(tmp_path):
    """Two arms x two seeds of the tiny bundle: per-seed folders, mean ± SD from the seeds' own summaries, the
    arm's overlay files merged in order, curves whose CSV holds the runs' TensorBoard scalars, and a second call
    that trains nothing."""
    bundle = _seeded_fixture(tmp_path)
    generate_brats(tmp_path / "data", cases=4, size=(48, 48, 32), seed=2, workers=1, verbose=False)
    base = _write(tmp_path / "base.json", {"dataset_dir": str(tmp_path / "data"), "learning_rate": 0.002,
                                           "train#dataloader#batch_size": 1})  # fmt: skip
    files = ["configs/lr_high.json", {"epochs": 2}, "configs/lr_mid.json"]
    grid = _grid(tmp_path, {"axes": {"lr": {"default": "own", "settings": {"own": {}, "files": files}}}})
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "common.ablation", "--bundle-root", str(bundle), "--grid", str(grid)]
    cmd += ["--base", str(base), "--out", str(out), "--seeds", "2"]
    curves = ["--curves", "train_loss", "val_mean_dice", "no_such_tag", "--figure-note", "FLAIR; whole-tumour Dice"]
    env = zoo.bundle_env()

    dry = subprocess.run([*cmd, "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    labels = [line.split(" {")[0] for line in dry.stdout.splitlines()]
    assert labels == ["baseline seed 0", "lr=files seed 0", "baseline seed 1", "lr=files seed 1"]

    first = subprocess.run([*cmd, *curves], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    arms = {"baseline": out / "baseline", "lr=files": out / "lr=files"}
    for folder in arms.values():
        assert sorted(p.name for p in folder.iterdir()) == ["seed0", "seed1"]
        for seed in (0, 1):
            overlay = json.loads((folder / f"seed{seed}" / "overlay.json").read_text())
            assert overlay["seed"] == seed
            assert list(overlay)[-4:] == ["seed", "bundle_root", "ckpt_dir", "output_dir"]
            assert overlay["output_dir"] == str(folder / f"seed{seed}" / "eval")
    # grid base < --base < the setting's parts in order < the run's own ids
    overlay = json.loads((arms["lr=files"] / "seed1" / "overlay.json").read_text())
    assert (overlay["learning_rate"], overlay["epochs"], overlay["train#dataloader#batch_size"]) == (0.005, 2, 1)
    assert json.loads((arms["baseline"] / "seed0" / "overlay.json").read_text())["learning_rate"] == 0.002

    with open(out / "results.csv") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    table = (out / "results.md").read_text()
    for arm, folder in arms.items():
        summaries = [json.loads((folder / f"seed{s}" / "eval" / "metrics_summary.json").read_text()) for s in (0, 1)]
        dice = [summary["metrics"]["val_mean_dice"] for summary in summaries]
        mean, sd = statistics.fmean(dice), statistics.stdev(dice)
        row = rows[arm]
        assert (row["status"], row["n"], row["val_mean_dice_n"]) == ("ok", "2", "2")
        assert float(row["val_mean_dice_mean"]) == pytest.approx(mean, rel=1e-12)
        assert float(row["val_mean_dice_sd"]) == pytest.approx(sd, rel=1e-12)
        line = next(line for line in table.splitlines() if line.startswith(f"| {arm} |"))
        assert line.endswith(f"| ok | 2 | {mean:.4f} ± {sd:.4f} |")
    assert "mean ± sample SD (n - 1) over the seeds" in table
    with open(out / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert [(r["run"], r["seed"]) for r in runs] == [(arm, seed) for seed in "01" for arm in arms]

    assert "tags not logged, skipped there: no_such_tag in every run" in first.stdout
    assert not (out / "curves_no_such_tag.png").exists()
    for tag, x_kind in (("train_loss", "iteration"), ("val_mean_dice", "epoch")):  # batch 1: 2 iterations an epoch
        assert (out / f"curves_{tag}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with open(out / f"curves_{tag}.csv") as f:
            reader = csv.DictReader(f)
            assert reader.fieldnames == ["arm", x_kind, "mean", "sd", "n", "seed0", "seed1"]
            points = list(reader)
        for arm, folder in arms.items():
            logged = [_tensorboard_scalars(folder / f"seed{s}" / "eval", tag) for s in (0, 1)]
            assert logged[0] and logged[0].keys() == logged[1].keys()
            mine = [p for p in points if p["arm"] == arm]
            assert [int(p[x_kind]) for p in mine] == sorted(logged[0])
            for p in mine:
                step = int(p[x_kind])
                assert [float(p["seed0"]), float(p["seed1"])] == [logged[0][step], logged[1][step]]
                assert float(p["mean"]) == pytest.approx(statistics.fmean([logged[0][step], logged[1][step]]))
                assert p["n"] == "2"
    assert len([p for p in points if p["arm"] == "baseline"]) == 2  # val_mean_dice: one value per epoch

    models = sorted(out.glob("*/seed*/models/model.pt"))
    assert len(models) == 4
    mtimes = [m.stat().st_mtime_ns for m in models]
    again = subprocess.run([*cmd, *curves], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "training ..." not in again.stdout and again.stdout.count("done before, reusing") == 4
    assert [m.stat().st_mtime_ns for m in models] == mtimes
    assert (out / "results.md").read_text() == table


def test_a_setting_names_the_folder_of_an_earlier_run_at_the_same_seed(tmp_path):
    from common.ablation import _with_run_dirs

    overlay = {"teachers_from": "{run_dir:baseline}/models/teachers.pt", "epochs": 2, "note": "{other}"}
    assert _with_run_dirs(overlay, tmp_path, 1) == {
        "teachers_from": f"{tmp_path}/baseline/seed1/models/teachers.pt",
        "epochs": 2,
        "note": "{other}",
    }
    assert _with_run_dirs(overlay, tmp_path, None)["teachers_from"] == f"{tmp_path}/baseline/models/teachers.pt"


def test_an_interrupted_retrain_leaves_no_result_to_reuse(tmp_path, monkeypatch):
    """A run retrained with a new overlay loses its curves at once; its old result must go with them, or a rerun
    with the old overlay would reuse a result whose curves are gone."""
    import common.ablation

    run = Run(name="baseline", settings={}, overlay={"epochs": 2})
    run_dir = tmp_path / "baseline"
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "eval" / "events.out.tfevents.1.host").write_bytes(b"curves of the first training")
    old_overlay = {"epochs": 1, "bundle_root": str(tmp_path), "ckpt_dir": str(run_dir / "models"),
                   "output_dir": str(run_dir / "eval")}  # fmt: skip
    (run_dir / "result.json").write_text(json.dumps({"status": "ok", "overlay": old_overlay}))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(common.ablation, "count_parameters", lambda *a, **k: 0)
    monkeypatch.setattr(common.ablation, "monai_bundle_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study(tmp_path, [run], tmp_path, log=lambda _: None)
    assert not (run_dir / "result.json").exists()
    assert not list((run_dir / "eval").glob("events.out.tfevents.*"))


def test_a_killed_study_resumes_its_interrupted_run_from_the_last_checkpoint(tmp_path):
    """A study killed mid-run (machine stopped, session over) continues that run from its newest checkpoint: the
    training log keeps both attempts, the curves cover every epoch once, and the training time counts only the
    kept work."""
    import os
    import signal
    import time

    from common.curves import read_scalars
    from common.engines import latest_checkpoint

    data = tmp_path / "brats"
    generate_brats(data, cases=4, size=(48, 48, 32), seed=2, workers=1, verbose=False)
    write_split_file(data, tmp_path / "split.json", folds=2, seed=0)
    base = {"dataset_dir": str(data), "split_file": str(tmp_path / "split.json"), "roi_size": [32, 32, 32],
            "network_def#channels": [8, 16, 32, 64], "network_def#transformer_heads": 4, "epochs": 8,
            "val_interval": 1, "num_workers": 0}  # fmt: skip
    (tmp_path / "base.json").write_text(json.dumps(base))
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "common.ablation", "--bundle-root", str(COHRA), "--grid",
           str(COHRA / "configs" / "ablation.json"), "--axes", "network", "--base", str(tmp_path / "base.json"),
           "--out", str(out)]  # fmt: skip
    run_dir = out / "baseline"

    first = subprocess.Popen(cmd, cwd=tmp_path, env=zoo.bundle_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 600
    while not list((run_dir / "models").glob("checkpoint_epoch=2.pt")):
        assert first.poll() is None and time.monotonic() < deadline, "the first attempt ended before epoch 2"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed_at = int(Path(latest_checkpoint(run_dir / "models")).stem.rsplit("=", 1)[-1])
    assert 2 <= killed_at < 8 and not (run_dir / "result.json").exists()

    again = subprocess.run(cmd, cwd=tmp_path, env=zoo.bundle_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"baseline: interrupted before, resuming from checkpoint_epoch={killed_at}.pt" in again.stdout
    assert "network=segresnet: training ..." in again.stdout, "a run never started starts from scratch"
    record = json.loads((run_dir / "result.json").read_text())
    assert record["status"] == "ok" and record["resumed_from_epochs"] == [killed_at]
    assert 0 < record["train_seconds"]
    assert (run_dir / "train.log").read_text().count("$ ") == 2, "both attempts' logs"
    assert sorted(read_scalars(run_dir / "eval")["val_mean_dice"]) == list(range(1, 9))
    segresnet = json.loads((out / "network=segresnet" / "result.json").read_text())
    assert segresnet["resumed_from_epochs"] == []


def test_a_record_carries_finished_runs_to_a_fresh_checkout(tmp_path, monkeypatch):
    """What a finished run leaves in ``--record`` (results, metrics, curves; no weights) restores it in another
    checkout of the same layout, which then trains only what the record lacks; another overlay is trained again."""
    import common.ablation

    trained = []

    def fake_bundle_run(stack, cwd, log_file, append=False):
        overlay = json.loads(Path(stack[-1]).read_text())
        output_dir = Path(overlay["output_dir"])
        output_dir.mkdir(parents=True, exist_ok=True)
        if "evaluate.json" in str(stack[-2]):
            summary = {"metrics": {"val_mean_dice": 0.5 + overlay["epochs"] / 100}, "split": "test", "cases": 2}
            (output_dir / "metrics_summary.json").write_text(json.dumps(summary))
            (output_dir / "metrics.csv").write_text(f"filename,dice\n{Path.cwd() / 'data' / 'a.nii.gz'},0.5\n")
        else:
            trained.append(Path(log_file).parent.name)
            (output_dir / "events.out.tfevents.1.host").write_bytes(b"curves")
            (Path(overlay["ckpt_dir"])).mkdir(parents=True, exist_ok=True)
            (Path(overlay["ckpt_dir"]) / "model.pt").write_bytes(b"weights")
        return 1.0

    monkeypatch.setattr(common.ablation, "count_parameters", lambda *a, **k: 7)
    monkeypatch.setattr(common.ablation, "monai_bundle_run", fake_bundle_run)
    runs = with_seeds([Run("a", {}, {"epochs": 1, "data": "{data}"}), Run("b", {}, {"epochs": 2})], [0, 1])

    def checkout(name: str) -> tuple[Path, list[Run]]:
        root = tmp_path / name
        (root / "bundle").mkdir(parents=True)
        own = [Run(r.name, r.settings, {k: str(root / "data") if v == "{data}" else v for k, v in r.overlay.items()},
                   r.seed) for r in runs]  # fmt: skip
        return root, own

    first, first_runs = checkout("first")
    monkeypatch.chdir(first)
    run_study(first / "bundle", first_runs[:3], first / "out", log=lambda _: None, record=first / "record")
    assert trained == ["seed0", "seed0", "seed1"]
    recorded = first / "record" / "a" / "seed0"
    assert sorted(p.relative_to(recorded).as_posix() for p in recorded.rglob("*") if p.is_file()) == [
        "eval/events.out.tfevents.1.host", "eval/metrics.csv", "eval/metrics_summary.json", "overlay.json",
        "result.json"]  # fmt: skip
    assert str(first) not in (recorded / "result.json").read_text()
    assert json.loads((recorded / "result.json").read_text())["overlay"]["data"] == "{study_root}/data"
    assert (recorded / "eval" / "metrics.csv").read_text() == "filename,dice\n{study_root}/data/a.nii.gz,0.5\n"

    second, second_runs = checkout("second")
    shutil.copytree(first / "record", second / "record")
    second_runs[3].overlay["epochs"] = 3  # b seed 1: another recipe than the record's (which has no b seed 1 anyway)
    second_runs[2].overlay["epochs"] = 5  # a seed 1: another recipe than the one recorded
    monkeypatch.chdir(second)
    trained.clear()
    log = []
    results = run_study(second / "bundle", second_runs, second / "out", log=log.append, record=second / "record")
    assert trained == ["seed1", "seed1"], "only what the record lacks or ran otherwise is trained"
    assert sum("restored from the record" in line for line in log) == 2
    restored = json.loads((second / "out" / "b" / "seed0" / "result.json").read_text())
    assert restored["run_dir"] == str(second / "out" / "b" / "seed0")
    assert restored["overlay"]["output_dir"] == str(second / "out" / "b" / "seed0" / "eval")
    assert (second / "out" / "b" / "seed0" / "eval" / "events.out.tfevents.1.host").read_bytes() == b"curves"
    assert not (second / "out" / "b" / "seed0" / "models").exists()
    assert str(second / "data" / "a.nii.gz") in (second / "out" / "b" / "seed0" / "eval" / "metrics.csv").read_text()
    assert [r["metrics"]["val_mean_dice"] for r in results] == [0.51, 0.52, 0.55, 0.53]
    assert json.loads((second / "record" / "a" / "seed1" / "result.json").read_text())["overlay"]["epochs"] == 5
