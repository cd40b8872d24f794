"""``--tracking mlflow`` records a training run offline, into a local SQLite store under the run's output folder.

This is MONAI's own switch (``python -m monai.bundle run ... --tracking mlflow``): it adds an ``MLFlowHandler`` to
the trainer and the validator, with the tracking URI ``sqlite:///<output_dir>/mlruns.db`` and artifacts in
``<output_dir>/mlruns``. The client is ``mlflow-skinny`` (no server, no UI) with sqlalchemy and alembic for the
SQLite store; MLflow >= 3.13 refuses the file store. Telemetry is switched off so that nothing leaves the machine.

``output_dir`` is given as an expression: MONAI derives the path of the executed config it logs as an artifact
by appending to ``output_dir``'s text, which only works when that text is an expression.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ci import zoo
from tests.helpers import BUNDLES_UNDER_TEST, REPO_ROOT, prepare_demo_data

pytestmark = pytest.mark.integration

QUICK = {"epochs": 1, "val_interval": 1}


def _key_metric(bundle: Path) -> str:
    train = zoo.load_json(bundle / "configs" / "train.json")
    key_metric = train["validate"]["key_metric"]
    if isinstance(key_metric, str):  # a reference to a top-level id that an overlay can replace, "@val_key_metric"
        key_metric = train[key_metric.removeprefix("@")]
    return next(iter(key_metric))


@pytest.mark.parametrize("bundle", BUNDLES_UNDER_TEST, ids=[b.name for b in BUNDLES_UNDER_TEST])
def test_tracking_mlflow_records_a_run_offline(bundle: Path, tmp_path: Path, phantom_root: Path):
    import mlflow
    from monai.utils import path_to_sqlite_uri

    assert (bundle / "configs" / "train.json").is_file(), f"{bundle}: no bundle to track (configs/train.json missing)"
    work_dir = tmp_path / "work"
    spec, dataset_dir = prepare_demo_data(bundle, phantom_root, work_dir)
    out = tmp_path / "out"
    overlay = {
        "bundle_root": str(bundle),
        "dataset_dir": str(dataset_dir),
        "demo_work_dir": str(work_dir.resolve()),
        "ckpt_dir": str(tmp_path / "models"),
        **spec.get("train", {}),
        **QUICK,
        "output_dir": f"$'{out}'",
    }
    (tmp_path / "overlay.json").write_text(json.dumps(overlay))
    configs = f"['{bundle / 'configs' / 'train.json'}','{tmp_path / 'overlay.json'}']"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs, "--tracking", "mlflow"]
    cmd += ["--experiment_name", f"{bundle.name}_test", "--run_name", "one_epoch"]
    env = zoo.bundle_env(extra_pythonpath=(REPO_ROOT,))
    env.pop("MLFLOW_TRACKING_URI", None)
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    # From a folder of its own: MLflow resolves relative defaults against the working directory.
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    log = result.stdout[-3000:] + result.stderr[-3000:]
    if result.returncode != 0 and "not 'tuple'" in log:
        pytest.fail(
            f"{bundle.name}: MONAI's tracking handler reads the loss with from_engine(['loss'], first=True), which "
            "gives a 1-tuple when the trainer output is not decollated (train#trainer#decollate false); "
            f"decollate it, or log the loss another way\n{log}"
        )
    assert result.returncode == 0, log

    store = out / "mlruns.db"
    assert store.is_file(), f"no SQLite tracking store at {store}"
    client = mlflow.MlflowClient(tracking_uri=path_to_sqlite_uri(store))
    experiment = client.get_experiment_by_name(f"{bundle.name}_test")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in runs] == ["one_epoch"]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert {"train_loss", _key_metric(bundle)} <= set(run.data.metrics), sorted(run.data.metrics)
    assert run.data.params.get("max_epochs") == "1"
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert len(losses) == int(run.data.params["epoch_length"]), "one train_loss point per iteration"
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert any(a.startswith("config_") and a.endswith(".json") for a in artifacts), artifacts
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(out)
