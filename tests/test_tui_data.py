"""Pilot tests of the Data screen: review keys change the store, undo, filters, spot-check, bulk,
export and split (the command line's files); quitting and reopening resumes with every verdict; 80x24 snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tui_fixtures import assert_snapshot, no_gpu_snapshot, screen_text

from engine.data.load import content_hash, load_examples
from engine.data.review import ReviewStore
from engine.demo import write_demo_data
from tui.app import TunedeckApp
from tui.cli.main import main

SIZE = (80, 24)
pytestmark = pytest.mark.asyncio


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_demo_data(tmp_path / "demo")["train"]


def make_app(tmp_path, data=None) -> TunedeckApp:
    return TunedeckApp(tmp_path / "ws", mode="data", data=data, gpu_sampler=no_gpu_snapshot)


async def loaded(pilot):
    """Wait for the loading worker; the screen's review session once its dataset is shown."""
    for _ in range(250):
        screen = pilot.app.screen
        if getattr(screen, "session", None) is not None:
            await pilot.pause()
            return screen.session
        await pilot.pause(0.02)
    raise AssertionError(f"never loaded:\n{screen_text(pilot.app)}")


async def notified(pilot, start: str) -> None:
    """Wait for a notification that begins with `start` (a worker's result reached the screen)."""
    for _ in range(200):
        if any(n.message.startswith(start) for n in pilot.app._notifications):
            return
        await pilot.pause(0.05)
    raise AssertionError(f"no notification {start!r}: {[n.message for n in pilot.app._notifications]}")


def verdicts(path: Path) -> dict[int, str]:
    """Line -> verdict, read back from the SQLite store as another process would."""
    store = ReviewStore.for_dataset(path)
    reviews = store.all()
    store.close()
    return {ex.line: reviews[content_hash(ex.messages)]["verdict"] for ex in load_examples(path).examples
            if content_hash(ex.messages) in reviews and reviews[content_hash(ex.messages)]["verdict"]}


async def test_verdict_keys_store_and_undo_steps(tmp_path, dataset):
    async with make_app(tmp_path, dataset).run_test(size=SIZE) as pilot:
        session = await loaded(pilot)
        await pilot.press("g", "b", "s")
        assert verdicts(dataset) == {1: "good", 2: "bad", 3: "skip"}  # committed before the next one shows
        assert session.pos == 3 and "4/305" in screen_text(pilot.app)
        await pilot.press("u", "u")
        assert verdicts(dataset) == {1: "good"} and session.pos == 1
        await pilot.press("k", "k", "j")
        assert session.pos == 1


async def test_quit_and_reopen_resumes_with_every_verdict(tmp_path, dataset):
    async with make_app(tmp_path, dataset).run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("g", "g", "b", "j", "j")
    async with make_app(tmp_path, dataset).run_test(size=SIZE) as pilot:
        session = await loaded(pilot)
        assert session.pos == 5 and "6/305" in screen_text(pilot.app)
        assert "✓2 ✗1" in screen_text(pilot.app)
        await pilot.press("k", "k", "k")
        assert "[BAD]" in screen_text(pilot.app)


async def test_reopen_resumes_where_undo_search_or_spot_check_moved(tmp_path, dataset):
    """Found by the fault suite (app killed during data review): undo, a search and a spot-check
    moved to another example without storing it as the position, so reopening showed another one."""
    async def reopened_at() -> int:
        async with make_app(tmp_path, dataset).run_test(size=SIZE) as pilot:
            return (await loaded(pilot)).current()

    async with make_app(tmp_path, dataset).run_test(size=SIZE) as pilot:
        session = await loaded(pilot)
        await pilot.press("g", "g", "j", "u")  # undo goes back to the second example
        assert session.current() == 1
    assert await reopened_at() == 1
    async with make_app(tmp_path, dataset).run_test(size=SIZE) as pilot:
        session = await loaded(pilot)
        await pilot.press("slash", *"error", "enter")
        await pilot.pause()
        shown = session.current()
        assert shown not in (None, 1)
    assert await reopened_at() == shown
    async with make_app(tmp_path, dataset).run_test(size=SIZE) as pilot:
        session = await loaded(pilot)
        await pilot.press("r", "enter")
        await pilot.pause()
        shown = session.current()
        assert session.spot is not None and shown == session.spot[0]
    assert await reopened_at() == shown


