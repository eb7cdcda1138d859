"""The Data screen's review session without an app: filters, search, spot-check, verdicts, undo,
bulk, the position kept across a reopen, and split/export identical to the command line's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.data.load import load_examples
from engine.data.review import ReviewStore
from tui.review_session import ReviewSession, examine

ROOT = Path(__file__).resolve().parents[1]
GSM8K = Path("/work/shared/data/gsm8k_train.json")


def qa(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


ROWS = [
    qa("What is the capital of France?", "Paris is the capital of France."),  # 0
    qa("Name a primary colour.", ""),  # 1: empty-answer (an error rule)
    qa("How many legs has a spider?", "A spider has eight legs."),  # 2
    qa("What is the capital of France?", "Paris is the capital of France."),  # 3: exact duplicate of 0
    qa("Spell the word cat backwards.", "The word cat backwards is tac."),  # 4
    qa("Which planet is called the Red Planet?", "Mars is called the Red Planet."),  # 5
]


@pytest.fixture
def dataset(tmp_path) -> Path:
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    return path


def open_session(path: Path, store: ReviewStore | None = None) -> ReviewSession:
    """What the Data screen's loading worker and its DatasetLoaded handler do."""
    result = load_examples(path)
    return ReviewSession(path, result, *examine(result), store=store)


def test_filters_and_search_choose_the_examples_shown(dataset):
    session = open_session(dataset)
    assert session.filter == "all" and session.view == [0, 1, 2, 3, 4, 5] and session.current() == 0
    assert session.set_filter("flagged") and session.view == [1, 3]
    assert session.set_filter("empty-answer") and session.view == [1]
    assert session.set_filter("dup") and session.view == [3]
    assert session.set_filter("/RED planet") and session.view == [5]  # case-insensitive, prompt or answer
    assert not session.set_filter("nonsense") and session.view == [5] and session.filter == "/RED planet"
    assert session.set_filter("all") and session.current() == 5  # the example shown stays shown
    session.set_verdict("good")
    session.move(-1)
    session.set_verdict("bad")
    assert session.set_filter("good") and session.view == [5]
    assert session.set_filter("bad") and session.view == [4]
    assert session.set_filter("unreviewed") and session.view == [0, 1, 2, 3]
    assert session.counts() == {"good": 1, "bad": 1, "skip": 0}
    session.close()


def test_next_flagged_wraps_around_the_view(dataset):
    session = open_session(dataset)
    assert session.next_flagged() and session.current() == 1
    assert session.next_flagged() and session.current() == 3
    assert session.next_flagged() and session.current() == 1
    session.set_filter("/spider")
    assert not session.next_flagged() and session.current() == 2
    session.close()


def test_verdicts_notes_and_edits_are_committed_and_undone_one_step_at_a_time(dataset):
    session = open_session(dataset)
    session.set_verdict("good")
    session.set_verdict("skip")
    assert session.current() == 2
    session.set_note(2, "check the count")
    assert session.set_answer(2, "Eight.") and not session.set_answer(2, "Eight.")  # no change, no step
    stored = ReviewStore.for_dataset(dataset)  # another connection sees it all, as after a kill
    review = stored.get(session.hashes[2])
    assert review["note"] == "check the count" and review["edit"][-1] == {"role": "assistant", "content": "Eight."}
    assert session.messages(2)[-1]["content"] == "Eight."
    assert session.undo() == [session.hashes[2]] and session.messages(2)[-1]["content"].startswith("A spider")
    assert session.undo() == [session.hashes[2]] and not session.review(2).get("note")
    assert session.undo() == [session.hashes[1]] and session.current() == 1  # undo shows the example again
    assert stored.get(session.hashes[1]) is None and session.review(1).get("verdict") is None
    assert session.review(0)["verdict"] == "good"
    stored.close()
    session.close()


def test_bulk_verdict_covers_the_view_and_undoes_as_one_step(dataset):
    session = open_session(dataset)
    session.set_filter("/capital")
    assert session.bulk_verdict("bad") == 2
    assert session.counts()["bad"] == 1  # 0 and 3 are the same content: one review
    session.set_filter("flagged")
    assert session.bulk_verdict("skip") == 2
    assert session.review(0)["verdict"] == "skip" and session.review(1)["verdict"] == "skip"
    assert sorted(session.undo()) == sorted({session.hashes[1], session.hashes[3]})
    assert session.review(3)["verdict"] == "bad" and session.review(1).get("verdict") is None
    session.close()


def test_reopening_resumes_at_the_example_and_filter_shown(dataset):
    session = open_session(dataset)
    session.set_filter("unreviewed")
    session.move(5)
    assert session.current() == 5
    session.close()
    session = open_session(dataset)
    assert session.filter == "unreviewed" and session.current() == 5
    session.set_filter("flagged")
    session.set_filter("/spider")  # a search moves the position but is not stored as the filter
    session.close()
    session = open_session(dataset)  # the example found is not flagged: all examples, showing it
    assert (session.filter, session.current()) == ("all", 2)
    session.close()


