"""Progress a user can see: when bars are shown, what the inferers, engines and phantom generator show, and that
a bar is closed before an error reaches the user.

Bars are shown only on a terminal; these tests give the code a terminal by replacing ``sys.stderr`` with a text
buffer that says it is one (:class:`Terminal`), and read what was drawn from it. The bundles' own runs on a real
pseudo-terminal are in ``tests/zoo/test_progress_runs.py``.
"""

from __future__ import annotations

import io
import logging
import sys
import time

import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from monai.inferers import SimpleInferer, SliceInferer, SlidingWindowInferer

from common.engines.progress import CaseProgressBar, EpochETALogger, format_duration
from common.fast_inference import FastInferer, sliding_window_count
from common.inferers.refinement import BaseThenRefineInferer
from common.progress import logs_above_bars, progress_bar, progress_enabled
from common.settings import SettingError
from common.synthetic.brats import generate_brats


class Terminal(io.StringIO):
    """A stderr that is a terminal, for tqdm and :func:`common.progress.progress_enabled`."""

    def isatty(self) -> bool:
        return True


def on_terminal(monkeypatch) -> Terminal:
    """stderr on a terminal, outside CI. Called in a test's body: pytest sets its own sys.stderr after fixtures."""
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.delenv("CI", raising=False)
    return screen


# ------------------------------------------------------------------------------------------------ when bars show


def test_bars_show_on_a_terminal_outside_ci(monkeypatch):
    on_terminal(monkeypatch)
    assert progress_enabled() and progress_enabled("true") and progress_enabled(1)
    monkeypatch.setenv("CI", "false")
    assert progress_enabled()


@pytest.mark.parametrize("ci", ["true", "1", "True", "yes"])
def test_ci_silences_the_bars(monkeypatch, ci):
    terminal = on_terminal(monkeypatch)
    monkeypatch.setenv("CI", ci)
    assert not progress_enabled()
    with progress_bar(range(3), desc="cases") as bar:
        list(bar)
    assert terminal.getvalue() == ""


def test_the_progress_setting_silences_the_bars(monkeypatch):
    terminal = on_terminal(monkeypatch)
    assert not progress_enabled(False) and not progress_enabled("false") and not progress_enabled("0")
    with progress_bar(range(3), desc="cases", enabled="false") as bar:
        list(bar)
    assert terminal.getvalue() == ""
    with pytest.raises(SettingError):
        progress_enabled("maybe")


