"""The app rings the bell and shows a toast when a run ends or warns, whatever screen is open; the Runs list
marks endings not yet seen until the run is opened, and the mark stays cleared after a restart (tui.watch)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from engine_runs import dump, events, kill, start
from tui_fixtures import SIZE, make_run, no_gpu_snapshot, screen_text, wait_for, write_status

from engine.runs.events import EventWriter
from tui.app import TunedeckApp
from tui.screens.gpu import GpuScreen
from tui.screens.monitor import MonitorScreen
from tui.screens.runs import RunsScreen, run_row

pytestmark = pytest.mark.asyncio


class RecordingApp(TunedeckApp):
    """The real app, recording each bell and toast it gives."""

    WATCH_SECONDS = 0.2

    def __init__(self, workspace, **kwargs):
        super().__init__(workspace, gpu_sampler=no_gpu_snapshot, gpu_interval=10.0, **kwargs)
        self.bells = 0
        self.toasts: list[tuple[str, str]] = []

    def bell(self) -> None:
        self.bells += 1
        super().bell()

    def notify(self, message, *, severity="information", **kwargs) -> None:
        self.toasts.append((str(message), severity))
        super().notify(message, severity=severity, **kwargs)


def toasts_about(app: RecordingApp, run_id: str) -> list[tuple[str, str]]:
    return [t for t in app.toasts if run_id in t[0]]


async def test_a_real_run_ending_rings_and_toasts_on_another_screen_and_is_marked_until_opened(
        write_config, workspace, tiny_project, tmp_path):
    data = tmp_path / "train.jsonl"  # two bad rows: two bad_row warnings, one toast
    data.write_text((tiny_project / "train.jsonl").read_text() + "not json\n[1, 2]\n")
    app = RecordingApp(workspace)
    async with app.run_test(size=SIZE) as pilot:
        assert isinstance(app.screen, GpuScreen)
        await wait_for(pilot, lambda: app.run_watch.endings is not None)  # the first poll: nothing to announce
        run, proc = start(write_config(data=str(data), max_steps=4, save_steps=4, eval_steps=4), workspace)
        try:
            await wait_for(pilot, lambda: any("completed" in text for text, _ in toasts_about(app, run.id)),
                           timeout=180)
        finally:
            if proc.poll() is None:
                kill(proc)
        assert run.status()["state"] == "completed", dump(run)
        assert toasts_about(app, run.id) == [
            (f"Run {run.id}: bad_row: {next_bad_row(run)}", "warning"),
            (f"Run {run.id} completed at step 4.", "information")]
        assert app.bells == 2 and isinstance(app.screen, GpuScreen)
        assert app.run_watch.poll() == []  # announced once

        await pilot.press("4")
        runs = app.screen
        assert isinstance(runs, RunsScreen)
        await wait_for(pilot, lambda: runs.rows and runs.rows[0]["unseen"])
        assert "•completed" in screen_text(app) and "not seen yet" in screen_text(app)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.view is not None)
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is runs and runs.rows and not runs.rows[0]["unseen"])
        assert "•completed" not in screen_text(app)
    assert run_row(run)["unseen"] is False  # recorded in the run directory: a restarted app knows


def next_bad_row(run) -> str:
    return next(e["message"] for e in events(run) if e["type"] == "warning" and e["code"] == "bad_row")


async def test_an_engine_that_dies_is_announced_as_crashed_and_old_endings_are_not(tmp_path):
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        going = make_run(tmp_path, name="going", pid=engine.pid, warnings=False)
        ended = make_run(tmp_path, name="ended", state="completed", steps=100)
        app = RecordingApp(tmp_path, mode="data")
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.run_watch.endings is not None)
            # the engine as it writes a warning, then its end: a kill -9, which it cannot report
            writer = EventWriter(going.events_path)
            writer.write("warning", 41, code="divergence", message="loss 9 is 4x its minimum")
            writer.write("warning", 42, code="divergence", message="loss 10 is 5x its minimum")
            writer.close()
            await wait_for(pilot, lambda: toasts_about(app, going.id))
            engine.send_signal(signal.SIGKILL)
            engine.wait()
            await wait_for(pilot, lambda: len(toasts_about(app, going.id)) == 2)
            warning, crashed = toasts_about(app, going.id)
            assert warning == (f"Run {going.id} step 41: divergence: loss 9 is 4x its minimum", "warning")
            assert crashed[0].startswith(f"Run {going.id} crashed at step 40: engine (pid {engine.pid}) is gone")
            assert crashed[1] == "error" and app.bells == 2
            assert not toasts_about(app, ended.id)  # it ended before the app opened: marked, not announced
            assert run_row(ended)["unseen"] and run_row(going)["unseen"]

            # resumed and ended again: a new ending of the same run is announced once more
            write_status(ended, state="stopped", step=100, max_steps=200, pid=engine.pid + 1)
            await wait_for(pilot, lambda: toasts_about(app, ended.id))
            assert toasts_about(app, ended.id) == [(f"Run {ended.id} stopped at step 100; r on Runs resumes it.",
                                                   "warning")]
    finally:
        if engine.poll() is None:
            engine.kill()
