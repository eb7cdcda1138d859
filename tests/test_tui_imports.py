"""DESIGN section 1 at run time: starting the app with the real GPU probe and visiting every screen
(also a run's monitor, the keys screen, the command palette and the Compare screen) loads none of the
heavy libraries. It sees only the code paths this visit takes; test_import_contract.py checks every
module's imports statically. Run in a fresh interpreter, since other tests in this pytest process may
have imported torch already."""

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
    from heavy_libraries import HEAVY_LIBRARIES
    from tui_fixtures import make_run
    from tui.app import TunedeckApp
    from tui.screens.monitor import MonitorScreen

    async def visit(ws):
        run = make_run(ws, steps=30)
        make_run(ws, steps=10)  # a second run, to compare with the first
        app = TunedeckApp(ws)  # the real GPU probe, the real engine modules
        async with app.run_test(size=(80, 24)) as pilot:
            visited = []
            for key in "123456":
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
            await pilot.press("escape", "escape", "space", "space", "c")  # back to Runs, mark both, compare
            for _ in range(100):
                if getattr(app.screen, "comparison", None):
                    break
                await pilot.pause(0.05)
            visited.append(type(app.screen).__name__)
        return visited

    with tempfile.TemporaryDirectory() as ws:
        print(asyncio.run(visit(Path(ws))))
    print(sorted(m for m in sys.modules if m.split(".")[0] in HEAVY_LIBRARIES))
""")


def test_visiting_every_screen_imports_no_heavy_library():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    visited, heavy = out.stdout.strip().splitlines()[-2:]
    assert visited == ("['GpuScreen', 'PlanScreen', 'DataScreen', 'RunsScreen', 'EvalScreen', 'ChatScreen', "
                       "'MonitorScreen', 'KeysScreen', 'CommandPalette', 'CompareScreen']")
    assert heavy == "[]"
