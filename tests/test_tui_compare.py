"""Pilot tests of comparing runs: marking them in the Runs list, the Compare screen, its 80x24 snapshot."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_fixtures import write_report
from tui_fixtures import SIZE, assert_snapshot, make_app, make_run, screen_text, wait_for

from engine.runs.events import EventWriter
from engine.runs.protocol import Run
from tui.screens.compare import CompareScreen
from tui.screens.runs import RunsScreen
from tui.widgets.plot import BraillePlot

pytestmark = pytest.mark.asyncio


def two_runs(workspace: Path) -> None:
    """An evaluated LoRA run and a later QLoRA run at another learning rate, never evaluated; and a third."""
    a = make_run(workspace, run_id="20250101-090000-lora-0001", state="completed", steps=40, max_steps=40)
    write_report(a)
    b = make_run(workspace, run_id="20250101-100000-qlora-0002", state="completed", steps=60, max_steps=60,
                 decay=12)
    b.config_path.write_text(a.config_path.read_text().replace("method: lora", "method: qlora")
                             + "learning_rate: 0.0003\n")
    make_run(workspace, run_id="20250101-110000-other-0003", state="completed", steps=5, max_steps=5)


async def open_compare(pilot, app) -> CompareScreen:
    await wait_for(pilot, lambda: len(app.screen.rows) == 3)
    await pilot.press("j")  # past the newest run, to the QLoRA one
    await pilot.press("space", "space")  # marks it, moves down, marks the LoRA run
    await pilot.press("c")
    await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.comparison is not None)
    return app.screen


async def test_marking_two_runs_opens_the_comparison(snap_ws):
    two_runs(snap_ws)
    app = make_app(snap_ws, mode="runs")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: len(app.screen.rows) == 3)
        await pilot.press("c")  # nothing marked: a hint, no screen
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("space")
        await pilot.press("k", "space", "k")  # unmarks the first again, back to the top
        assert app.screen.marked == set()
        screen = await open_compare(pilot, app)
        ids = [e["run_id"] for e in screen.comparison["runs"]]
        assert ids == ["20250101-090000-lora-0001", "20250101-100000-qlora-0002"]  # oldest first: A, B
        loss = screen.query_one("#cmp-loss", BraillePlot)
        assert [(s.marker, s.label, len(s.points)) for s in loss.series] == [("A", "lora-0001", 40),
                                                                              ("B", "qlora-0002", 60)]
        assert [s.marker for s in screen.query_one("#cmp-eval", BraillePlot).series] == ["A", "B"]
        text = screen_text(app)
        assert "A  20250101-090000-lora-0001" in text and "B  20250101-100000-qlora-0002" in text
        assert "A lora-0001  B qlora-0002" in text  # the plot's legend: markers, not colours
        await pilot.press("pagedown")  # the metrics list the cost of each answer too: one page down is enough
        text = screen_text(app)
        assert [line.split() for line in text.splitlines() if line.split()[:1] == ["learning_rate"]] == [
            ["learning_rate", "(not", "set)", "0.0003"]]
        assert "95.0%" in text and "1 of 8" in text and "no report" in text
        await pilot.press("pagedown")
        assert "no evaluation report: `tunedeck eval 20250101-100000-qlora-0002" in screen_text(app)
        writer = EventWriter(Run(snap_ws / "runs" / ids[1]).events_path)  # B trains on
        writer.write("log", 61, loss=0.25)
        writer.close()
        await pilot.press("R")
        await wait_for(pilot, lambda: screen.comparison["runs"][1]["curves"]["loss"][-1] == [61, 0.25])
        assert len(loss.series[1].points) == 61
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen) and app.screen.marked == {ids[0], ids[1]}


async def test_compare_snapshot(snap_ws):
    two_runs(snap_ws)
    app = make_app(snap_ws, mode="runs")
    async with app.run_test(size=SIZE) as pilot:
        await open_compare(pilot, app)
        assert_snapshot(app, "compare_two_runs")
