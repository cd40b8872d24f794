"""What one rank of a ``torchrun`` training saw, written as JSON, so a test can compare the ranks afterwards.

A test stacks an overlay on ``train.json`` + ``multi_gpu_train.json`` that appends to the bundle's ``finalize``::

    "probe_import": "$import ci.distributed_probe as distributed_probe",
    "+finalize": ["$distributed_probe.write_rank_report(@train#trainer, @validate#evaluator, '<dir>')"]

(with the repository root on ``PYTHONPATH``). Each rank then writes ``<dir>/rank<RANK>.json``: which samples its train
and validation loaders served, the size of the datasets behind them, the metrics its engines ended with and how
many per-case rows stand behind each metric. Sharding shows as disjoint sample indices that together cover the
dataset; metrics reduced across ranks show as equal values on every rank, computed from every case.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["engine_report", "rank_folder", "write_rank_report"]


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):  # a metric may be a tensor of several values; the scalar ones are compared
        return None


def engine_report(engine: Any) -> dict:
    """Sampler, served sample indices, dataset size, scalar metrics and per-case row counts of an ignite engine."""
    import torch

    loader = engine.data_loader
    sampler = getattr(loader, "sampler", None)
    details = getattr(engine.state, "metric_details", None) or {}
    return {
        "sampler": type(sampler).__name__,
        "distributed_sampler": isinstance(sampler, torch.utils.data.DistributedSampler),
        # The indices of the last epoch: what a DistributedSampler hands this rank.
        "indices": [int(i) for i in sampler] if sampler is not None else None,
        "dataset_size": len(loader.dataset),
        "iterations": engine.state.iteration,
        "epochs": engine.state.epoch,
        "metrics": {k: _number(v) for k, v in engine.state.metrics.items()},
        "metric_rows": {k: int(len(v)) for k, v in details.items() if hasattr(v, "__len__")},
    }


def rank_folder(base: str) -> str:
    """``<base>_rank<RANK>``: a folder of this process's own, so that a test sees which ranks write files."""
    return f"{base}_rank{int(os.environ.get('RANK', '0'))}"


def write_rank_report(trainer: Any, evaluator: Any, out_dir: str) -> str:
    """Write ``<out_dir>/rank<RANK>.json`` for this process and return its path."""
    rank = int(os.environ.get("RANK", "0"))
    report = {
        "rank": rank,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
        "train": engine_report(trainer),
        "validate": engine_report(evaluator),
    }
    path = Path(out_dir) / f"rank{rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, path)
    return str(path)
