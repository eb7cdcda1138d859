"""Pilot tests of the Runs list and the live monitor against run directories on disk."""

from __future__ import annotations

import json
import time

import pytest
from tui_fixtures import SIZE, assert_snapshot, dead_pid, make_app, make_run, screen_text, wait_for, write_status

from engine.runs.events import EventWriter
from engine.runs.protocol import Run
from tui.screens.monitor import MonitorScreen
from tui.screens.prompt import Confirm, PathPrompt
from tui.screens.runs import RunsScreen

pytestmark = pytest.mark.asyncio


@pytest.fixture(autouse=True)
def fast_monitor(monkeypatch):
    monkeypatch.setattr(MonitorScreen, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(MonitorScreen, "STATUS_SECONDS", 0.1)


def monitor(app) -> MonitorScreen:
    assert isinstance(app.screen, MonitorScreen), type(app.screen)
    return app.screen


async def caught_up(pilot, app) -> None:
    await wait_for(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.view is not None
                   and app.screen.view.events > 0 and not app.screen.view.replaying)


async def test_runs_list_shows_each_run_and_judges_crashes(snap_ws):
    make_run(snap_ws, run_id="20250101-090000-alpha-0001")
    make_run(snap_ws, run_id="20250101-100000-done-0002", state="completed", steps=100)
    make_run(snap_ws, run_id="20250101-110000-dead-0003", pid=dead_pid(), heartbeat=time.time() - 60)
    app = make_app(snap_ws, mode="runs")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: len(app.screen.rows) == 3)
        states = {r["id"].split("-")[2]: r["state"] for r in app.screen.rows}
        assert states == {"alpha": "running", "done": "completed", "dead": "crashed"}
        text = screen_text(app)
        assert "40/100" in text and "SmolLM2-13…" in text and "lora" in text
        assert {r["age"] for r in app.screen.rows} == {"2h"}  # the last column; at 80 wide it scrolls into view
        # Endings nobody has opened yet are marked (tui.watch); a running run is not.
        assert "•crashed" in text and "•completed" in text and "•running" not in text
        # Newest first; the detail of the highlighted (crashed) run says how to resume.
        assert app.screen.selected()["id"].endswith("dead-0003")
        assert "is gone" in text and "r resume" in text
        await pilot.press("j")
        assert app.screen.selected()["id"].endswith("done-0002")
        await pilot.press("k")
        assert app.screen.selected()["id"].endswith("dead-0003")


async def test_runs_list_snapshot(snap_ws):
    make_run(snap_ws, run_id="20250101-090000-alpha-0001")
    make_run(snap_ws, run_id="20250101-100000-oom-0002", state="failed", steps=3,
             log_lines=("CUDA out of memory",))
    write_status(Run(snap_ws / "runs" / "20250101-100000-oom-0002"), state="failed", step=3, max_steps=100,
                 error="CUDA out of memory: try a smaller batch with gradient accumulation")
    app = make_app(snap_ws, mode="runs")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: len(app.screen.rows) == 2)
        # The detail pane fills after the list; under load it can lag a frame behind.
        await wait_for(pilot, lambda: "try a smaller batch" in screen_text(app))
        assert_snapshot(app, "runs_list")


async def test_empty_workspace_says_how_to_start(tmp_path):
    app = make_app(tmp_path, mode="runs")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        assert "No runs in" in screen_text(app) and "tunedeck train CONFIG" in screen_text(app)
        await pilot.press("enter")
        assert isinstance(app.screen, RunsScreen)


async def test_list_follows_new_runs(tmp_path, monkeypatch):
    monkeypatch.setattr("tui.screens.runs.REFRESH_SECONDS", 0.1)
    app = make_app(tmp_path, mode="runs")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        assert app.screen.rows == []
        make_run(tmp_path, name="late")
        await wait_for(pilot, lambda: len(app.screen.rows) == 1)


async def test_enter_attaches_and_escape_returns(tmp_path):
    make_run(tmp_path, steps=40)
    app = make_app(tmp_path, mode="runs")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: len(app.screen.rows) == 1)
        await pilot.press("enter")
        await caught_up(pilot, app)
        text = screen_text(app)
        assert "RUNNING" in text and "step 40/100" in text and "40%" in text
        assert "850 tok/s" in text and "ETA 30s" in text
        assert "grad_spike" in text and "loading model" in text
        assert "eval ●" in text  # eval points drawn as markers on the loss plot
        await pilot.press("4")  # number keys still work while attached
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)


