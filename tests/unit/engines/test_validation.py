"""ValidateAtEnd: the last epoch of a training run is always validated, once."""

from __future__ import annotations

import pytest
from ignite.engine import Engine

from common.engines.validation import ValidateAtEnd


class _Validator:
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def run(self, global_epoch: int) -> None:
        self.epochs.append(global_epoch)


@pytest.mark.parametrize(("epochs", "interval", "validated"), [(1, 5, [1]), (5, 5, []), (7, 5, [7]), (3, 1, [])])
def test_validates_the_last_epoch_unless_the_interval_did(epochs: int, interval: int, validated: list[int]) -> None:
    validator = _Validator()
    trainer = Engine(lambda engine, batch: None)
    ValidateAtEnd(validator, interval).attach(trainer)
    trainer.run([0], max_epochs=epochs)
    assert validator.epochs == validated
