"""The monitor against a real engine subprocess on a tiny model: attach mid-run, stop acknowledged,
and a killed engine shown as crashed. Uses the engine fixtures of tests/conftest.py and
the helpers of tests/engine_runs.py."""

from __future__ import annotations

import json
import signal
import time

import pytest
from engine_runs import dump, kill, start
from tui_fixtures import SIZE, make_app, screen_text

import engine.runs.protocol
from tui.screens.monitor import MonitorScreen

pytestmark = pytest.mark.asyncio


@pytest.fixture(autouse=True)
def fast_monitor(monkeypatch):
    monkeypatch.setattr(MonitorScreen, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(MonitorScreen, "STATUS_SECONDS", 0.2)


def log_events(run) -> int:
    return sum(1 for line in run.events_path.read_text().splitlines() if '"type": "log"' in line)


async def wait_engine(pilot, predicate, what: str, run, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            await pilot.pause()
            return
        await pilot.pause(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{dump(run)}\n{screen_text(pilot.app)}")


async def test_attach_mid_run_then_stop_is_acknowledged(write_config, workspace):
    run, proc = start(write_config(max_steps=5000, save_steps=1000, eval_steps=25, logging_steps=1), workspace)
    try:
        # Attach only once the engine has logged a few steps: the monitor must replay those first.
        deadline = time.time() + 90
        while (not run.events_path.exists() or log_events(run) < 5) and time.time() < deadline:
            time.sleep(0.1)
        assert log_events(run) >= 5, dump(run)
        app = make_app(workspace, attach=run.id)
        async with app.run_test(size=SIZE) as pilot:
            mon = app.screen
            assert isinstance(mon, MonitorScreen)
            await wait_engine(pilot, lambda: mon.view and mon.view.series["loss"] and mon.view.status.get(
                "state") == "running", "the monitor to show a running run with a loss curve", run)
            first_step = mon.view.series_last["loss"][0]
            assert mon.view.series["loss"][0][0] <= 5  # replayed from the first logged step
            await wait_engine(pilot, lambda: mon.view.series_last["loss"][0] > first_step, "live steps", run)
            # Waited for, not asserted at once: the engine may be in an evaluation (EVALUATING) just then.
            await wait_engine(pilot, lambda: "RUNNING" in screen_text(app) and "tok/s" in screen_text(app),
                              "the RUNNING badge with a throughput", run)
            await wait_engine(pilot, lambda: mon.view.series["eval_loss"], "an eval point", run)
            assert "eval ●" in screen_text(app)
            await pilot.press("s")
            await wait_engine(pilot, lambda: "acknowledged at step" in screen_text(app), "the stop ack", run)
            await wait_engine(pilot, lambda: mon.view.status.get("state") == "stopped", "state stopped", run)
            assert "STOPPED" in screen_text(app)
        proc.wait(timeout=60)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            kill(proc)


async def test_killed_engine_is_shown_as_crashed(write_config, workspace, monkeypatch):
    monkeypatch.setattr(engine.runs.protocol, "STALE_AFTER_SECONDS", 1.0)
    run, proc = start(write_config(max_steps=5000, save_steps=1000, eval_steps=1000), workspace)
    try:
        app = make_app(workspace, attach=run.id)
        async with app.run_test(size=SIZE) as pilot:
            mon = app.screen
            await wait_engine(pilot, lambda: mon.view and mon.view.series["loss"], "first steps", run)
            kill(proc, signal.SIGKILL)
            proc.wait(timeout=30)
            await wait_engine(pilot, lambda: "CRASHED" in screen_text(app), "the crash to show", run, timeout=20)
            text = screen_text(app)
            assert "is gone" in text and "ETA -" in text
            assert json.loads(run.status_path.read_text())["state"] == "running"  # judged, never rewritten
    finally:
        if proc.poll() is None:
            kill(proc)