async def test_attach_param_opens_the_monitor_and_follows_live(snap_ws):
    run = make_run(snap_ws, run_id="20250101-090000-live-0001", steps=40)
    app = make_app(snap_ws, attach=run.id)
    async with app.run_test(size=SIZE) as pilot:
        await caught_up(pilot, app)
        assert app.current_mode == "runs"
        app.clear_notifications()
        await pilot.pause()
        assert_snapshot(app, "monitor_running")
        seen = monitor(app).view.events
        w = EventWriter(run.events_path)
        w.write("log", 41, loss=0.123, learning_rate=1e-4, grad_norm=3.0, tokens_per_second=900.0,
                cuda_memory_gb=7.5)
        w.write("warning", 41, code="divergence", message="loss 4x above its running minimum")
        w.close()
        write_status(run, state="running", step=41, max_steps=100)
        await wait_for(pilot, lambda: monitor(app).view.events == seen + 2)
        await wait_for(pilot, lambda: "step 41/100" in screen_text(app))
        text = screen_text(app)
        assert "loss 0.123" in text and "grad norm 3.000" in text and "GPU 7.5 GiB" in text
        assert "divergence" in text and "2 warnings" in text


async def test_commands_are_sent_and_acknowledged(tmp_path):
    run = make_run(tmp_path, steps=10)
    app = make_app(tmp_path, attach=str(run.path))
    async with app.run_test(size=SIZE) as pilot:
        await caught_up(pilot, app)
        await pilot.press("p")
        (cmd_file,) = run.control_dir.glob("cmd-*.json")
        cmd = json.loads(cmd_file.read_text())
        assert cmd["command"] == "pause"
        await pilot.pause()
        assert "pause sent, awaiting ack" in screen_text(app)
        # The engine's side: acknowledge, retire the file, report paused.
        w = EventWriter(run.events_path)
        w.write("command_ack", 10, command="pause", id=cmd["id"])
        w.close()
        write_status(run, state="paused", step=10, max_steps=100)
        await wait_for(pilot, lambda: "pause acknowledged at step 10" in screen_text(app))
        assert not monitor(app).pending
        await wait_for(pilot, lambda: "PAUSED" in screen_text(app))
        await pilot.press("p")  # paused, so p now resumes
        commands = sorted(json.loads(p.read_text())["command"] for p in run.control_dir.glob("cmd-*.json"))
        assert commands == ["pause", "resume"]
        for key, command in (("c", "checkpoint"), ("e", "eval"), ("s", "stop")):
            await pilot.press(key)
            sent = [json.loads(p.read_text())["command"] for p in run.control_dir.glob("cmd-*.json")]
            assert command in sent


async def test_stop_now_asks_first(tmp_path):
    run = make_run(tmp_path, steps=5)
    app = make_app(tmp_path, attach=run.id)
    async with app.run_test(size=SIZE) as pilot:
        await caught_up(pilot, app)
        await pilot.press("S")
        await pilot.pause()
        assert isinstance(app.screen, Confirm)
        await pilot.press("n")
        await pilot.pause()
        assert list(run.control_dir.glob("cmd-*.json")) == []
        await pilot.press("S")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        (cmd_file,) = run.control_dir.glob("cmd-*.json")
        assert json.loads(cmd_file.read_text())["command"] == "stop_now"


async def test_crashed_run_shows_crashed_with_log_and_refuses_commands(snap_ws):
    run = make_run(snap_ws, run_id="20250101-090000-dead-0001", pid=dead_pid(), heartbeat=time.time() - 120,
                   log_lines=("step 40 loss 0.95", "Killed"))
    app = make_app(snap_ws, attach=run.id)
    async with app.run_test(size=SIZE) as pilot:
        await caught_up(pilot, app)
        text = screen_text(app)
        assert "CRASHED" in text and "is gone" in text and "Killed" in text
        assert "ETA -" in text
        await pilot.press("s")
        await pilot.pause()
        assert list(run.control_dir.glob("cmd-*.json")) == []
        assert any("commands reach a running engine only" in n.message for n in app._notifications)


