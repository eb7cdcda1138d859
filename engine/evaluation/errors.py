"""Error categories: a person names what went wrong with the tuned model's answer to a held-out
example (factual, format, reasoning, other: the failure modes of human evaluation in the field's
practice), in the Eval screen's example browser.

Kept in `<run>/eval/errors.sqlite` the way A/B judgements are kept (engine.evaluation.ab.open_store):
each change committed before the next example shows, so a killed terminal loses nothing. Examples
are keyed like A/B pairs (ab.row_key). Light: stdlib only.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from engine.evaluation.ab import open_store, row_key
from engine.evaluation.metrics import passed

CATEGORIES = ("factual", "format", "reasoning", "other")

SCHEMA = """
CREATE TABLE IF NOT EXISTS category (example_id TEXT PRIMARY KEY, category TEXT NOT NULL, labelled REAL NOT NULL);
"""


def next_category(current: str | None) -> str | None:
    """The category after `current` in CATEGORIES, then none, then the first again: one key cycles them."""
    order = (None, *CATEGORIES)
    return order[(order.index(current) + 1) % len(order)] if current in order else CATEGORIES[0]


class ErrorStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock = threading.Lock()  # the UI writes on its thread, the loading worker reads on another
        self.db = open_store(self.path, SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "ErrorStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def categories(self) -> dict[str, str]:
        with self.lock:
            return dict(self.db.execute("SELECT example_id, category FROM category"))

    def set(self, example_id: str, category: str | None) -> None:
        """Name the category of an example's error; None removes it. Committed before returning."""
        if category is not None and category not in CATEGORIES:
            raise ValueError(f"category must be one of {CATEGORIES}, not {category!r}")
        with self.lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            if category is None:
                self.db.execute("DELETE FROM category WHERE example_id=?", (example_id,))
            else:
                self.db.execute("INSERT OR REPLACE INTO category (example_id, category, labelled) VALUES (?,?,?)",
                                (example_id, category, time.time()))


def tally(rows: list[dict], categories: dict[str, str]) -> dict:
    """How many examples carry each category, how many tuned answers failed, and how many of those
    failures have no category yet."""
    keys = [row_key(row, i) for i, row in enumerate(rows)]
    failures = [k for k, row in zip(keys, rows) if passed(row, "tuned") is False]
    counts = {c: sum(1 for k in keys if categories.get(k) == c) for c in CATEGORIES}
    return {**counts, "failures": len(failures), "uncategorised": sum(1 for k in failures if k not in categories)}


FILTERS = ("all", "failures", "disagreements")


def filter_rows(rows: list[dict], name: str) -> list[int]:
    """The indices of the rows a browser filter keeps: all; failures (the tuned answer does not pass,
    see metrics.passed); disagreements (the baseline and the tuned answer differ in passing)."""
    if name == "failures":
        return [i for i, row in enumerate(rows) if passed(row, "tuned") is False]
    if name == "disagreements":
        return [i for i, row in enumerate(rows)
                if passed(row, "baseline") is not None and passed(row, "baseline") != passed(row, "tuned")]
    return list(range(len(rows)))
