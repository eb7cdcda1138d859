"""Drive the real tunedeck app headless (Textual's Pilot) through a script of keystrokes and say,
after each one, what the screen shows as committed: one JSON line per keystroke on stdout.

    python tests/faults/app_driver.py data DATASET KEYS.json [--lockstep]
    python tests/faults/app_driver.py ab WORKSPACE KEYS.json [--lockstep]

KEYS.json is a list of Pilot key names. Line 0 is the state once the dataset (or the evaluation
report and its A/B store) is loaded, line k the state after key k. After the last key it prints
{"done": true} and keeps the app open until it is killed: the fault suite (app_faults.py) sends
SIGKILL after a random number of lines, then reopens the store and the app to compare. With
--lockstep it reads one line from stdin before each key, so the parent decides when each
keystroke starts: a kill then lands either between two keystrokes or inside one.

A state line holds, for the Data screen, every review the screen holds (content hash -> verdict,
note, edit) and the example shown; for the Eval screen, every judgement its store holds (pair id
-> choice) and the pair shown. It also checks that what is drawn agrees with that state (the
verdict of the example shown, the verdict counts or judged count in the header): a line whose
drawing disagrees carries "inconsistent".
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Awaitable, Callable

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
for path in (str(ROOT), str(TESTS)):
    if path not in sys.path:
        sys.path.insert(0, path)

SIZE = (80, 24)


def _text(screen, selector: str) -> str:
    from textual.widgets import Static

    return str(screen.query_one(selector, Static).content)


# ---- the Data screen ------------------------------------------------------------

def data_state(app) -> dict:
    from tui.screens.data import DataScreen

    screen = next(s for s in app.screen_stack if isinstance(s, DataScreen))
    session = screen.session
    reviews = {key: {"verdict": r.get("verdict"), "note": r.get("note"), "edit": r.get("edit")}
               for key, r in session.reviews.items() if r and any(r.values())}
    index = session.current()
    state = {"reviews": reviews, "current": session.hashes[index] if index is not None else None,
             "index": index, "filter": session.filter, "modal": type(app.screen).__name__}
    problems = []
    counts = re.search(r"✓(\d+) ✗(\d+) ~(\d+)", _text(screen, "#data-head"))
    want = [sum(1 for r in reviews.values() if r["verdict"] == v) for v in ("good", "bad", "skip")]
    if counts is None or [int(c) for c in counts.groups()] != want:
        problems.append(f"head counts {counts and counts.group(0)!r}, reviews say {want}")
    if index is not None:
        shown = re.search(r"\[(GOOD|BAD|SKIP|unreviewed)\]", _text(screen, "#data-pos"))
        verdict = (reviews.get(session.hashes[index]) or {}).get("verdict")
        if shown is None or shown.group(1) != (verdict.upper() if verdict else "unreviewed"):
            problems.append(f"example {index} drawn {shown and shown.group(1)!r}, review says {verdict!r}")
    if problems:
        state["inconsistent"] = problems
    return state


async def data_loaded(pilot) -> None:
    from tui.screens.data import DataScreen

    for _ in range(1000):
        screen = pilot.app.screen
        if isinstance(screen, DataScreen) and screen.session is not None:
            await pilot.pause()
            return
        await pilot.pause(0.01)
    raise RuntimeError("the dataset never loaded")


def data_app(dataset: Path):
    from tui_fixtures import no_gpu_snapshot

    from tui.app import TunedeckApp

    return TunedeckApp(dataset.parent / "ws", mode="data", data=dataset, gpu_sampler=no_gpu_snapshot)


# ---- the Eval screen's blind A/B review -------------------------------------------

def ab_state(app) -> dict:
    from tui.screens.eval import EvalScreen

    screen = next(s for s in app.screen_stack if isinstance(s, EvalScreen))
    judgements = screen.store.judgements() if screen.store is not None else {}
    state = {"judgements": judgements, "pair": screen.pair.id if screen.pair else None, "view": screen.view,
             "modal": type(app.screen).__name__}
    progress = _text(screen, "#ab-progress")
    judged = re.match(r"(\d+)/(\d+) judged", progress)
    if screen.store is not None and (judged is None or int(judged.group(1)) != len(judgements)):
        state["inconsistent"] = [f"progress {progress[:40]!r}, store holds {len(judgements)} judgements"]
    return state


async def ab_loaded(pilot) -> None:
    from tui.screens.eval import EvalScreen

    for _ in range(1000):
        screen = pilot.app.screen
        if isinstance(screen, EvalScreen) and screen.loaded:
            await pilot.pause()
            return
        await pilot.pause(0.01)
    raise RuntimeError("the evaluation report never loaded")


def ab_app(workspace: Path):
    from tui_fixtures import no_gpu_snapshot

    from tui.app import TunedeckApp

    return TunedeckApp(workspace, mode="eval", gpu_sampler=no_gpu_snapshot, gpu_interval=10.0)


MODES = {"data": (data_app, data_loaded, data_state), "ab": (ab_app, ab_loaded, ab_state)}


async def drive(mode: str, target: Path, keys: list[str], emit: Callable[[dict], None],
                hold: bool = False, go: Callable[[], Awaitable[None]] | None = None) -> None:
    """Open the app on `target`, emit the loaded state, then press each key and emit the state after it.
    `go`, when given, is awaited before each key (the app stays live meanwhile); with `hold`, stay open
    after the last key until killed."""
    make, loaded, state = MODES[mode]
    app = make(Path(target))
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        emit(state(app))
        for key in keys:
            if go is not None:
                await go()
            await pilot.press(key)
            await pilot.pause()
            emit(state(app))
        if hold:
            emit({"done": True})
            while True:
                await asyncio.sleep(3600)


def main(argv: list[str]) -> None:
    mode, target, keys_file = argv[:3]
    lockstep = "--lockstep" in argv[3:]

    def emit(state: dict) -> None:
        sys.stdout.write(json.dumps(state) + "\n")
        sys.stdout.flush()

    async def go() -> None:
        if not await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline):
            raise SystemExit(0)  # the parent went away

    asyncio.run(drive(mode, Path(target), json.loads(Path(keys_file).read_text()), emit, hold=True,
                      go=go if lockstep else None))


if __name__ == "__main__":
    main(sys.argv[1:])
