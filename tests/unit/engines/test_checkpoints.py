"""Checkpoints survive a failure mid-write, rotation never leaves nothing behind, and resume skips damaged files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver

from common.engines.checkpoints import AtomicCheckpointSaver, latest_checkpoint


def _engine(epochs: int) -> tuple[Engine, torch.nn.Linear]:
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 2)

    def step(engine, batch):
        with torch.no_grad():
            net.weight += 1.0  # every iteration changes the weights, so checkpoints differ

    return Engine(step), net


def _contents(net: torch.nn.Module) -> dict:
    """Two objects, as in a bundle's training checkpoint, so that files are named checkpoint_epoch=N.pt."""
    return {"model": net, "optimizer": torch.optim.SGD(net.parameters(), lr=0.1)}


def _saved_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_same_files_as_monai_and_old_ones_rotated_out(tmp_path):
    engine, net = _engine(3)
    AtomicCheckpointSaver(str(tmp_path / "atomic"), _contents(net), save_interval=1, n_saved=2).attach(engine)
    reference, reference_net = _engine(3)
    CheckpointSaver(str(tmp_path / "monai"), _contents(reference_net), save_interval=1, n_saved=2).attach(reference)
    engine.run([0], max_epochs=3)
    reference.run([0], max_epochs=3)
    assert (
        _saved_names(tmp_path / "atomic")
        == _saved_names(tmp_path / "monai")
        == [
            "checkpoint_epoch=2.pt",
            "checkpoint_epoch=3.pt",
        ]
    )
    saved = torch.load(tmp_path / "atomic" / "checkpoint_epoch=3.pt", weights_only=True)
    assert torch.equal(saved["model"]["weight"], net.weight)


def test_a_failed_write_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    engine, net = _engine(2)
    saver = AtomicCheckpointSaver(str(tmp_path), _contents(net), save_interval=1, n_saved=1)
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    first = (tmp_path / "checkpoint_epoch=1.pt").read_bytes()

    def interrupted_save(obj, f, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        engine.run([0], max_epochs=2)
    # MONAI's own saver would have deleted epoch 1 before writing epoch 2, leaving nothing intact.
    assert _saved_names(tmp_path) == ["checkpoint_epoch=1.pt"]
    assert (tmp_path / "checkpoint_epoch=1.pt").read_bytes() == first


def test_fixed_file_name_is_replaced_in_place(tmp_path):
    engine, net = _engine(2)
    AtomicCheckpointSaver(str(tmp_path), {"model": net}, save_final=True, final_filename="model.pt").attach(engine)
    engine.run([0], max_epochs=2)
    assert _saved_names(tmp_path) == ["model.pt"]
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], net.weight)


def test_resume_skips_a_damaged_newest_checkpoint_with_a_warning(tmp_path, caplog):
    for epoch in (1, 2, 3):
        torch.save({"epoch": epoch}, tmp_path / f"checkpoint_epoch={epoch}.pt")
    assert latest_checkpoint(tmp_path).endswith("checkpoint_epoch=3.pt")
    data = (tmp_path / "checkpoint_epoch=3.pt").read_bytes()
    (tmp_path / "checkpoint_epoch=3.pt").write_bytes(data[: len(data) // 2])  # truncated by a crash
    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(tmp_path).endswith("checkpoint_epoch=2.pt")
    assert "checkpoint_epoch=3.pt: damaged checkpoint" in caplog.text


def test_no_intact_checkpoint_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        latest_checkpoint(tmp_path)
    (tmp_path / "checkpoint_epoch=1.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FileNotFoundError, match=r"only damaged ones: \['checkpoint_epoch=1.pt'\]"):
        latest_checkpoint(tmp_path)


def test_every_epoch_event_still_fires(tmp_path):
    """The saver is a plain MONAI handler: attaching it does not change the engine's run."""
    engine, net = _engine(2)
    seen = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(e.state.epoch))
    AtomicCheckpointSaver(str(tmp_path), {"model": net}, save_interval=1).attach(engine)
    engine.run([0, 1], max_epochs=2)
    assert seen == [1, 2]
