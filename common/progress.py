"""Progress bars for the zoo's long steps, and the one rule for when they are shown.

A 3D inference runs for minutes per case and phantom generation for a while per case; tqdm bars on stderr show
how far they are. Every bar of the zoo comes from :func:`progress_bar` and is shown only when
:func:`progress_enabled` says so:

* the run's ``progress`` setting is true (``--progress false`` silences a bundle run; ``--quiet`` the phantom
  generator);
* the environment variable ``CI`` is not set to a true value (``CI=true``, ``CI=1``, as CI services set it);
* stderr is a terminal. A log file or a pipe gets no bars: tqdm rewrites its line in place with carriage returns,
  which a file keeps as thousands of partial lines (tqdm's own ``disable=None`` rule).

What the bars show (each bar closes itself, also when the step fails, so that a failing run's stderr still ends
with its ``error:`` line, :mod:`common.errors`):

* inference and evaluation: one bar over the cases (:class:`common.engines.progress.CaseProgressBar`) and, nested
  under it and cleared when done, one over a case's sliding windows (:class:`common.fast_inference.FastInferer`)
  or RefNet's slabs (:class:`common.inferers.refinement.BaseThenRefineInferer`);
* phantom generation (``python -m common.synthetic``): one bar over the cases.

Training shows no bar: it logs one line per epoch with its duration and the expected end
(:class:`common.engines.progress.EpochETALogger`), so that its logs stay readable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from common.settings import flag

__all__ = ["logs_above_bars", "progress_bar", "progress_enabled", "running_in_ci"]


def running_in_ci() -> bool:
    """Whether the environment variable ``CI`` says this is a CI job (set, and not to ``false``/``0``/empty)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "false", "0")


def progress_enabled(setting: Any = True) -> bool:
    """Whether to show progress bars: ``setting`` is true (read with :func:`common.settings.flag`), not in CI, and
    stderr is a terminal (module docstring)."""
    if not flag(setting) or running_in_ci():
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class _Bar(tqdm):
    """A tqdm bar that draws its finished state before it closes.

    tqdm redraws at most every 0.1 s, so a bar that fills within that time and is then cleared (``leave=False``)
    would never be seen complete; a user watching nested bars should see each reach its total.
    """

    def close(self) -> None:
        if not self.disable and self.total and self.n >= self.total and self.last_print_n < self.n:
            self.refresh()
        super().close()


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    enabled: Any = True,
    leave: bool = False,
) -> tqdm:
    """A tqdm bar on stderr, disabled (a silent no-op) unless :func:`progress_enabled` (``enabled``).

    ``leave=False`` (the default) clears the bar when it closes: the right thing for a bar nested under another or
    one that repeats per case. Use it as a context manager (``with progress_bar(...) as bar``) or close it in a
    ``finally``, so that it is gone before an error is printed.
    """
    return _Bar(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        leave=leave,
        file=sys.stderr,
        dynamic_ncols=True,
        disable=not progress_enabled(enabled),
    )


def _logs_to_console(logger: logging.Logger) -> bool:
    return any(
        isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stdout, sys.stderr)
        for h in logger.handlers
    )


@contextlib.contextmanager
def logs_above_bars() -> Iterator[None]:
    """Inside, log records that go to the console are written above the open bars (tqdm's
    ``logging_redirect_tqdm``) rather than into the middle of a bar's line; other handlers (log files) are untouched.

    Covers the root logger and every logger existing on entry that has a console handler of its own (MONAI's
    ``get_logger`` loggers do not propagate to the root).
    """
    existing = [logging.root, *(v for v in logging.root.manager.loggerDict.values() if isinstance(v, logging.Logger))]
    with logging_redirect_tqdm([logger for logger in existing if _logs_to_console(logger)]):
        yield