async def test_next_flagged_filter_and_bulk_verdict(tmp_path, dataset):
    async with make_app(tmp_path, dataset).run_test(size=SIZE) as pilot:
        session = await loaded(pilot)
        await pilot.press("right_square_bracket")
        index = session.current()
        assert index in session.flags or index in session.duplicate_of
        await pilot.press("f")
        await pilot.press(*"ctrl+a".split(), "ctrl+k")
        await pilot.press(*"flagged", "enter")
        await pilot.pause()
        assert session.filter == "flagged" and len(session.view) == 6  # 4 linted, 3 duplicates, one both
        await pilot.press("B")
        await pilot.press("enter")  # the proposed verdict: bad
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        # 7 lines: the exact duplicate shares its content hash, so its kept twin gets the verdict too
        assert sorted(verdicts(dataset).values()) == ["bad"] * 7
        await pilot.press("u")
        assert verdicts(dataset) == {}


async def test_spot_check_note_edit_and_export(tmp_path, dataset):
    async with make_app(tmp_path, dataset).run_test(size=SIZE) as pilot:
        session = await loaded(pilot)
        await pilot.press("r", "enter")
        await pilot.pause()
        assert len(session.view) == 100 and "spot-check 0/100" in screen_text(pilot.app)
        first = session.current()
        await pilot.press("g")
        assert "spot-check 1/100" in screen_text(pilot.app)
        await pilot.press("k", "n", *"odd phrasing", "enter")
        await pilot.pause()
        assert ReviewStore.for_dataset(dataset).get(session.hashes[first])["note"] == "odd phrasing"
        await pilot.press("e")
        await pilot.pause()
        await pilot.press("ctrl+a", *"{}", "ctrl+s")
        await pilot.pause()
        edit = ReviewStore.for_dataset(dataset).get(session.hashes[first])["edit"]
        assert edit[-1]["content"].startswith("{}{") and "edited" in screen_text(pilot.app)
        out = tmp_path / "clean.jsonl"
        await pilot.press("x", "ctrl+a", "ctrl+k", *str(out), "enter")
        await notified(pilot, "Exported 299 examples")
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == 305 - 3 - 3  # error-severity flags and duplicates removed
        assert json.loads((tmp_path / "clean.jsonl.report.json").read_text())["removed"] == 6
        await pilot.press("S", "ctrl+a", "ctrl+k", *str(tmp_path / "splits"), "enter")
        await notified(pilot, "Split into")
    # The screen's export and split are the command line's, byte for byte (the CLI reads the same store).
    assert main(["data", "export", str(dataset), "--out", str(tmp_path / "cli.jsonl"), "--drop-rule", "errors",
                 "--drop-duplicates", "near"]) == 0
    assert (tmp_path / "cli.jsonl").read_bytes() == out.read_bytes()
    assert main(["data", "split", str(dataset), "--out", str(tmp_path / "cli-splits")]) == 0
    for name in ("train", "validation", "test"):
        split = f"{dataset.name.split('.')[0]}.{name}.jsonl"
        assert (tmp_path / "splits" / split).read_bytes() == (tmp_path / "cli-splits" / split).read_bytes()


async def test_snapshots(tmp_path, dataset):
    async with make_app(tmp_path).run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert_snapshot(pilot.app, "data_empty")
    async with make_app(tmp_path, dataset).run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.pause()
        await pilot.press("right_square_bracket", "b")
        await pilot.press("right_square_bracket")
        await pilot.pause()
        assert_snapshot(pilot.app, "data_flagged")
        await pilot.press("t")
        await pilot.pause()
        assert_snapshot(pilot.app, "data_template")


async def test_a_missing_dataset_is_the_engine_s_one_line_not_a_bug_report(tmp_path):
    from tui.screens.error import ErrorScreen

    app = make_app(tmp_path, data=tmp_path / "nope.jsonl")
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(250):
            if isinstance(app.screen, ErrorScreen):
                break
            await pilot.pause(0.02)
        error = app.screen
        assert isinstance(error, ErrorScreen), screen_text(app)
        assert error.message == f"data file not found: {tmp_path / 'nope.jsonl'}"  # no type, no source line
        assert "bug" not in error.advice
