"""Pilot tests of the Diagnosis view: from the monitor of a real run that did not learn (the rendered
template shown, a named example opened on the Data screen, the next config written and accepted), and
from the Eval screen."""

from __future__ import annotations

import pytest
from engine_runs import dump, start, wait_final
from eval_fixtures import write_report
from tui_fixtures import SIZE, assert_snapshot, make_app, make_run, screen_text, wait_for

from engine.training.config import load_config
from tui.screens.data import DataScreen
from tui.screens.diagnosis import DiagnosisScreen
from tui.screens.eval import EvalScreen
from tui.screens.prompt import PathPrompt

pytestmark = pytest.mark.asyncio


@pytest.fixture
def flat_run(write_config, workspace):
    run, proc = start(write_config(max_steps=20, learning_rate=1e-9, eval_steps=1000, save_steps=1000), workspace)
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    return run


async def diagnosed(pilot, app) -> DiagnosisScreen:
    await wait_for(pilot, lambda: isinstance(app.screen, DiagnosisScreen) and app.screen.result is not None,
                   timeout=30)
    return app.screen


async def test_monitor_diagnosis_opens_the_named_example_and_writes_the_next_config(flat_run, workspace):
    app = make_app(workspace, attach=flat_run.id)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.5)
        await pilot.press("d")
        screen = await diagnosed(pilot, app)
        text = screen_text(app)
        assert f"Diagnosis of {flat_run.id} (completed): not_learning" in text
        assert "> [1] line 1 · 5 of 17 tokens trained" in text and "\u27e6" in text  # the trained text marked
        assert "config: learning_rate: 0.0002" in text

        await pilot.press("w")
        await wait_for(pilot, lambda: isinstance(app.screen, PathPrompt))
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.written is not None and screen.written.is_file())
        assert screen.written.parent == workspace / "configs"
        next_cfg = load_config(screen.written)  # as `tunedeck train` reads it
        assert next_cfg.learning_rate == 2e-4 and next_cfg.max_steps == 20

        await pilot.press("j", "o")  # the second named example: line 2 of the training file
        await wait_for(pilot, lambda: isinstance(app.screen, DataScreen) and app.screen.session is not None,
                       timeout=30)
        session = app.screen.session
        assert session.result.examples[session.current()].line == 2
        assert "line 2" in screen_text(app)


async def test_eval_screen_diagnoses_the_report_it_shows(tmp_path):
    run = make_run(tmp_path, run_id="20260105-101500-people-3f2a", state="completed", steps=40, max_steps=40)
    write_report(run)
    app = make_app(tmp_path, mode="eval")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, EvalScreen) and app.screen.loaded)
        await pilot.press("d")
        screen = await diagnosed(pilot, app)
        assert screen.MODE == "eval"
        text = screen_text(app)
        assert "Diagnosis of 20260105-101500-people-3f2a (completed): healthy" in text
        assert "1 of 8 probes regressed" in text  # below the finding's threshold, still reported
        assert_snapshot(app, "diagnosis_healthy")
        await pilot.press("escape")
        assert isinstance(app.screen, EvalScreen)