def test_reopening_shows_all_when_the_stored_filter_no_longer_holds_the_example(dataset):
    session = open_session(dataset)
    session.set_filter("unreviewed")
    session.move(10)
    session.set_verdict("good")  # the last of the view: the position stays on it, now reviewed
    session.close()
    session = open_session(dataset)
    assert session.filter == "all" and session.current() == 5 and session.review(5)["verdict"] == "good"
    session.close()


def test_spot_check_is_seeded_and_starts_at_the_first_unreviewed(tmp_path):
    result = load_examples(GSM8K)  # real data, read-only: the stores live in tmp_path
    found = examine(result)
    first = ReviewSession(GSM8K, result, *found, store=ReviewStore(tmp_path / "a.sqlite"))
    again = ReviewSession(GSM8K, result, *found, store=ReviewStore(tmp_path / "b.sqlite"))
    first.start_spot_check(50)
    again.start_spot_check(50)
    assert first.spot == again.spot and len(set(first.spot)) == 50 and first.filter == "spot-check of 50"
    assert first.view == first.spot and first.current() == first.spot[0]
    again.start_spot_check(50, seed=1)
    assert again.spot != first.spot
    first.set_verdict("good")
    first.set_verdict("bad")
    assert first.spot_done() == 2
    first.start_spot_check(50)  # the same sample again: it resumes at its first unreviewed example
    assert first.current() == first.spot[2]
    first.start_spot_check(10 ** 6)
    assert len(first.spot) == len(result.examples)
    first.close()
    again.close()


def test_split_and_export_write_what_the_command_line_writes(dataset, tmp_path, capsys):
    from tui.cli.main import main

    session = open_session(dataset)
    session.move(5)
    session.set_verdict("bad")
    session.set_answer(2, "Eight legs.")
    session.set_note(4, "fine")
    shown = session.split(tmp_path / "screen")
    assert main(["data", "split", str(dataset), "--out", str(tmp_path / "cli"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"] == {
        name: {**info, "path": info["path"].replace("/screen/", "/cli/")} for name, info in shown.items()}
    for name in ("train", "validation", "test"):
        split = f"qa.{name}.jsonl"
        assert (tmp_path / "screen" / split).read_bytes() == (tmp_path / "cli" / split).read_bytes()

    report = session.export(tmp_path / "screen.jsonl")
    assert main(["data", "export", str(dataset), "--out", str(tmp_path / "cli.jsonl"), "--drop-rule", "errors",
                 "--drop-duplicates", "near"]) == 0
    assert (tmp_path / "screen.jsonl").read_bytes() == (tmp_path / "cli.jsonl").read_bytes()
    kept = [json.loads(line)["messages"][-1]["content"] for line in (tmp_path / "cli.jsonl").read_text().splitlines()]
    assert kept == ["Paris is the capital of France.", "Eight legs.", "The word cat backwards is tac."]
    assert report["removed_by_reason"] == {"lint: empty-answer": 1, "duplicate": 1, "verdict bad": 1}
    cli_report = json.loads((tmp_path / "cli.jsonl.report.json").read_text())
    assert {k: v for k, v in report.items() if k not in ("output", "report")} == \
        {k: v for k, v in cli_report.items() if k != "output"}
    session.close()


def test_the_session_imports_no_textual():
    code = "import sys, tui.review_session; sys.exit('textual' in sys.modules or 'rich' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_an_edited_answer_keeps_what_else_its_turn_carries(tmp_path):
    """An edit replaces the answer's text; its reasoning and media parts stay, and export writes the new
    text in the parts where the old text was."""
    row = {"messages": [{"role": "user", "content": "What is 17 * 3?"}, {"role": "assistant", "content": [
        {"type": "reasoning", "value": "17 * 3 = 51."}, {"type": "text", "value": "50"}], "loss_weight": 1}]}
    dataset = tmp_path / "parts.jsonl"
    dataset.write_text(json.dumps(row) + "\n")
    session = open_session(dataset)
    assert session.set_answer(0, "51")
    answer = session.messages(0)[-1]
    assert answer["content"] == "51" and answer["reasoning_content"] == "17 * 3 = 51." and answer["loss_weight"] == 1
    session.export(tmp_path / "out.jsonl")
    written = json.loads((tmp_path / "out.jsonl").read_text())
    assert written["messages"][1] == {"role": "assistant", "content": [
        {"type": "reasoning", "value": "17 * 3 = 51."}, {"type": "text", "value": "51"}], "loss_weight": 1}
    session.close()
