"""What a user sees of a running engine: a bar over the cases of inference and evaluation, an ETA in training logs.

* :class:`CaseProgressBar` (in the ``handlers`` of ``inference.json`` and ``evaluate.json``): a tqdm bar over the
  iterations of an evaluator's run, one case each with the bundles' batch size of 1. The bars of the inferers
  (sliding windows, RefNet slabs) nest under it. Shown only where :func:`common.progress.progress_enabled` allows
  (a terminal, not CI, ``progress`` true), and on rank 0 of a multi-GPU run; elsewhere it attaches nothing.
* :class:`EpochETALogger` (in ``train#handlers``): at the end of every epoch one log line,
  ``epoch 3/50 took 41 s, ETA 33 min``, the expected end from the mean epoch time of this run (validation
  included). A log line rather than a bar, so that training logs stay readable in a file.
"""

from __future__ import annotations

import contextlib
import logging
from time import perf_counter
from typing import Any

import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.apps import get_logger

from common.progress import logs_above_bars, progress_bar, progress_enabled
from common.settings import flag

__all__ = ["CaseProgressBar", "EpochETALogger", "format_duration"]


def format_duration(seconds: float) -> str:
    """``41 s``, ``33 min``, ``2 h 05 min``: as precise as a person reading a log needs."""
    seconds = max(float(seconds), 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _first_rank() -> bool:
    """Rank 0 of a multi-GPU run, or a run without one: where the bars and logs of a run are shown."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class CaseProgressBar:
    """A progress bar over the cases of an evaluator's run, closed at the end of the run or when it fails.

    While the bar is open, console log lines (the writers' ``writing: ...``) are printed above it
    (:func:`common.progress.logs_above_bars`). List it before the other handlers: when the run fails, it closes
    the bar before ``StatsHandler`` and the others see the exception, so that nothing redraws the bar after the
    run's ``error:`` line. It then leaves the exception to those handlers, or re-raises it when there are none (the
    engine's behaviour without this handler).

    Args:
        enabled: the bundle's ``progress`` setting (any spelling :func:`common.settings.flag` reads).
        desc: the bar's label.
        unit: what one iteration is.
    """

    def __init__(self, enabled: Any = True, desc: str = "cases", unit: str = "case") -> None:
        self.enabled = flag(enabled)
        self.desc = desc
        self.unit = unit
        self._bar: Any = None
        self._logs = contextlib.ExitStack()

    def attach(self, engine: Engine) -> None:
        if not progress_enabled(self.enabled) or not _first_rank():
            return  # nothing to show: the engine runs exactly as without this handler
        engine.add_event_handler(Events.EPOCH_STARTED, self._open)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._advance)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._close)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._close_and_pass_on)

    def _open(self, engine: Engine) -> None:
        self._close(engine)
        total = engine.state.epoch_length
        self._bar = progress_bar(total=total, desc=self.desc, unit=self.unit, enabled=self.enabled, leave=True)
        self._logs.enter_context(logs_above_bars())

    def _advance(self, engine: Engine) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def _close(self, engine: Engine) -> None:
        self._logs.close()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _close_and_pass_on(self, engine: Engine, error: BaseException) -> None:
        self._close(engine)
        # ignite hands an exception to the EXCEPTION_RAISED handlers instead of raising it once there are any: with
        # no other handler, raise it as the engine would have
        registered = getattr(engine, "_event_handlers", {}).get(Events.EXCEPTION_RAISED, ())
        if all(handler == self._close_and_pass_on for handler, *_ in registered):
            raise error


class EpochETALogger:
    """Log ``epoch 3/50 took 41 s, ETA 33 min`` at the end of every training epoch.

    The ETA is the mean duration of the epochs this process ran (a resumed run counts from where it resumed)
    times the epochs left. List it after ``ValidationHandler`` so that an epoch's time includes its validation.
    In a multi-GPU run only rank 0 logs.

    Args:
        enabled: the bundle's ``progress`` setting (any spelling :func:`common.settings.flag` reads).
        name: the logger (MONAI's ``get_logger``: INFO to stdout, as ``StatsHandler`` logs).
    """

    def __init__(self, enabled: Any = True, name: str = "common.engines.EpochETALogger") -> None:
        self.enabled = flag(enabled)
        self.logger: logging.Logger = get_logger(name)
        self._run_start = 0.0
        self._epoch_start = 0.0
        self._epochs_done = 0

    def attach(self, engine: Engine) -> None:
        if not self.enabled or not _first_rank():
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _started(self, engine: Engine) -> None:
        self._run_start = perf_counter()
        self._epochs_done = 0

    def _epoch_started(self, engine: Engine) -> None:
        self._epoch_start = perf_counter()

    def _epoch_completed(self, engine: Engine) -> None:
        now = perf_counter()
        self._epochs_done += 1
        epoch, max_epochs = engine.state.epoch, engine.state.max_epochs
        message = f"epoch {epoch}/{max_epochs} took {format_duration(now - self._epoch_start)}"
        if max_epochs is not None and epoch < max_epochs:
            mean = (now - self._run_start) / self._epochs_done
            message += f", ETA {format_duration(mean * (max_epochs - epoch))}"
        else:
            message += f", this run took {format_duration(now - self._run_start)}"
        self.logger.info(message)
