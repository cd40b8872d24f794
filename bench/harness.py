"""Shared measuring tools for ``make bench``: repeat timing, isolated subprocess runs, machine facts, matmul peak.

Every benchmark module exposes ``run(ctx: Context) -> list[dict]``; each dict is one figure (see :func:`figure`).
Timings are only ever compared as ratios measured in the same run (``bench.run`` computes them), because the
absolute numbers depend on the machine and on whatever else it is doing.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.cpu import describe_cpu

__all__ = [
    "GROUPS",
    "UNITS",
    "Context",
    "count_flops",
    "figure",
    "machine_info",
    "matmul_peak_gflops",
    "peak_rss_mib",
    "run_isolated",
    "summarise",
    "time_call",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
UNITS = ("s", "MiB", "GFLOP/s", "ratio", "Dice", "fraction", "count")
GROUPS = ("inference", "training", "data", "fct_comparison")
THREADS_ENV = "BENCH_THREADS"


@dataclass
class Context:
    """What a benchmark module gets: how often to repeat, smoke mode, thread count, and a folder for caches.

    ``quick`` is the smoke mode used by the tests: tiny shapes, one repeat, seconds per module. ``full`` also
    measures what the 20-minute budget of ``make bench`` leaves out (``make bench-full``). ``work_dir`` lives under
    the output folder and survives between runs, so phantoms and briefly-trained weights are reused.
    """

    repeats: int = 3
    quick: bool = False
    full: bool = False
    threads: int = 2
    work_dir: Path = field(default_factory=lambda: REPO_ROOT / "bench" / "results" / "work")

    def __post_init__(self) -> None:
        self.work_dir = Path(self.work_dir)
        if self.repeats < 1:
            raise ValueError(f"Context: repeats must be >= 1, got {self.repeats}.")
        if self.threads < 1:
            raise ValueError(f"Context: threads must be >= 1, got {self.threads}.")

    @property
    def ablations(self) -> bool:
        """Whether to measure the allocator ablations (the eager or training path without retained memory): they
        explain a gain rather than measure a bundle, so ``make bench`` leaves them to ``--full``; the smoke mode
        runs them too, so that the tests cover their code."""
        return self.full or self.quick

    def to_kwargs(self) -> dict:
        """The JSON-able form passed to :func:`run_isolated` workers."""
        return {
            "repeats": self.repeats,
            "quick": self.quick,
            "full": self.full,
            "threads": self.threads,
            "work_dir": str(self.work_dir),
        }

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> Context:
        return cls(**kwargs)


def figure(
    group: str,
    bundle: str,
    name: str,
    unit: str,
    values: list[float],
    reference: str | None = None,
    command: str | None = None,
    notes: str | None = None,
) -> dict:
    """One figure in the layout ``bench.run`` reads; checks the unit and that there is at least one value."""
    if unit not in UNITS:
        raise ValueError(f"figure {name!r}: unknown unit {unit!r}; expected one of {UNITS}.")
    values = [float(v) for v in values]
    if not values:
        raise ValueError(f"figure {name!r}: no values.")
    out = {"group": group, "bundle": bundle, "name": name, "unit": unit, "values": values}
    for key, value in (("reference", reference), ("command", command), ("notes", notes)):
        if value:
            out[key] = value
    return out


def summarise(values: list[float]) -> dict:
    """Median, min, max, interquartile range and count of repeated measurements."""
    if not values:
        raise ValueError("summarise: got an empty list of values.")
    ordered = sorted(float(v) for v in values)
    if len(ordered) >= 2:
        q = statistics.quantiles(ordered, n=4, method="inclusive")
        iqr = q[2] - q[0]
    else:
        iqr = 0.0
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "iqr": iqr,
        "n": len(ordered),
    }


def time_call(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``fn()`` per call, after ``warmup`` untimed calls (first-call allocation and kernel choice)."""
    if repeats < 1:
        raise ValueError(f"time_call: repeats must be >= 1, got {repeats}.")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def set_threads(threads: int | None = None) -> int:
    """Fix torch's intra-op thread count from the argument or ``BENCH_THREADS``; returns the count in use."""
    import torch

    threads = int(threads or os.environ.get(THREADS_ENV, 0) or torch.get_num_threads())
    torch.set_num_threads(threads)
    return threads


def run_isolated(target: str, timeout: float | None = None, **kwargs: Any) -> dict:
    """Run ``module:function(**kwargs)`` in a fresh interpreter and return its dict plus ``peak_rss_mib``.

    A fresh process per figure keeps each peak RSS its own (``ru_maxrss`` never goes down) and stops caches,
    allocator pools and thread pools of one figure leaking into the next. ``threads`` in ``kwargs`` (or the
    ``BENCH_THREADS`` environment variable) fixes the child's torch thread count.
    """
    if ":" not in target:
        raise ValueError(f"run_isolated: target must be 'module:function', got {target!r}.")
    env = dict(os.environ)
    if "threads" in kwargs:
        env[THREADS_ENV] = str(kwargs["threads"])
    cmd = [sys.executable, "-m", "bench.worker", target, json.dumps(kwargs)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-3000:]
        raise RuntimeError(f"run_isolated: {target} exited with {proc.returncode}:\n{tail}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if not lines:
        raise RuntimeError(f"run_isolated: {target} printed no BENCH_RESULT line; stdout tail:\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1][len("BENCH_RESULT ") :])


def machine_info() -> dict:
    """CPU model, cores, library versions, thread count and the SIMD flags that decide the fast paths (no hostname)."""
    import monai
    import numpy
    import torch

    cpu = describe_cpu()
    return {
        "cpu_model": cpu["cpu_model"],
        "cpu": cpu,  # the kind, deciding flags, kernel ISA and the precision fast_cpu takes (common.cpu)
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "logical_cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": numpy.__version__,
        "onnxruntime": _version_or_none("onnxruntime"),
        "cuda_available": torch.cuda.is_available(),
    }


def _version_or_none(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def matmul_peak_gflops(dtype: str | Any = "float32", size: int = 2048, repeats: int = 5) -> list[float]:
    """GFLOP/s of a large square matrix multiply (2·n³ FLOPs), one value per repeat: the machine's own ceiling."""
    import torch

    if isinstance(dtype, str):
        if not hasattr(torch, dtype):
            raise ValueError(f"matmul_peak_gflops: unknown dtype {dtype!r}; expected e.g. 'float32' or 'bfloat16'.")
        dtype = getattr(torch, dtype)
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    flops = 2.0 * size**3
    with torch.inference_mode():
        times = time_call(lambda: torch.mm(a, b), repeats=repeats, warmup=1)
    return [flops / t / 1e9 for t in times]


def count_flops(module: Any, example_input: Any) -> float:
    """Forward FLOPs of ``module(example_input)`` counted by ``torch.utils.flop_counter.FlopCounterMode``.

    Counts matmuls and convolutions (what dominates every network here); elementwise work is not counted, so
    the GFLOP/s derived from it is a slight underestimate of the work actually done.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(example_input)
    return float(counter.get_total_flops())
