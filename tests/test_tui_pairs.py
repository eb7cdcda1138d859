"""Pilot tests of preference rows on the Data screen: a pair's prompt, chosen and rejected (stacked at 80x24,
side by side when wide); accept, reject, swap and note go to the review store; a KTO row's label flips; the
reviewed export applies them (a swapped pair's completions change places, a rejected pair is dropped)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_tui_data import loaded, make_app, notified
from tui_fixtures import assert_snapshot, screen_text

from engine.data.load import load_examples
from engine.data.review import ReviewStore, review_key

SIZE = (80, 24)

PAIRS = [
    {"prompt": [{"role": "user", "content": "Name a primary colour."}],
     "chosen": [{"role": "assistant", "content": "Red."}],
     "rejected": [{"role": "assistant", "content": "Purple, which is not one."}]},
    {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"},
    {"prompt": "Say hello in French.", "chosen": "Bonjour.", "rejected": "Hola."},
    # the same prompt and chosen answer as the row above with another rejected one: a review of its own
    {"prompt": "Say hello in French.", "chosen": "Bonjour.", "rejected": "Hello."},
    {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"},  # line 2 again: a duplicate
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def pairs(tmp_path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", PAIRS)


@pytest.fixture
def unpaired(tmp_path) -> Path:
    return write_jsonl(tmp_path / "kto.jsonl", [
        {"prompt": "Capital of France?", "completion": "Paris.", "label": True},
        {"prompt": "Capital of Spain?", "completion": "Lisbon.", "label": False}])


def stored(path: Path) -> dict[int, dict]:
    """Line -> review, read back from the SQLite store as another process would."""
    store = ReviewStore.for_dataset(path)
    reviews = store.all()
    store.close()
    return {ex.line: reviews[review_key(ex)] for ex in load_examples(path).examples if review_key(ex) in reviews}


@pytest.mark.asyncio
async def test_a_pair_shows_prompt_chosen_and_rejected_stacked_at_80x24(tmp_path, pairs):
    async with make_app(tmp_path, pairs).run_test(size=SIZE) as pilot:
        await loaded(pilot)
        text = screen_text(pilot.app)
        assert "1/5 · line 1 · pair · [unreviewed]" in text
        prompt, chosen, rejected = (text.index(s) for s in ("Name a primary colour.", "━━ CHOSEN ━━",
                                                             "━━ REJECTED ━━"))
        assert prompt < chosen < text.index("Red.") < rejected < text.index("Purple, which is not one.")
        assert "w swap chosen/rejected" in text and "Swap/flip" in text  # the keys, in words
        assert_snapshot(pilot.app, "data_pair")
        await pilot.press("j", "j", "j")  # line 4 shares line 3's prompt and chosen answer: not a duplicate
        assert "duplicate" not in screen_text(pilot.app)
        await pilot.press("j")  # line 5 is line 2 again: its flag above the pair
        lines = screen_text(pilot.app).splitlines()
        flag = next(i for i, line in enumerate(lines) if "⚑ duplicate of 2" in line)
        assert lines[flag + 1].strip() == "" and "━━ REJECTED ━━" in "\n".join(lines[flag:])


@pytest.mark.asyncio
async def test_a_wide_terminal_shows_the_pair_side_by_side(tmp_path, pairs):
    async with make_app(tmp_path, pairs).run_test(size=(140, 30)) as pilot:
        await loaded(pilot)
        lines = screen_text(pilot.app).splitlines()
        header = next(line for line in lines if "CHOSEN" in line)
        assert "REJECTED" in header and header.index("CHOSEN") < header.index("REJECTED")
        assert any("Red." in line and "Purple, which is not one." in line for line in lines)


@pytest.mark.asyncio
async def test_accept_reject_swap_and_note_keys_are_stored_and_undone(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS[:4])  # line 5 would share line 2's review
    async with make_app(tmp_path, pairs).run_test(size=SIZE) as pilot:
        session = await loaded(pilot)
        await pilot.press("g", "b")  # accept the first pair, reject the second
        assert {line: r["verdict"] for line, r in stored(pairs).items()} == {1: "good", 2: "bad"}
        await pilot.press("w")  # the third: swapped, committed before the screen redraws
        assert stored(pairs)[3] == {"verdict": None, "note": None, "edit": None, "flipped": True}
        text = screen_text(pilot.app)
        assert "3/4 · line 3 · pair · [unreviewed] swapped" in text
        assert text.index("CHOSEN (swapped in review)") < text.index("Hola.") < text.index("REJECTED") \
            < text.index("Bonjour.")
        await pilot.press("n", *"wrong language", "enter")
        await pilot.pause()
        assert stored(pairs)[3]["note"] == "wrong language" and 4 not in stored(pairs)  # its twin is untouched
        await pilot.press("u", "u")  # the note, then the swap
        assert 3 not in stored(pairs)
        assert "swapped" not in screen_text(pilot.app) and session.pos == 2  # undo shows what it undid
        await pilot.press("k")
        assert "[REJECTED]" in screen_text(pilot.app)
        await pilot.press("k")
        assert "[ACCEPTED]" in screen_text(pilot.app)


@pytest.mark.asyncio
async def test_edit_is_refused_on_a_pair(tmp_path, pairs):
    async with make_app(tmp_path, pairs).run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("e")
        await notified(pilot, "A pair's completions are not edited here")
        assert stored(pairs) == {}


@pytest.mark.asyncio
async def test_export_swaps_the_swapped_and_drops_the_rejected(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS[:3])  # without line 3's twin and line 2's duplicate
    out = tmp_path / "reviewed.jsonl"
    async with make_app(tmp_path, pairs).run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("g", "b", "w")
        await pilot.press("x", "ctrl+a", "ctrl+k", *str(out), "enter")
        await notified(pilot, "Exported 2 examples")
    report = json.loads((tmp_path / "reviewed.jsonl.report.json").read_text())
    assert report["removed_examples"] == [{"line": 2, "reason": "verdict bad"}]
    answers = [ex.messages[-1]["content"] for ex in load_examples(out).examples]
    assert answers == ["Red.", "Hola."]  # the swapped pair's rejected answer is now its chosen one
    assert load_examples(out).examples[1].messages[-2]["content"] == "Say hello in French."


@pytest.mark.asyncio
async def test_a_kto_row_shows_its_label_and_w_flips_it(tmp_path, unpaired):
    async with make_app(tmp_path, unpaired).run_test(size=SIZE) as pilot:
        await loaded(pilot)
        assert "label: DESIRABLE" in screen_text(pilot.app) and "· unpaired ·" in screen_text(pilot.app)
        await pilot.press("w")
        text = screen_text(pilot.app)
        assert "label: UNDESIRABLE (flipped in review from desirable)" in text and "label flipped" in text
        assert stored(unpaired)[1]["flipped"] is True
    async with make_app(tmp_path, unpaired).run_test(size=SIZE) as pilot:  # reopened: the flip is still there
        session = await loaded(pilot)
        assert session.example(0).desirable is False and "label: UNDESIRABLE" in screen_text(pilot.app)
        await pilot.press("w")
        assert "flipped" not in stored(unpaired)[1] and "label: DESIRABLE" in screen_text(pilot.app)


@pytest.mark.asyncio
async def test_w_on_a_demonstration_says_there_is_nothing_to_flip(tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "Hi", "completion": "Hello."}] + PAIRS[1:2])
    async with make_app(tmp_path, data).run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("w")
        await notified(pilot, "w swaps a preference pair's chosen and rejected")
        assert stored(data) == {}


def test_a_store_written_before_flips_opens_with_its_reviews(tmp_path, pairs):
    """Stores beside datasets outlive versions: one without the flipped column gains it and keeps its verdicts."""
    import sqlite3

    from engine.data.review import store_path

    old = sqlite3.connect(store_path(pairs))
    old.executescript("""
        CREATE TABLE review (hash TEXT PRIMARY KEY, verdict TEXT, note TEXT, edit TEXT, updated REAL);
        CREATE TABLE history (id INTEGER PRIMARY KEY AUTOINCREMENT, step INTEGER NOT NULL, hash TEXT NOT NULL,
            existed INTEGER NOT NULL, verdict TEXT, note TEXT, edit TEXT);""")
    first = load_examples(pairs).examples[0]
    old.execute("INSERT INTO review VALUES (?, 'good', 'fine', NULL, 0)", (review_key(first),))
    old.commit()
    old.close()
    store = ReviewStore.for_dataset(pairs)
    store.set_flipped(review_key(first), True)
    assert store.get(review_key(first)) == {"verdict": "good", "note": "fine", "edit": None, "flipped": True}
    assert store.undo() == [review_key(first)] and store.get(review_key(first))["verdict"] == "good"
    store.close()
