"""One RefNet inference request through the zoo's MONAI Label app on a normal-size CT, and ``/info/`` meanwhile.

Part of ``make bench-full`` only: the request alone kept the server busy for about 23 CPU minutes (32 minutes of
wall clock on 2 cores shared with other work), more than ``make bench``'s 20 minutes. What a user does, as
``tests/integration/test_monailabel.py`` does it but at full size:

* ``refnet_synapse``'s release zip (``python -m ci.package_bundle``) unpacked into a folder of bundles, at its
  default size (the Swin UNETR base model and RefNet of ``configs/inference.json``, no demo overlay), with random
  weights written into the unpacked copy only (``models/model.pt`` and the base model file of ``base_ckpt``);
* one BTCV phantom CT at the generator's default grid, 512 x 512 x 100 at 0.7-0.9 mm in-plane and 2.5-3.0 mm
  slices (:mod:`common.synthetic.btcv`), alone in the studies folder;
* the README's command, ``monailabel start_server --app integrations/monailabel --studies <folder> --conf bundles
  <folder>``, with the ``monailabel`` script of ``.venv-monailabel`` (``make setup-monailabel``) first on PATH;
* one ``POST /infer/refnet_synapse?image=<id>&output=image`` timed (wall clock, one repeat: the first request
  after start-up, so it includes loading the weights), while the main thread asks ``/info/`` every 0.5 s and
  records how long each answer took; the server process's CPU seconds during the request (``/proc/<pid>/stat``,
  less inflated than the wall clock when others share the machine) and its peak RSS (``VmHWM`` of
  ``/proc/<pid>/status``).

``--quick`` runs the same steps with the bundle's ``configs/demo.json`` networks on a 48 x 48 x 24 CT.

    python -m bench.run --out bench/results --only bench.monailabel
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from bench.harness import REPO_ROOT, Context, figure

__all__ = ["run"]

BUNDLE = "refnet_synapse"
MONAILABEL_VENV = Path(os.environ.get("MONAILABEL_VENV", REPO_ROOT / ".venv-monailabel"))
APP = REPO_ROOT / "integrations" / "monailabel"
COMMAND = "make bench-full  (python -m bench.run --out bench/results --only bench.monailabel)"
QUICK_CT_SIZE = (48, 48, 24)
SERVER_START_S = 300
INFER_TIMEOUT_S = 3600
INFO_TIMEOUT_S = 120
INFO_INTERVAL_S = 0.5


def _progress(start: float, message: str) -> None:
    print(f"[bench.monailabel +{time.perf_counter() - start:5.0f} s] {message}", flush=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _http(method: str, url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def install_bundle(bundles_dir: Path, work: Path, quick: bool) -> None:
    """The release zip of :data:`BUNDLE` unpacked into ``bundles_dir``, with random weights in the copy."""
    from monai.bundle import ConfigParser

    dist = work / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    shutil.rmtree(bundles_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "ci.package_bundle", str(REPO_ROOT / "bundles" / BUNDLE), "--out", str(dist)]
    subprocess.run(cmd, cwd=REPO_ROOT, check=True, capture_output=True)
    (zip_path,) = dist.glob(f"{BUNDLE}_v*.zip")
    bundles_dir.mkdir(parents=True)
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(bundles_dir)
    bundle_dir = bundles_dir / BUNDLE
    config_file = bundle_dir / "configs" / "inference.json"
    if quick:  # the demo's tiny networks, written into the copy (MONAI Label passes no overrides to inference)
        parser = ConfigParser()
        parser.read_config(str(config_file))
        demo = json.loads((bundle_dir / "configs" / "demo.json").read_text())["inference"]
        for key, value in demo.items():
            if key not in ("datalist", "load_base_model"):
                parser[key] = value
        ConfigParser.export_config_file(parser.get(), str(config_file), indent=4)
    _save_random_weights(bundle_dir)


def _save_random_weights(bundle_dir: Path) -> None:
    """``models/model.pt`` and the base model file from the copy's own network definitions, randomly initialised:
    time and memory do not depend on the weights (none are published)."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle_dir)
    (bundle_dir / "models").mkdir(exist_ok=True)
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle_dir / "models" / "model.pt")
    base = parser.get_parsed_content("base_network_def")
    torch.save(base.state_dict(), Path(parser.get_parsed_content("base_ckpt")))


