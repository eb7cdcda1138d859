"""DESIGN section 1: the app never imports torch & co. Checked in a fresh interpreter, since
other tests in this pytest process may have imported torch already."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import asyncio, sys, tempfile, time
    from pathlib import Path
    sys.path.insert(0, "tests")
    from tui_fixtures import HEAVY_MODULES, make_run
    from tui.app import TunedeckApp
    from tui.screens.monitor import MonitorScreen

    async def visit(ws):
        run = make_run(ws, steps=30)
        app = TunedeckApp(ws)  # the real GPU probe, the real engine modules
        async with app.run_test(size=(80, 24)) as pilot:
            visited = []
            for key in "12345":
                await pilot.press(key)
                await pilot.pause(0.2)
                visited.append(type(app.screen).__name__)
            await pilot.press("4")
            for _ in range(100):
                if app.screen.rows:
                    break
                await pilot.pause(0.05)
            await pilot.press("enter")  # attach to the run
            for _ in range(100):
                if isinstance(app.screen, MonitorScreen) and app.screen.view and app.screen.view.events:
                    break
                await pilot.pause(0.05)
            visited.append(type(app.screen).__name__)
            await pilot.press("question_mark")
            await pilot.pause(0.1)
            visited.append(type(app.screen).__name__)
            await pilot.press("escape", "ctrl+p")
            await pilot.pause(0.2)
            visited.append(type(app.screen).__name__)
        return visited

    with tempfile.TemporaryDirectory() as ws:
        print(asyncio.run(visit(Path(ws))))
    print(sorted(m for m in sys.modules if m.split(".")[0] in HEAVY_MODULES))
""")


def test_visiting_every_screen_imports_no_heavy_module():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    visited, heavy = out.stdout.strip().splitlines()[-2:]
    assert visited == ("['GpuScreen', 'PlanScreen', 'DataScreen', 'RunsScreen', 'EvalScreen', "
                       "'MonitorScreen', 'KeysScreen', 'CommandPalette']")
    assert heavy == "[]"
