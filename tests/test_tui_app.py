"""Pilot tests of the shell and the GPU screen: keys pressed, what changed asserted; 80x24 snapshots."""

from __future__ import annotations

import pytest
from tui_fixtures import SIZE, assert_snapshot, make_app, no_gpu_snapshot, one_gpu_snapshot, screen_text, wait_for

from tui.app import TunedeckApp
from tui.screens.error import ErrorScreen
from tui.screens.gpu import GpuScreen
from tui.screens.keys import KeysScreen

pytestmark = pytest.mark.asyncio


async def test_number_keys_switch_modes(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        assert app.current_mode == "gpu"
        for key, mode, title in (("2", "plan", "Plan"), ("3", "data", "Data"), ("4", "runs", "Runs"),
                                 ("5", "eval", "Eval"), ("6", "chat", "Chat"), ("1", "gpu", "GPU")):
            await pilot.press(key)
            await pilot.pause()
            assert app.current_mode == mode
            assert f"[{key} {title}]" in screen_text(app).splitlines()[0]


async def test_start_mode_is_honoured_and_checked(tmp_path):
    app = make_app(tmp_path, mode="data")
    async with app.run_test(size=SIZE):
        assert app.current_mode == "data"
    with pytest.raises(ValueError):
        make_app(tmp_path, mode="nope")


async def test_no_gpu_panel_and_host(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "Host · box" in screen_text(app))
        text = screen_text(app)
        assert "No NVIDIA GPU" in text and "no NVIDIA driver found" in text
        assert "training with the CPU" in text
        assert "Host · box" in text and "123.4 GiB free" in text and "of 8 CPUs" in text
        assert_snapshot(app, "gpu_no_gpu")


async def test_gpu_card_shows_fields_processes_and_gaps(tmp_path):
    app = make_app(tmp_path, sampler=one_gpu_snapshot)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "alice" in screen_text(app))
        text = screen_text(app)
        assert "GPU 0 · NVIDIA A100-SXM4-80GB" in text
        assert "40.0/80.0 GiB  50%" in text and "63%" in text and "power 312/400 W" in text
        assert "compute 8.0  bf16 yes" in text
        assert "alice" in text and "pid not visible here" in text
        assert "unavailable: fan_pct (Not Supported)" in text
        assert_snapshot(app, "gpu_one_gpu")


async def test_refresh_interval_keys(tmp_path):
    app = TunedeckApp(tmp_path, gpu_sampler=no_gpu_snapshot)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, GpuScreen) and screen.interval == 1.0
        await pilot.press("plus")
        assert screen.interval == 2.0 and "refresh every 2 s" in screen_text(app)
        for _ in range(5):
            await pilot.press("minus")
        assert screen.interval == 0.5  # clamped at the fastest
        samples = screen.samples
        await wait_for(pilot, lambda: screen.samples >= samples + 2)  # the timer really runs at 0.5 s
        await pilot.press("r")


async def test_sampling_pauses_while_another_mode_shows(tmp_path):
    app = TunedeckApp(tmp_path, gpu_sampler=no_gpu_snapshot)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await pilot.press("minus")  # 0.5 s
        await pilot.press("2")
        await pilot.pause(0.3)
        before = screen.samples
        await pilot.pause(1.2)
        assert screen.samples == before
        await pilot.press("1")
        await wait_for(pilot, lambda: screen.samples > before)


async def test_gpu_history_sparklines_grow(tmp_path):
    app = make_app(tmp_path, sampler=one_gpu_snapshot)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.screen.samples == 1)
        for n in (2, 3):
            await pilot.press("r")
            await wait_for(pilot, lambda: app.screen.samples == n)
        assert len(app.screen.history.get("gpu0.util")) == 3
        assert "util ▆▆▆" in screen_text(app)


async def test_keys_screen_lists_the_current_screens_keys(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, KeysScreen)
        text = screen_text(app)
        assert "Slower refresh" in text and "Scroll down" in text  # hidden vim aliases listed too
        assert_snapshot(app, "keys_gpu")
        await pilot.press("escape")
        await pilot.press("4", "f1")
        await pilot.pause()
        assert isinstance(app.screen, KeysScreen)
        text = screen_text(app)
        assert "New run" in text and "Resume" in text and "Slower refresh" not in text


async def test_command_palette_lists_every_action(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE):
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for title in ("Go to GPU", "Go to Runs", "Slower refresh", "Faster refresh", "Refresh now",
                      "Scroll down", "Keys", "Quit"):
            assert title in titles
        assert titles.count("Keys") == 1


async def test_palette_runs_screen_actions(tmp_path):
    app = TunedeckApp(tmp_path, gpu_sampler=no_gpu_snapshot)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"slower")
        await wait_for(pilot, lambda: "Slower refresh" in screen_text(app))
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.interval == 2.0)
        assert app.screen is screen


async def test_worker_failure_lands_in_the_error_modal(tmp_path):
    def broken(workspace):
        raise PermissionError("/dev/nvidia0: permission denied")

    app = TunedeckApp(tmp_path, gpu_sampler=broken)  # 1 s refresh: the failure repeats
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen))
        await pilot.pause(1.3)
        assert sum(isinstance(s, ErrorScreen) for s in app.screen_stack) == 1
        text = screen_text(app)
        assert "GPU sampling failed" in text and "permission denied" in text
        assert "What to do: Check that you own" in text
        assert_snapshot(app, "error_modal")
        await pilot.press("enter")
        await pilot.pause(1.3)
        assert isinstance(app.screen, GpuScreen)  # sampling stopped: no new modal every second
        assert "r to retry" in screen_text(app)
        app.gpu_sampler = no_gpu_snapshot
        await pilot.press("r")
        await wait_for(pilot, lambda: "No NVIDIA GPU" in screen_text(app))
        assert not app.screen.failed


async def test_quit_key(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert app.return_code == 0 and not app.is_running