def test_no_bars_into_a_file_or_pipe(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # isatty() is False, as for a log file
    assert not progress_enabled()
    with progress_bar(range(3), desc="cases") as bar:
        list(bar)
    assert sys.stderr.getvalue() == ""


@pytest.mark.parametrize("iterate", [True, False])
def test_a_bar_that_fills_at_once_is_seen_complete_before_it_is_cleared(monkeypatch, iterate):
    terminal = on_terminal(monkeypatch)  # tqdm redraws every 0.1 s: this bar fills well within that
    if iterate:
        with progress_bar(range(4), desc="slabs") as bar:
            list(bar)
    else:
        with progress_bar(total=4, desc="windows") as bar:
            bar.update(4)
    drawn = terminal.getvalue()
    assert "100%" in drawn and "4/4" in drawn, drawn
    assert drawn.endswith("\r"), "then cleared"


def test_console_logs_go_above_the_bars(monkeypatch):
    on_terminal(monkeypatch)
    logger = logging.getLogger("tests.progress.console")
    console = logging.StreamHandler(sys.stdout)
    logger.addHandler(console)
    monkeypatch.setattr(logger, "propagate", False)
    try:
        with progress_bar(total=2, desc="cases") as bar, logs_above_bars():
            assert console not in logger.handlers, "the console handler is swapped for tqdm's while bars are open"
            bar.update(1)
        assert logger.handlers == [console]
    finally:
        logger.removeHandler(console)


# ---------------------------------------------------------------------------------------------- sliding windows


class CountingNetwork(nn.Module):
    """Counts the windows it is given; ``seconds`` per call let tqdm (which redraws every 0.1 s) draw each step."""

    def __init__(self, spatial_dims: int = 3, channels: int = 2, seconds: float = 0.0) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.conv = conv(channels, 3 if channels == 2 else channels, 1)
        self.windows = 0
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += x.shape[0]
        time.sleep(self.seconds)
        return self.conv(x)


@pytest.mark.parametrize("shape, inferer", [
    ((1, 2, 24, 20, 9), SlidingWindowInferer(roi_size=(16, 16, 8), sw_batch_size=3, overlap=0.5)),
    ((2, 2, 24, 20, 9), SlidingWindowInferer(roi_size=(16, 16, 8), sw_batch_size=2, overlap=0.25)),
    ((1, 2, 8, 8, 4), SlidingWindowInferer(roi_size=(16, 16, 8), overlap=0.5)),  # smaller than the window
    ((1, 2, 12, 10, 7), SliceInferer(spatial_dim=2, roi_size=(-1, -1), sw_batch_size=4)),
    ((1, 2, 12, 10, 7), SliceInferer(spatial_dim=0, roi_size=(8, 8), sw_batch_size=4, overlap=0.5)),
])  # fmt: skip
def test_the_window_count_is_monais(shape, inferer):
    x = torch.rand(shape)
    network = CountingNetwork(spatial_dims=2 if isinstance(inferer, SliceInferer) else 3)
    with torch.no_grad():
        inferer(x, network)
    assert sliding_window_count(inferer, x) == network.windows


@pytest.mark.parametrize("fast", [True, False])
def test_fast_inferer_shows_a_window_bar_and_clears_it(monkeypatch, fast):
    terminal = on_terminal(monkeypatch)
    x = torch.rand(1, 2, 24, 20, 9)
    window = SlidingWindowInferer(roi_size=(16, 16, 8), sw_batch_size=2, overlap=0.5)
    network = CountingNetwork(seconds=0.11).eval()
    with torch.no_grad():
        quiet = FastInferer(window, enabled=fast, bf16=False)(x, network)
        assert terminal.getvalue() == "", "progress is off unless asked for"
        network.windows = 0
        shown = FastInferer(window, enabled=fast, bf16=False, progress=True)(x, network)
    drawn = terminal.getvalue()
    total = sliding_window_count(window, x)
    assert total == network.windows == 8
    assert "windows: 100%" in drawn and f"{total}/{total}" in drawn, drawn
    assert drawn.endswith("\r"), "the bar is cleared when the pass ends"
    torch.testing.assert_close(shown, quiet, rtol=0, atol=0)


def test_fast_inferer_shows_no_bar_under_ci_or_without_windows(monkeypatch):
    terminal = on_terminal(monkeypatch)
    x = torch.rand(1, 2, 16, 16, 8)
    with torch.no_grad():
        FastInferer(SimpleInferer(), bf16=False, progress=True)(x, CountingNetwork().eval())
        assert terminal.getvalue() == "", "a whole-image inferer has no windows to count"
        monkeypatch.setenv("CI", "true")
        FastInferer(SlidingWindowInferer(roi_size=(8, 8, 8)), bf16=False, progress=True)(x, CountingNetwork().eval())
    assert terminal.getvalue() == ""


def test_a_failing_pass_closes_its_window_bar(monkeypatch):
    terminal = on_terminal(monkeypatch)

    def broken(x):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        FastInferer(SlidingWindowInferer(roi_size=(8, 8, 8)), bf16=False, progress=True)(
            torch.rand(1, 2, 16, 16, 8), broken
        )
    assert terminal.getvalue().endswith("\r"), "cleared, not left for the traceback to follow"


def test_refnet_cascade_shows_a_slab_bar(monkeypatch):
    terminal = on_terminal(monkeypatch)
    torch.manual_seed(0)
    base = nn.Conv3d(1, 13, 1).eval()
    refnet = CountingNetwork(spatial_dims=2, channels=13, seconds=0.11).eval()
    slices = SliceInferer(spatial_dim=2, roi_size=(-1, -1), sw_batch_size=4)  # one RefNet call per slab
    inferer = BaseThenRefineInferer(
        base, SimpleInferer(), slices, base_spacing=None, output="labels", slab_size=4, progress=True
    )
    ct = torch.rand(1, 1, 12, 10, 10)
    with torch.no_grad():
        shown = inferer(ct, refnet)
        inferer.progress = False
        refnet.seconds = 0.0
        quiet = inferer(ct, refnet)
    drawn = terminal.getvalue()
    assert "RefNet slabs: 100%" in drawn and "3/3" in drawn, drawn  # 10 slices in slabs of 4
    assert torch.equal(shown, quiet)


# ------------------------------------------------------------------------------------------------------ engines


def _evaluator(fail_at: int | None = None) -> Engine:
    def step(engine, batch):
        if engine.state.iteration == fail_at:
            raise ValueError(f"case {fail_at} is broken")
        return batch

    return Engine(step)


def test_case_bar_counts_the_cases(monkeypatch):
    terminal = on_terminal(monkeypatch)
    engine = _evaluator()
    CaseProgressBar(enabled=True).attach(engine)
    engine.run(range(3))
    drawn = terminal.getvalue()
    assert "cases: 100%" in drawn and "3/3" in drawn, drawn
    assert drawn.endswith("\n"), "the finished bar stays, as a summary of the run"


@pytest.mark.parametrize("setting, ci", [(False, None), (True, "true")])
def test_case_bar_attaches_nothing_when_quiet(monkeypatch, setting, ci):
    terminal = on_terminal(monkeypatch)
    if ci:
        monkeypatch.setenv("CI", ci)
    engine = _evaluator(fail_at=2)
    CaseProgressBar(enabled=setting).attach(engine)
    assert not any(engine._event_handlers.values()), "the engine runs exactly as without the handler"
    with pytest.raises(ValueError, match="case 2 is broken"):
        engine.run(range(3))
    assert terminal.getvalue() == ""


def test_case_bar_closes_before_the_error_and_reraises_it(monkeypatch):
    terminal = on_terminal(monkeypatch)
    engine = _evaluator(fail_at=2)
    CaseProgressBar().attach(engine)
    with pytest.raises(ValueError, match="case 2 is broken"):
        engine.run(range(3))
    drawn = terminal.getvalue()
    assert "1/3" in drawn and drawn.endswith("\n"), "closed: the error is printed on a line of its own"


def test_case_bar_leaves_the_error_to_the_handlers_after_it(monkeypatch):
    terminal = on_terminal(monkeypatch)
    """With StatsHandler after it (the bundles' order), the bar is closed first and StatsHandler re-raises."""
    engine = _evaluator(fail_at=2)
    bar = CaseProgressBar()
    bar.attach(engine)
    seen = []

    def stats_handler(engine, error):
        seen.append((bar._bar, terminal.getvalue()))
        raise error

    engine.add_event_handler(Events.EXCEPTION_RAISED, stats_handler)
    with pytest.raises(ValueError, match="case 2 is broken"):
        engine.run(range(3))
    assert seen, "StatsHandler saw the error"
    assert all(bar is None and drawn.endswith("\n") for bar, drawn in seen), "the bar was closed before"


def _log_of(handler: EpochETALogger) -> io.StringIO:
    log = io.StringIO()
    handler.logger.addHandler(logging.StreamHandler(log))
    return log


def test_epoch_eta_lines(monkeypatch):
    clock = iter(range(0, 1000, 10))  # every reading of the clock is 10 s after the previous one
    monkeypatch.setattr("common.engines.progress.perf_counter", lambda: next(clock))
    eta = EpochETALogger(name="tests.progress.eta")
    log = _log_of(eta)
    engine = Engine(lambda engine, batch: None)
    eta.attach(engine)
    engine.run(range(2), max_epochs=3)
    lines = log.getvalue().splitlines()
    # started at 0; epoch 1 from 10 to 20 (mean 20 s an epoch so far), epoch 2 from 30 to 40 (mean 20 s)
    assert lines == [
        "epoch 1/3 took 10 s, ETA 40 s",
        "epoch 2/3 took 10 s, ETA 20 s",
        "epoch 3/3 took 10 s, this run took 60 s",
    ]


def test_epoch_eta_lines_off(monkeypatch):
    eta = EpochETALogger(enabled="false", name="tests.progress.eta_off")
    log = _log_of(eta)
    engine = Engine(lambda engine, batch: None)
    eta.attach(engine)
    engine.run(range(2), max_epochs=2)
    assert log.getvalue() == ""


@pytest.mark.parametrize("seconds, text", [
    (0.4, "0 s"), (41, "41 s"), (89, "89 s"), (90, "2 min"), (1980, "33 min"), (5340, "89 min"), (7500, "2 h 05 min"),
])  # fmt: skip
def test_durations_read_as_a_person_would_say_them(seconds, text):
    assert format_duration(seconds) == text


# ---------------------------------------------------------------------------------------------------- phantoms


def test_phantoms_show_a_case_bar_on_a_terminal(monkeypatch, capsys, tmp_path):
    terminal = on_terminal(monkeypatch)
    generate_brats(tmp_path / "a", cases=2, size=(16, 16, 16), seed=0, workers=1)
    drawn = terminal.getvalue()
    assert "brats phantoms: 100%" in drawn and "2/2" in drawn, drawn
    printed = capsys.readouterr().out
    assert "[1/2]" not in printed and "wrote 2 cases" in printed, "the bar replaces the per-case lines"


def test_phantoms_print_lines_under_ci_and_nothing_when_quiet(capsys, monkeypatch, tmp_path):
    terminal = on_terminal(monkeypatch)
    monkeypatch.setenv("CI", "true")
    generate_brats(tmp_path / "a", cases=2, size=(16, 16, 16), seed=0, workers=1)
    assert terminal.getvalue() == ""
    assert "[2/2] BraTS2021_00001" in capsys.readouterr().out, "a log keeps one line per case"
    monkeypatch.delenv("CI")
    generate_brats(tmp_path / "b", cases=2, size=(16, 16, 16), seed=0, workers=1, verbose=False)
    assert terminal.getvalue() == "" and capsys.readouterr().out == ""
