"""Pilot tests of the Eval screen: metrics from a report, browsing, blind A/B keys, export; 80x24 snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_fixtures import make_report, write_report
from tui_fixtures import SIZE, assert_snapshot, make_app, make_run, screen_text, wait_for

from engine.evaluation.ab import ABStore
from engine.evaluation.errors import ErrorStore
from tui.screens.choose_run import RunChooser
from tui.screens.error import ErrorScreen
from tui.screens.eval import EvalScreen
from tui.screens.prompt import Confirm, PathPrompt

pytestmark = pytest.mark.asyncio
RUN_ID = "20260105-101500-people-3f2a"


def evaluated_run(workspace: Path, run_id: str = RUN_ID, report: dict | None = None):
    run = make_run(workspace, run_id=run_id, state="completed", steps=10, max_steps=10)
    write_report(run, report)
    return run


def eval_screen(app) -> EvalScreen:
    assert isinstance(app.screen, EvalScreen), type(app.screen)
    return app.screen


async def loaded(pilot, app) -> EvalScreen:
    await wait_for(pilot, lambda: isinstance(app.screen, EvalScreen) and app.screen.loaded)
    return app.screen


async def test_without_an_evaluated_run_says_what_to_run(tmp_path):
    make_run(tmp_path, run_id="20260101-000000-plain-0000", state="completed")  # trained, not evaluated
    app = make_app(tmp_path, mode="eval")
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot, app)
        text = screen_text(app)
        assert "no evaluated run" in text
        assert "tunedeck eval RUN --baseline" in text and "tunedeck demo" in text
        await pilot.press("a", "x", "e")  # nothing to judge, export or browse: no crash, no modal
        assert screen.report is None and app.screen is screen
        assert_snapshot(app, "eval_empty")


async def test_metrics_deltas_and_forgetting_verdict(tmp_path):
    evaluated_run(tmp_path)
    app = make_app(tmp_path, mode="eval")
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, app)
        text = screen_text(app)
        assert RUN_ID in text
        assert "exact match                       10.0%   95.0%  +85.0 pts  better" in text
        assert "task: json_field_f1               0.600   0.970     +0.370  better" in text
        assert "format (apart from correctness)" in text
        assert "format compliance                 10.0%  100.0%  +90.0 pts  better" in text
        loss = next(line for line in text.splitlines() if line.strip().startswith("loss"))
        assert loss.split() == ["loss", "-", "0.010", "-"]  # baseline not scored: "-", no delta
        assert "1 of 8 probes regressed: capital-france" in text
        assert "pass → FAIL  capital-france (facts)  REGRESSED" in text
        assert "20.10 base → 21.30 tuned (+6%)" in text
        assert_snapshot(app, "eval_metrics")



async def test_judge_score_shows_when_the_judge_ran(tmp_path):
    report = make_report()
    report["tuned"]["judge_score"], report["baseline"]["judge_score"] = 4.2, 2.5
    evaluated_run(tmp_path, report=report)
    app = make_app(tmp_path, mode="eval")
    async with app.run_test(size=(80, 30)) as pilot:  # taller: the judge's section sits below the fit
        await loaded(pilot, app)
        text = screen_text(app)
        assert "LLM judge" in text
        assert "judge score (1-5)                 2.500   4.200     +1.700  better" in text


async def test_no_judge_section_without_a_judge(tmp_path):
    evaluated_run(tmp_path)
    app = make_app(tmp_path, mode="eval")
    async with app.run_test(size=(80, 30)) as pilot:
        await loaded(pilot, app)
        assert "judge" not in screen_text(app).lower()

async def test_reference_model_column_and_latency_ratios(tmp_path):
    evaluated_run(tmp_path, report=make_report(reference=True))
    app = make_app(tmp_path, mode="eval")
    async with app.run_test(size=(80, 50)) as pilot:  # taller: the cost table sits below the forgetting check
        screen = await loaded(pilot, app)
        text = screen_text(app)
        assert "metric                           baseline     ref   tuned      delta" in text
        assert "exact match                       10.0%   85.0%   95.0%  +85.0 pts  better" in text
        loss = next(line for line in text.splitlines() if line.strip().startswith("loss"))
        assert loss.split() == ["loss", "-", "-", "0.010", "-"]  # a served model has no loss: '-'
        assert "ref: qwen2.5-7b-instruct at http://localhost:8000/v1, prompted like the" in text
        assert "Latency and prompt cost · means per example; delta = tuned/baseline" in text
        assert "prompt tokens        412.5  404.5   54.5  0.13x  better" in text
        assert "seconds/example      0.410  0.900  0.120  0.29x  better" in text
        assert "tokens/s              80.5   21.1  150.0  1.86x  better" in text
        generated = next(line for line in text.splitlines() if line.strip().startswith("generated tokens"))
        assert generated.split()[-1] == "0.55x"  # a count: neither better nor worse
        await pilot.press("e")
        for _ in range(5):
            await pilot.press("j")
        text = screen_text(app)
        assert screen.index == 5 and "▌REF MODEL  not exact, format ok  407 prompt + 19 tokens, 0.90 s" in text
        assert '"Giza"' in text and "▌TUNED  exact, format ok  57 prompt + 18 tokens, 0.12 s" in text


async def test_error_categories_filters_and_their_count(tmp_path):
    run = evaluated_run(tmp_path)
    app = make_app(tmp_path, mode="eval")
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot, app)
        await pilot.press("m", "end")  # the counts close the metrics view
        assert "Error categories · factual 0 · format 0 · reasoning 0 · other 0" in screen_text(app)
        assert "1 of 1 tuned failures without one" in screen_text(app)
        await pilot.press("c", "f")  # not in the example browser: nothing happens
        assert screen.example_filter == "all" and screen.categories == {}
        await pilot.press("e", "f")
        text = screen_text(app)
        assert screen.example_filter == "failures" and screen.index == 4
        assert "Example 5 of 6 · line 7 · failures: 1 of 1 (f)" in text and "error category: none" in text
        await pilot.press("c")
        assert "error category: factual" in screen_text(app)
        await pilot.press("c")
        assert "error category: format" in screen_text(app)
        with ErrorStore(run.path / "eval" / "errors.sqlite") as store:  # committed at once
            assert store.categories() == {"line-7": "format"}
        await pilot.press("j", "k")
        assert screen.index == 4  # the only failure
        await pilot.press("f")  # where exactly one of baseline and tuned is right: lines 3 and 5
        assert screen.example_filter == "disagreements" and screen.index == 0
        assert "disagreements: 1 of 2 (f)" in screen_text(app)
        await pilot.press("j")
        assert screen.index == 2 and "Amara" in screen_text(app)
        assert_snapshot(app, "eval_examples_disagreements")
        await pilot.press("f")
        assert screen.example_filter == "all" and screen.index == 2
        await pilot.press("m", "end")
        text = screen_text(app)
        assert "Error categories · factual 0 · format 1 · reasoning 0 · other 0" in text
        assert "0 of 1 tuned failures without one" in text

    app = make_app(tmp_path, mode="eval")  # reopened: the category is still there
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot, app)
        await pilot.press("e", "f")
        assert "error category: format" in screen_text(app)
        for category in ("reasoning", "other", "none", "factual"):  # c cycles, through none
            await pilot.press("c")
            assert f"error category: {category}" in screen_text(app)


async def test_j_k_browse_examples(tmp_path):
    evaluated_run(tmp_path)
    app = make_app(tmp_path, mode="eval")
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot, app)
        await pilot.press("e")
        text = screen_text(app)
        assert "Example 1 of 6 · line 3" in text and "Maria is 34 and lives in Lisbon" in text
        assert "▌BASELINE  not exact, format BAD" in text and "▌TUNED  exact, format ok" in text
        await pilot.press("j", "j")
        assert screen.index == 2
        text = screen_text(app)
        assert "Example 3 of 6 · line 5" in text and "Amara" in text and "Maria" not in text
        await pilot.press("k")
        assert "Example 2 of 6" in screen_text(app) and "Kenji" in screen_text(app)
        for _ in range(3):
            await pilot.press("k")
        assert screen.index == 0  # stops at the first


async def test_ab_keys_record_judgements_and_summary_updates(tmp_path):
    run = evaluated_run(tmp_path)
    ABStore(run.path / "eval" / "ab.sqlite", seed="snapshot").close()  # fixed sides for the snapshot
    app = make_app(tmp_path, mode="eval")
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot, app)
        await pilot.press("a")  # not in the A/B view: does nothing
        assert screen.store.summary()["judged"] == 0
        await pilot.press("r")
        assert "0/6 judged · 6 left" in screen_text(app)
        sides = {p.id: p.tuned_side for p in screen.store.pairs()}
        first = screen.pair
        tuned_key = sides[first.id].lower()
        # The answer shown on the tuned side is the tuned answer, and the other is the baseline's.
        assert (first.a if sides[first.id] == "A" else first.b) == make_report()["rows"][0]["tuned"]
        await pilot.press(tuned_key)           # tuned wins pair 1
        await pilot.press("t")                 # tie on pair 2
        await pilot.press("s")                 # skip pair 3
        text = screen_text(app)
        assert "3/6 judged · 3 left · tuned 1W 0L 1T 1 skipped · win rate 75%" in text
        assert "pair 4" in text
        await pilot.press("u")
        assert "2/6 judged" in screen_text(app) and "pair 3" in screen_text(app)
        pair3 = screen.pair
        baseline_key = "b" if sides[pair3.id] == "A" else "a"
        await pilot.press(baseline_key)        # baseline wins pair 3
        assert "tuned 1W 1L 1T · win rate 50% (95% CI 13–87%)" in screen_text(app)
        assert_snapshot(app, "eval_ab")

    # Committed as they were made: a fresh store sees them, and reopening resumes at pair 4.
    with ABStore(run.path / "eval" / "ab.sqlite") as store:
        assert len(store.judgements()) == 3
        assert store.summary()["wins"] == 1 and store.summary()["losses"] == 1
    app = make_app(tmp_path, mode="eval")
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot, app)
        await pilot.press("r")
        assert screen.pair.position == 3 and "3/6 judged" in screen_text(app)


async def test_report_without_baseline(tmp_path):
    evaluated_run(tmp_path, report=make_report(baseline=False))
    app = make_app(tmp_path, mode="eval")
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot, app)
        assert f"No baseline measured: tunedeck eval {RUN_ID} --baseline" in screen_text(app)
        await pilot.press("r")
        assert screen.store is None and "No baseline answers" in screen_text(app)
        await pilot.press("e")
        assert "▌BASELINE" in screen_text(app) and "(not run)" in screen_text(app)
        assert not (Path(screen.run.path) / "eval" / "ab.sqlite").exists()


async def test_export_writes_the_report(tmp_path):
    run = evaluated_run(tmp_path)
    app = make_app(tmp_path, mode="eval")
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, app)
        await pilot.press("x")
        assert isinstance(app.screen, PathPrompt)
        default = tmp_path / "reports" / f"{RUN_ID}.md"
        assert app.screen.query_one("#prompt-input").value == str(default)
        await pilot.press("enter")
        await wait_for(pilot, lambda: default.exists())
        assert default.read_text() == (run.path / "eval" / "report.md").read_text()

        # An existing file is replaced only after y.
        other = tmp_path / "elsewhere" / "people.md"
        other.parent.mkdir()
        other.write_text("keep me")
        await pilot.press("x")
        await pilot.press("ctrl+u", *str(other), "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, Confirm))
        await pilot.press("n")
        await pilot.pause(0.2)
        assert other.read_text() == "keep me"
        await pilot.press("x")
        await pilot.press("ctrl+u", *str(other), "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, Confirm))
        await pilot.press("y")
        await wait_for(pilot, lambda: other.read_text() != "keep me")
        assert other.read_text().startswith("# Evaluation of")


async def test_missing_markdown_report_goes_to_the_error_modal(tmp_path):
    run = evaluated_run(tmp_path)
    (run.path / "eval" / "report.md").unlink()
    app = make_app(tmp_path, mode="eval")
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, app)
        await pilot.press("x", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen))
        assert "has no eval/report.md" in screen_text(app)


async def test_broken_report_goes_to_the_error_modal_once(tmp_path):
    run = evaluated_run(tmp_path)
    (run.path / "eval" / "report.json").write_text("{not json")
    app = make_app(tmp_path, mode="eval")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen))
        assert "is not valid JSON" in screen_text(app)
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert isinstance(app.screen, EvalScreen)  # closing the modal does not reread and reopen it
        write_report(run)
        await pilot.press("R")
        await wait_for(pilot, lambda: eval_screen(app).report is not None)
        assert "+85.0 pts" in screen_text(app)


async def test_newest_evaluated_run_first_and_o_picks_another(tmp_path):
    evaluated_run(tmp_path, run_id="20260101-090000-older-aaaa")
    older = make_report()
    evaluated_run(tmp_path, run_id=RUN_ID)
    make_run(tmp_path, run_id="20260109-000000-unevaluated-bbbb", state="running")
    older["tuned"]["exact_match"] = 0.5
    write_report(make_run.__globals__["Run"](tmp_path / "runs" / "20260101-090000-older-aaaa"), older)
    app = make_app(tmp_path, mode="eval")
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot, app)
        assert screen.run.id == RUN_ID
        await pilot.press("o")
        assert isinstance(app.screen, RunChooser)
        text = screen_text(app)
        assert "20260101-090000-older-aaaa" in text and "unevaluated" not in text
        await pilot.press("j", "enter")
        await wait_for(pilot, lambda: eval_screen(app).run.id == "20260101-090000-older-aaaa")
        assert "50.0%" in screen_text(app)


async def test_report_written_while_away_shows_on_return(tmp_path):
    app = make_app(tmp_path, mode="eval")
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot, app)
        assert screen.report is None
        await pilot.press("1")
        report = make_report()
        evaluated_run(tmp_path, report=report)
        await pilot.press("5")
        await wait_for(pilot, lambda: screen.report is not None)
        assert json.loads(json.dumps(screen.report)) == report
