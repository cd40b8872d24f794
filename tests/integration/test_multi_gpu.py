"""Every bundle's ``multi_gpu_train.json`` trains under ``torchrun`` with two CPU processes (gloo), as users scale out.

The command is the README's, run from the repository root::

    torchrun --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run \\
        --config_file "['bundles/<name>/configs/train.json','bundles/<name>/configs/multi_gpu_train.json']" ...

with the demo's training overlay (tiny sizes) cut to one epoch with validation. A last overlay gives each rank its
own checkpoint folder and appends ``ci.distributed_probe`` to ``finalize``, which records what each rank saw.
The test then asserts, for every bundle: training and validation loaders use a ``DistributedSampler`` whose
ranks share out the dataset (each rank fewer samples, all ranks together every sample); the validation metrics
are the same on both ranks and were computed from every validation case exactly once (reduced across ranks);
only rank 0 wrote checkpoints. The multi-node form (``--nnodes 2`` with a c10d rendezvous) runs once, on the
tooling fixture, as two "nodes" on this machine.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ci import zoo
from tests.helpers import BUNDLES_UNDER_TEST, FIXTURE_BUNDLE, REPO_ROOT, prepare_demo_data

pytestmark = pytest.mark.integration

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
QUICK = {"epochs": 1, "val_interval": 1}
TIMEOUT_S = 600


def _env() -> dict:
    env = zoo.bundle_env(extra_pythonpath=(REPO_ROOT,))
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # both ranks live on this machine; keep gloo off other interfaces
    return env


def _overlay(bundle: Path, tmp_path: Path, phantom_root: Path) -> Path:
    """Demo training settings, one epoch, per-rank checkpoint folders and the rank report in ``finalize``."""
    work_dir = tmp_path / "work"
    spec, dataset_dir = prepare_demo_data(bundle, phantom_root, work_dir)
    overlay = {
        "bundle_root": str(bundle),
        "dataset_dir": str(dataset_dir),
        "demo_work_dir": str(work_dir.resolve()),
        "output_dir": str(tmp_path / "out"),
        **spec.get("train", {}),
        **QUICK,
        "probe_import": "$import ci.distributed_probe as distributed_probe",
        # Where each rank would write checkpoints: folders apart, so that the writer shows.
        "ckpt_dir": f"$distributed_probe.rank_folder('{tmp_path / 'models'}')",
        "+finalize": [f"$distributed_probe.write_rank_report(@train#trainer, @validate#evaluator, '{tmp_path}')"],
    }
    path = tmp_path / "overlay.json"
    path.write_text(json.dumps(overlay))
    return path


def _configs(bundle: Path, overlay: Path) -> str:
    files = [bundle / "configs" / "train.json", bundle / "configs" / "multi_gpu_train.json", overlay]
    return "[" + ",".join(repr(str(f)) for f in files) + "]"


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, cwd=REPO_ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT)


def _wait(procs: list[subprocess.Popen], logs: list[Path], what: str) -> None:
    try:
        codes = [p.wait(timeout=TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for code, log in zip(codes, logs, strict=True):
        assert code == 0, f"{what} exited with {code} (log: {log})\n" + "\n".join(log.read_text().splitlines()[-40:])


def _reports(tmp_path: Path, bundle: Path) -> list[dict]:
    reports = []
    for rank in (0, 1):
        path = tmp_path / f"rank{rank}.json"
        assert path.is_file(), f"{bundle.name}: rank {rank} wrote no report; did multi_gpu_train.json keep `finalize`?"
        reports.append(json.loads(path.read_text()))
    return reports


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("bundle", BUNDLES_UNDER_TEST, ids=[b.name for b in BUNDLES_UNDER_TEST])
def test_multi_gpu_train_shards_reduces_and_writes_once(bundle: Path, tmp_path: Path, phantom_root: Path):
    configs = _configs(bundle, _overlay(bundle, tmp_path, phantom_root))
    cmd = [TORCHRUN, "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m", "monai.bundle", "run"]
    log = tmp_path / "torchrun.log"
    _wait([_start([*cmd, "--config_file", configs], log)], [log], f"{bundle.name}: torchrun --nproc_per_node=2")
    reports = _reports(tmp_path, bundle)
    assert [r["world_size"] for r in reports] == [2, 2]

    for stage in ("train", "validate"):
        seen = [r[stage] for r in reports]
        for rank, report in enumerate(seen):
            assert report["distributed_sampler"], (
                f"{bundle.name}: the {stage} loader of rank {rank} uses a {report['sampler']}, not a DistributedSampler"
            )
        size = seen[0]["dataset_size"]
        shares = [set(report["indices"]) for report in seen]
        assert all(len(share) < size for share in shares), f"{bundle.name}: {stage} data not shared out: {shares}"
        assert set().union(*shares) == set(range(size)), f"{bundle.name}: {stage} samples left out: {shares}"
        assert all(report["epochs"] == 1 for report in seen)

    validation = [r["validate"] for r in reports]
    metrics = validation[0]["metrics"]
    assert metrics, f"{bundle.name}: the evaluator ended without metrics"
    assert validation[1]["metrics"] == pytest.approx(metrics, abs=1e-6), (
        f"{bundle.name}: ranks disagree on validation metrics, so they were not reduced: "
        f"{validation[0]['metrics']} vs {validation[1]['metrics']}"
    )
    rows = validation[0]["metric_rows"]
    assert rows, f"{bundle.name}: no per-case metric details to show that every validation case counted"
    size = validation[0]["dataset_size"]
    assert all(n == size for n in rows.values()), (
        f"{bundle.name}: metrics computed from {rows} cases, the validation set has {size}: "
        "each rank must see only its share and the metric all of them, once"
    )

    written = [sorted(p.name for p in (tmp_path / f"models_rank{r}").rglob("*") if p.is_file()) for r in (0, 1)]
    assert any(name.endswith(".pt") for name in written[0]), f"{bundle.name}: rank 0 wrote no checkpoint"
    assert written[1] == [], f"{bundle.name}: rank 1 wrote {written[1]}; only rank 0 may write checkpoints"


def test_multi_node_rendezvous_runs(tmp_path: Path, phantom_root: Path):
    """The README's multi-node command, two nodes of one process each, both on this machine."""
    configs = _configs(FIXTURE_BUNDLE, _overlay(FIXTURE_BUNDLE, tmp_path, phantom_root))
    endpoint = f"127.0.0.1:{_free_port()}"
    cmd = [TORCHRUN, "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}"]
    cmd += ["--rdzv_id=zoo_test", "-m", "monai.bundle", "run", "--config_file", configs]
    logs = [tmp_path / f"node{n}.log" for n in (0, 1)]
    _wait([_start(cmd, log) for log in logs], logs, "torchrun --nnodes=2")
    reports = _reports(tmp_path, FIXTURE_BUNDLE)
    assert sorted(r["rank"] for r in reports) == [0, 1] and all(r["world_size"] == 2 for r in reports)
    assert all(r["local_rank"] == 0 for r in reports), "one process per node"
    assert reports[0]["validate"]["metrics"] == pytest.approx(reports[1]["validate"]["metrics"], abs=1e-6)
    assert not any((tmp_path / "models_rank1").rglob("*.pt"))
    assert any((tmp_path / "models_rank0").rglob("*.pt"))


def test_rank_report_names_a_missing_distributed_sampler(tmp_path: Path, monkeypatch):
    """The probe itself: a plain loader is reported as such, so the sharding assertion above can fail."""
    import torch
    from ignite.engine import Engine

    from ci import distributed_probe

    loader = torch.utils.data.DataLoader(list(range(4)), batch_size=2)
    engine = Engine(lambda e, b: None)
    engine.data_loader = loader
    engine.run(loader, max_epochs=1)
    report = distributed_probe.engine_report(engine)
    assert report["distributed_sampler"] is False and report["sampler"] == "SequentialSampler"
    assert report["indices"] == [0, 1, 2, 3] and report["dataset_size"] == 4 and report["iterations"] == 2
    monkeypatch.setenv("RANK", "1")
    assert distributed_probe.rank_folder("/x/models") == "/x/models_rank1"
    path = distributed_probe.write_rank_report(engine, engine, str(tmp_path))
    assert path == str(tmp_path / "rank1.json")
    assert json.loads(Path(path).read_text())["train"]["sampler"] == "SequentialSampler"
