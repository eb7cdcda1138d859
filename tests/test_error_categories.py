"""Error categories (engine.evaluation.errors): the store, the cycle of one key, the browser's filters, the counts."""

from __future__ import annotations

import sqlite3

import pytest
from eval_fixtures import make_report

from engine.evaluation.errors import CATEGORIES, ErrorStore, filter_rows, next_category, tally
from engine.evaluation.metrics import cost_metrics


def test_categories_are_committed_at_once_and_can_be_removed(tmp_path):
    path = tmp_path / "eval" / "errors.sqlite"
    store = ErrorStore(path)
    store.set("line-7", "factual")
    store.set("line-9", "format")
    store.set("line-7", "reasoning")  # replaced, not added
    # Read by another connection while the store is still open: already on disk.
    assert dict(sqlite3.connect(path).execute("SELECT example_id, category FROM category")) == \
        {"line-7": "reasoning", "line-9": "format"}
    store.set("line-9", None)
    store.close()
    with ErrorStore(path) as again:
        assert again.categories() == {"line-7": "reasoning"}
        with pytest.raises(ValueError, match="category must be one of"):
            again.set("line-7", "typo")
    assert path.parent.stat().st_mode & 0o077 == 0  # eval/ created owner-only, as for the A/B store


def test_one_key_cycles_through_the_categories_and_back_to_none():
    seen, current = [], None
    for _ in range(len(CATEGORIES) + 2):
        current = next_category(current)
        seen.append(current)
    assert seen == ["factual", "format", "reasoning", "other", None, "factual"]


def test_filters_and_counts_follow_the_task_metric():
    rows = make_report()["rows"]  # tuned wrong on the fifth (line 7); baseline right on lines 4, 6, 8
    assert filter_rows(rows, "all") == [0, 1, 2, 3, 4, 5]
    assert filter_rows(rows, "failures") == [4]
    assert filter_rows(rows, "disagreements") == [0, 2]  # baseline wrong where tuned is right; line 7: both wrong
    no_baseline = make_report(baseline=False)["rows"]
    assert filter_rows(no_baseline, "disagreements") == []
    # A report from before per-row task scores: exact match decides.
    old = [{k: v for k, v in row.items() if not k.endswith("_task")} for row in rows]
    assert filter_rows(old, "failures") == [4]
    counted = tally(rows, {"line-7": "factual", "line-3": "format"})
    assert counted == {"factual": 1, "format": 1, "reasoning": 0, "other": 0, "failures": 1, "uncategorised": 0}
    assert tally(rows, {})["uncategorised"] == 1


def test_cost_means_skip_what_an_endpoint_did_not_report():
    rows = [{"ref_prompt_tokens": None, "ref_generated_tokens": None, "ref_seconds": 0.5},
            {"ref_prompt_tokens": None, "ref_generated_tokens": None, "ref_seconds": 1.5}]
    assert cost_metrics(rows, "ref") == {"prompt_tokens": None, "generated_tokens": None,
                                         "seconds_per_example": 1.0, "tokens_per_second": None}
    rows = [{"t_prompt_tokens": 10, "t_generated_tokens": 4, "t_seconds": 0.5},
            {"t_prompt_tokens": 20, "t_generated_tokens": 8, "t_seconds": 1.0}]
    assert cost_metrics(rows, "t") == {"prompt_tokens": 15, "generated_tokens": 6, "seconds_per_example": 0.75,
                                       "tokens_per_second": 8.0}
