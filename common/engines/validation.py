"""Validation that a training run's last epoch does not skip."""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine, Events


class ValidateAtEnd:
    """Run ``validator`` once more when training completes, unless its last epoch was validated already.

    MONAI's ``ValidationHandler`` validates every ``interval`` epochs, so a run whose epochs are not a multiple of
    the interval (one epoch of fine-tuning in MONAI Label, with the bundle's interval of 5) ends without judging its
    last epochs, and the best-model saver keeps the model it started from.

    Args:
        validator: the evaluator that ``ValidationHandler`` runs (its handlers save the best model).
        interval: that handler's interval, in epochs.
    """

    def __init__(self, validator: Any, interval: int) -> None:
        self.validator = validator
        self.interval = int(interval)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch % self.interval:
            self.validator.run(engine.state.epoch)
