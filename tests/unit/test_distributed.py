"""``common.distributed.leave_process_group``: how every ``multi_gpu_train.json`` ends a torchrun training.

The race it guards against (a gloo worker thread taking the GIL during interpreter finalization) shows only now and
then, so it is not provoked here; ``tests/integration/test_multi_gpu.py`` runs every bundle under ``torchrun``.
These tests pin the behaviour in one process and that every multi-GPU config uses it.
"""

from __future__ import annotations

import pytest
import torch.distributed as dist

from common import distributed
from tests.helpers import BUNDLES_UNDER_TEST


def test_leave_waits_destroys_then_pauses(tmp_path, monkeypatch):
    calls = []

    def recorded(name, call):
        return lambda *args: calls.append(name) or call(*args)

    monkeypatch.setattr(distributed.dist, "barrier", recorded("barrier", dist.barrier))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", recorded("destroy", dist.destroy_process_group))
    monkeypatch.setattr(distributed.time, "sleep", lambda s: calls.append(("sleep", s)))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        distributed.leave_process_group(settle_s=0.05)
        assert not dist.is_initialized()
        assert calls == ["barrier", "destroy", ("sleep", 0.05)], "barrier, destroy the group, then the pause"
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_leave_without_a_group_does_nothing(monkeypatch):
    monkeypatch.setattr(distributed.time, "sleep", lambda s: pytest.fail("paused without a process group"))
    assert not dist.is_initialized()
    distributed.leave_process_group()


@pytest.mark.parametrize("bundle", BUNDLES_UNDER_TEST, ids=[b.name for b in BUNDLES_UNDER_TEST])
def test_every_multi_gpu_training_ends_by_leaving_the_group(bundle):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "train.json"), str(bundle / "configs" / "multi_gpu_train.json")])
    assert "$import common.distributed" in parser["initialize"], bundle.name
    assert parser["finalize"] == ["$common.distributed.leave_process_group()"], bundle.name


def test_join_uses_gloo_on_cpu_and_keeps_an_existing_group(monkeypatch):
    """The torchrun environment (env://) with one rank: gloo without CUDA, and joining twice is harmless."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(distributed.torch.cuda, "is_available", lambda: False)
    try:
        distributed.join_process_group("cpu")
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        distributed.join_process_group("cpu")
        assert dist.get_world_size() == 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_first_rank_keeps_every_handler_the_others_only_what_all_ranks_run(monkeypatch):
    from monai.handlers import LrScheduleHandler, StatsHandler, ValidationHandler

    handlers = [ValidationHandler(1, validator=None), StatsHandler(), LrScheduleHandler(None)]
    assert distributed.handlers_for_this_rank(handlers) == handlers  # no process group: one rank does all
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    assert distributed.handlers_for_this_rank(handlers) == [handlers[0], handlers[2]]
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 0)
    assert distributed.handlers_for_this_rank(handlers) == handlers