async def test_failed_run_snapshot(snap_ws):
    run = make_run(snap_ws, run_id="20250101-090000-oom-0001", steps=12, warnings=False,
                   log_lines=("loading model", "torch.OutOfMemoryError: CUDA out of memory"))
    w = EventWriter(run.events_path)
    w.write("error", 12, message="CUDA out of memory at batch size 16",
            advice="batch 4 with gradient accumulation 4, or gradient checkpointing, or QLoRA")
    w.close()
    write_status(run, state="failed", step=12, max_steps=100, error="CUDA out of memory at batch size 16")
    app = make_app(snap_ws, attach=run.id)
    async with app.run_test(size=SIZE) as pilot:
        await caught_up(pilot, app)
        text = screen_text(app)
        assert "FAILED" in text and "gradient accumulation" in text
        assert_snapshot(app, "monitor_failed")
        await pilot.press("l")  # the log takes the whole body
        await pilot.pause()
        assert "torch.OutOfMemoryError" in screen_text(app) and "loss" not in screen_text(app).splitlines()[3]


async def test_resume_and_new_run_call_the_launcher(tmp_path, monkeypatch):
    import engine.runs.launch

    crashed = make_run(tmp_path, name="dead", pid=dead_pid(), heartbeat=time.time() - 120)
    calls = []
    monkeypatch.setattr(engine.runs.launch, "resume_detached", lambda run: calls.append(("resume", run.id)) or run)

    def fake_start(config_path, workspace):
        calls.append(("start", config_path.name))
        return make_run(workspace, name="fresh", steps=1)

    monkeypatch.setattr(engine.runs.launch, "start_detached", fake_start)
    app = make_app(tmp_path, mode="runs")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: len(app.screen.rows) == 1)
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, MonitorScreen))
        assert calls == [("resume", crashed.id)]
        await pilot.press("escape", "n")
        await pilot.pause()
        assert isinstance(app.screen, PathPrompt)
        await pilot.press(*"cfg.yaml", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, MonitorScreen) and "fresh" in app.screen.run.id)
        assert calls[-1] == ("start", "cfg.yaml")


async def test_run_with_damaged_status_shows_why_and_resumes(tmp_path, monkeypatch):
    """A garbage status.json (fault suite: damaged run directories) reads `unknown`, says so, and can
    be resumed: spawn itself refuses when an engine still holds the run."""
    import engine.runs.launch

    run = make_run(tmp_path, name="damaged", steps=5)
    run.status_path.write_bytes(b"\x00garbage")
    calls = []
    monkeypatch.setattr(engine.runs.launch, "resume_detached", lambda r: calls.append(r.id) or r)
    app = make_app(tmp_path, mode="runs")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: len(app.screen.rows) == 1)
        assert app.screen.rows[0]["state"] == "unknown"
        assert "status.json is damaged" in screen_text(app)
        await pilot.press("enter")
        await caught_up(pilot, app)
        assert "UNKNOWN" in screen_text(app) and "status.json is damaged" in screen_text(app)
        await pilot.press("r")
        await wait_for(pilot, lambda: calls == [run.id])


async def test_resume_refused_for_a_running_run(tmp_path, monkeypatch):
    import engine.runs.launch

    make_run(tmp_path)
    monkeypatch.setattr(engine.runs.launch, "resume_detached", lambda run: pytest.fail("must not resume"))
    app = make_app(tmp_path, mode="runs")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: len(app.screen.rows) == 1)
        await pilot.press("r")
        await pilot.pause(0.2)
        assert isinstance(app.screen, RunsScreen)
        assert any("only a stopped, failed, crashed or unknown run resumes" in n.message for n in app._notifications)


async def test_launch_failure_shows_the_error_modal(tmp_path, monkeypatch):
    import engine.runs.launch
    from engine.runs.protocol import RunError
    from tui.screens.error import ErrorScreen

    def refuse(config_path, workspace):
        raise RunError(f"{config_path}: no such config file; write one with `tunedeck plan`")

    monkeypatch.setattr(engine.runs.launch, "start_detached", refuse)
    app = make_app(tmp_path, mode="runs")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n", *"missing.yaml", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen))
        assert "no such config file" in screen_text(app) and "starting the run failed" in screen_text(app)
