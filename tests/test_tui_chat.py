"""Pilot tests of the Chat screen against the real chat engine subprocess (engine.chat.server) on a run of the
tiny model trained once for this module: streaming, base and tuned side by side, several turns, saving a
conversation as a training example, the subprocess killed; an 80x24 snapshot."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from textual.widgets import Input
from chat_fixtures import CHAT_RUN_ID, SYSTEM_PROMPT
from tui_fixtures import SIZE, assert_snapshot, make_app, screen_text, wait_for

from engine.data.load import load_examples
from tui.screens.chat import ChatScreen
from tui.screens.data import DataScreen
from tui.screens.edit import EditAnswer

pytestmark = pytest.mark.asyncio
LOAD_SECONDS = 180  # a loaded machine: the engine imports torch, loads the base and its adapter


@pytest.fixture(autouse=True)
def chat_on_the_cpu(monkeypatch):
    """The chat engine answers on the CPU, so that what it reports is the same on a machine with a GPU."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def workspace_of(run) -> Path:
    return run.path.parent.parent


async def ready(pilot, app) -> ChatScreen:
    await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen) and app.screen.state in ("ready", "gone"),
                   timeout=LOAD_SECONDS)
    assert app.screen.state == "ready", screen_text(app)
    return app.screen


async def ask(pilot, screen: ChatScreen, text: str) -> None:
    if not isinstance(screen.focused, Input):
        await pilot.press("i")
    asked = len(screen.conversation.history["tuned"])
    await pilot.press(*text, "enter")  # a short answer may be done before this returns
    await wait_for(pilot, lambda: len(screen.conversation.history["tuned"]) == asked + 2 and not screen.pending,
                   timeout=LOAD_SECONDS)


def conversation_log(run) -> list[dict]:
    newest = max((run.path / "chat").glob("2*.jsonl"), key=lambda p: p.stat().st_mtime)
    return [json.loads(line) for line in newest.read_text().splitlines()]


async def test_no_run_says_how_to_get_one(tmp_path):
    app = make_app(tmp_path, mode="chat")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert "No run to chat with." in text and "tunedeck demo" in text
        assert app.screen.engine is None
        await pilot.press("ctrl+s")  # nothing to save: a warning, no modal
        assert isinstance(app.screen, ChatScreen)
        await pilot.press("1")  # nothing focused takes the number keys
        assert app.current_mode == "gpu"


async def test_streams_side_by_side_over_several_turns(chat_run):
    app = make_app(workspace_of(chat_run), mode="chat")
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot, app)
        assert screen.ready["system_prompt"] == SYSTEM_PROMPT and screen.ready["weights"] == "final"
        assert_snapshot(app, "chat_ready")
        await pilot.press("ctrl+t")
        await pilot.press("ctrl+u", *"0 1 12", "enter")  # greedy, 12 new tokens
        assert screen.settings == {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 12}
        await ask(pilot, screen, "join red and cat")
        # each answer came as several token messages before its done message
        assert screen.streamed["tuned"] > 1 and screen.streamed["base"] > 1
        first = {side: screen.conversation.history[side][-1]["content"] for side in ("tuned", "base")}
        text = screen_text(app)
        assert "tok/s" in text and "12 tokens" in text
        await ask(pilot, screen, "join sun and moon")
        turns = conversation_log(chat_run)
        assert [t["side"] for t in turns] == ["tuned", "base", "tuned", "base"]
        for turn in turns[2:]:  # the second question carries the first turn, each side its own answer
            assert turn["messages"] == [
                {"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "join red and cat"},
                {"role": "assistant", "content": first[turn["side"]]}, {"role": "user", "content": "join sun and moon"}]
            assert turn["tokens"] == 12 and turn["tokens_per_second"] > 0 and turn["temperature"] == 0.0
        assert screen.conversation.turns() == 2


async def test_save_as_example_lands_in_the_dataset_and_opens_in_data(chat_run):
    workspace = workspace_of(chat_run)
    app = make_app(workspace, mode="chat")
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot, app)
        screen.settings["max_new_tokens"] = 6
        await pilot.press("ctrl+b")  # the base off: only the tuned model answers
        await ask(pilot, screen, "join red and cat")
        assert screen.conversation.history["base"] == []
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, EditAnswer))
        app.screen.query_one("#edit-area").text = "red-cat"
        await pilot.press("ctrl+s")
        path = workspace / "data" / f"chat-{CHAT_RUN_ID}.jsonl"
        examples = load_examples(path).examples
        assert [ex.messages for ex in examples][-1] == [
            {"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "join red and cat"},
            {"role": "assistant", "content": "red-cat"}]
        assert app.data_path == path
        await pilot.press("escape", "ctrl+g")  # out of the input; open the file in Data
        await wait_for(pilot, lambda: isinstance(app.screen, DataScreen) and app.screen.session is not None,
                       timeout=30)
        assert app.screen.path == path and path.name in screen_text(app)


async def test_killed_engine_is_shown_and_restarts(chat_run):
    app = make_app(workspace_of(chat_run), mode="chat")
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot, app)
        pid = screen.engine.pid
        os.kill(pid, signal.SIGKILL)
        # the state first, the redraws after it (CI read the screen mid-layout): what the screen must say is read in
        # one frame, inside the wait; the reason is read whole from the pane, where it wraps as the pid's digits fall
        said = ("CHAT ENGINE GONE", "ctrl+r restarts it")
        await wait_for(pilot, lambda: screen.state == "gone" and all(s in screen_text(app) for s in said), timeout=30)
        assert "killed by signal 9" in screen.gone and "killed" in screen_text(app)
        await pilot.press("i", *"hello", "enter")  # asking a dead engine: a warning, nothing sent
        assert not screen.pending and screen.conversation.turns() == 0
        await pilot.press("ctrl+r")
        await ready(pilot, app)
        assert screen.engine.pid != pid


async def test_an_export_of_the_run_is_offered_and_chatted_with(chat_run, tmp_path):
    """ctrl+o lists the run's exports that are still on disk (recorded in <run>/exports.jsonl by `tunedeck
    export`; here an adapter export, a copy of adapter/) between its final weights and its checkpoints."""
    import shutil

    from engine.core.files import append_json_line

    export = tmp_path / "exported-adapter"
    shutil.copytree(chat_run.path / "adapter", export)
    record = chat_run.path / "exports.jsonl"
    append_json_line(record, {"kind": "adapter", "path": str(tmp_path / "deleted-since")})
    append_json_line(record, {"kind": "adapter", "path": str(export)})
    try:
        app = make_app(workspace_of(chat_run), mode="chat")
        async with app.run_test(size=SIZE) as pilot:
            screen = await ready(pilot, app)
            await pilot.press("escape", "ctrl+o")
            await wait_for(pilot, lambda: "Chat with" in screen_text(app))
            listed = screen_text(app)
            assert f"{CHAT_RUN_ID}  export exported-adapter" in listed and "deleted-since" not in listed
            assert listed.index("export exported-adapter") < listed.index("checkpoint-10")
            await pilot.press("j", "enter")  # the second entry: the export
            screen = await ready(pilot, app)
            assert "export exported-adapter weights" in screen_text(app)
            await ask(pilot, screen, "join red and cat")
            assert conversation_log(chat_run)[-1]["weights"] == "export exported-adapter"
    finally:
        record.unlink()