def make_study(studies: Path, work: Path, quick: bool) -> tuple[str, tuple[int, ...], tuple[float, ...]]:
    """One BTCV phantom CT (the generator's default grid, or :data:`QUICK_CT_SIZE`), alone in ``studies``;
    returns its image id, shape and spacing (mm). The phantom is generated once and reused by later runs."""
    import nibabel as nib

    from common.synthetic.btcv import DEFAULT_SIZE, generate_btcv

    size = QUICK_CT_SIZE if quick else DEFAULT_SIZE
    dataset_dir = work / ("btcv_" + "x".join(map(str, size)))
    (case_id,) = generate_btcv(dataset_dir, cases=1, size=size, workers=1, verbose=False)
    source = dataset_dir / "RawData" / "Training" / "img" / f"img{case_id}.nii.gz"
    shutil.rmtree(studies, ignore_errors=True)
    studies.mkdir(parents=True)
    shutil.copyfile(source, studies / source.name)
    header = nib.load(source).header
    shape = tuple(int(s) for s in header.get_data_shape()[:3])
    spacing = tuple(round(float(z), 2) for z in header.get_zooms()[:3])
    return source.name.removesuffix(".nii.gz"), shape, spacing


def start_server(
    studies: Path, bundles_dir: Path, work: Path, threads: int, log_path: Path
) -> tuple[subprocess.Popen, str]:
    """The README's server command with ``.venv-monailabel`` first on PATH, as a user's shell would run it;
    returns the process and the server's base URL."""
    script = MONAILABEL_VENV / "bin" / "monailabel"
    if not script.is_file():
        raise FileNotFoundError(f"error: {script}: not found; create it with `make setup-monailabel`.")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{MONAILABEL_VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["MONAI_LABEL_SESSION_PATH"] = str(work / "sessions")  # not the user's home folder
    env["OMP_NUM_THREADS"] = str(threads)
    port = _free_port()
    cmd = [str(script), "start_server", "--app", str(APP), "--studies", str(studies)]
    cmd += ["--conf", "bundles", str(bundles_dir), "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}"


def wait_for_info(process: subprocess.Popen, url: str, log_path: Path) -> dict:
    """``/info/`` once the server answers it; raises if it exits or is silent for :data:`SERVER_START_S`."""
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            status, body = _http("GET", f"{url}/info/", timeout=5)
            if status == 200:
                return json.loads(body)
        except OSError:
            pass
        time.sleep(1)
    tail = log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"error: {log_path}: MONAI Label did not serve /info/ within {SERVER_START_S} s:\n{tail}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a running process so far (``/proc/<pid>/stat``), all its threads: on a
    machine shared with other work, less inflated than the wall clock."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14, 15


def peak_rss_mib(pid: int) -> float:
    """Peak resident set size of a running process, MiB (``VmHWM`` of ``/proc/<pid>/status``, in kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"error: /proc/{pid}/status: no VmHWM line")


def infer_while_asking_info(url: str, image_id: str) -> dict:
    """Time one inference request in a thread; meanwhile ask ``/info/`` every :data:`INFO_INTERVAL_S` seconds and
    keep the time of each answer that came while the request still ran."""
    answer: dict = {}

    def request() -> None:
        try:
            answer["result"] = _http("POST", f"{url}/infer/{BUNDLE}?image={image_id}&output=image",
                                     {"device": "cpu"}, INFER_TIMEOUT_S)  # fmt: skip
        except OSError as error:
            answer["error"] = error
        answer["seconds"] = time.perf_counter() - started

    thread = threading.Thread(target=request, daemon=True)
    started = time.perf_counter()
    thread.start()
    latencies, failures = [], []
    while thread.is_alive():
        asked = time.perf_counter()
        try:
            status, _ = _http("GET", f"{url}/info/", timeout=INFO_TIMEOUT_S)
            problem = None if status == 200 else f"status {status}"
        except OSError as error:
            problem = repr(error)
        took = time.perf_counter() - asked
        if thread.is_alive():  # answered while the inference still ran
            if problem is None:
                latencies.append(took)
            else:
                failures.append(problem)
        thread.join(max(0.0, INFO_INTERVAL_S - took))
    return {**answer, "latencies": latencies, "failures": failures}


def check_label_map(payload: bytes, shape: tuple[int, ...], work: Path) -> None:
    """The returned label map is on the CT's grid with RefNet's label values, or the timing measured a failure."""
    import nibabel as nib
    import numpy as np

    out = work / "label_map.nii.gz"
    out.write_bytes(payload)
    data = np.asarray(nib.load(out).dataobj)
    if data.shape != shape or not set(np.unique(data).tolist()) <= set(range(13)):
        raise RuntimeError(f"error: {out}: label map of shape {data.shape}, expected {shape} with values 0-12")


def run(ctx: Context) -> list[dict]:
    """Seconds of the request, ``/info/`` answer times during it, the server's peak RSS."""
    start = time.perf_counter()
    work = ctx.work_dir.resolve() / ("monailabel_quick" if ctx.quick else "monailabel")
    work.mkdir(parents=True, exist_ok=True)
    image_id, shape, spacing = make_study(work / "studies", work, ctx.quick)
    ct = f"{' x '.join(map(str, shape))} voxels at {' x '.join(map(str, spacing))} mm"
    _progress(start, f"phantom CT {image_id}: {ct}")
    install_bundle(work / "zoo", work, ctx.quick)
    _progress(start, f"{BUNDLE} packaged and unpacked with random weights")
    log_path = work / "server.log"
    process, url = start_server(work / "studies", work / "zoo", work, ctx.threads, log_path)
    try:
        info = wait_for_info(process, url, log_path)
        if BUNDLE not in info.get("models", {}):
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"error: {log_path}: /info/ does not list {BUNDLE}:\n{tail}")
        _progress(start, f"server answers /info/ ({url}); POST /infer/{BUNDLE} ...")
        cpu_before = cpu_seconds(process.pid)
        r = infer_while_asking_info(url, image_id)
        cpu = cpu_seconds(process.pid) - cpu_before
        rss = peak_rss_mib(process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if "error" in r or r["result"][0] != 200:
        detail = r.get("error") or f"status {r['result'][0]}: {r['result'][1][:1000]!r}"
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"error: POST /infer/{BUNDLE} failed ({detail}); {log_path}:\n{tail}")
    check_label_map(r["result"][1], shape, work)
    waits = r["latencies"]
    _progress(start, f"request took {r['seconds']:.0f} s; /info/ answered {len(waits)} times during it"
              + (f" (max {max(waits):.2f} s)" if waits else "") + f", failed {len(r['failures'])} times")  # fmt: skip
    size = "quick: demo networks, tiny CT" if ctx.quick else "Swin UNETR base + RefNet of inference.json"
    name = f"MONAI Label POST /infer/{BUNDLE} ({size}), CT {ct}"
    notes = (
        f"one request, wall clock, the first after start-up (includes loading the weights); random weights; "
        f"server started with OMP_NUM_THREADS={ctx.threads}; label map checked on the CT's grid"
    )
    figures = [
        figure("inference", BUNDLE, name, "s", [r["seconds"]], command=COMMAND, notes=notes),
        figure("inference", BUNDLE, f"{name} [server peak RSS]", "MiB", [rss], command=COMMAND,
               notes="VmHWM of the server process (/proc/<pid>/status) at the end of the request, start-up included"),
        figure("inference", BUNDLE, f"{name} [server CPU time]", "s", [cpu], command=COMMAND,
               notes=f"user + system CPU seconds of the server process during the request, all threads "
               f"(/proc/<pid>/stat): on a shared machine the wall time grows, this much less; with {ctx.threads} "
               f"threads a quiet machine needs at least this / {ctx.threads} s of wall time"),
    ]  # fmt: skip
    info_name = f"MONAI Label GET /info/ answer time during that request (asked every {INFO_INTERVAL_S} s)"
    if waits:
        figures.append(
            figure("inference", BUNDLE, info_name, "s", waits, command=COMMAND,
                   notes=f"one value per answer: median {statistics.median(waits):.3f} s, max {max(waits):.3f} s; "
                   f"{len(r['failures'])} requests failed {r['failures'][:3]}")
        )  # fmt: skip
    figures.append(figure("inference", BUNDLE, f"{info_name} [failed]", "count", [len(r["failures"])], command=COMMAND))
    _progress(start, "done")
    return figures
