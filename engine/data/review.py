"""The review store: verdict, note, edit and flip per example, in SQLite beside the dataset.

Keyed by a hash of the example's original content (`review_key`), so reordering or
re-exporting the file does not lose a verdict. A flip reverses a preference row: a pair's
chosen and rejected completions change places, an unpaired (KTO) row's label turns over;
`reviewed` applies it, for the screen and for export alike. Every change is committed (WAL, synchronous=FULL)
before the call returns: the UI shows the next example only after that, so a
killed terminal loses nothing. Each change records what it replaced, so undo can
go back any number of steps; a bulk verdict is one step.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

from engine.core.files import ensure_private_dir
from engine.data.load import Example, content_hash
from engine.data.rows import completion_start

VERDICTS = ("good", "bad", "skip")
SCHEMA = """
CREATE TABLE IF NOT EXISTS review (hash TEXT PRIMARY KEY, verdict TEXT, note TEXT, edit TEXT, updated REAL,
    flipped INTEGER);
CREATE TABLE IF NOT EXISTS history (id INTEGER PRIMARY KEY AUTOINCREMENT, step INTEGER NOT NULL, hash TEXT NOT NULL,
    existed INTEGER NOT NULL, verdict TEXT, note TEXT, edit TEXT, flipped INTEGER);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""
COLUMNS = "verdict, note, edit, flipped"


def review_key(example: Example) -> str:
    """The store's key of an example: the hash of its content, for a pair with its rejected completion too
    (pairs often share a prompt and a chosen answer) and for an unpaired row with its label."""
    if example.rejected is not None:
        return content_hash(example.messages + [{"role": "rejected", "content": ""}] + example.rejected)
    if example.desirable is not None:
        label = "desirable" if example.desirable else "undesirable"
        return content_hash(example.messages + [{"role": "label", "content": label}])
    return content_hash(example.messages)


def reviewed(example: Example, review: dict | None) -> Example:
    """The example as its review leaves it: flipped, a pair's completions exchanged or an unpaired row's
    label reversed. Edits stay in the review (export writes them over the messages)."""
    if not (review or {}).get("flipped"):
        return example
    if example.rejected is not None:
        start = completion_start(example.messages)
        return replace(example, messages=example.messages[:start] + example.rejected,
                       rejected=example.messages[start:])
    if example.desirable is not None:
        return replace(example, desirable=not example.desirable)
    return example


def store_path(dataset: str | Path) -> Path:
    """`<file>.review.sqlite` beside the dataset, or in the user cache when that folder is read-only."""
    dataset = Path(dataset).resolve()
    beside = dataset.with_name(dataset.name + ".review.sqlite")
    # The mode bits as well as access(): root passes access() on a folder marked read-only.
    writable = os.access(dataset.parent, os.W_OK) and dataset.parent.stat().st_mode & 0o222
    if beside.exists() or writable:
        return beside
    from engine.core.paths import cache_dir

    digest = hashlib.sha1(str(dataset).encode()).hexdigest()[:12]
    return cache_dir() / "review" / f"{dataset.name}-{digest}.sqlite"


class ReviewStore:
    def __init__(self, path: str | Path, readable_as: str | Path | None = None):
        """`readable_as`: the dataset reviewed. The store holds copies of its examples (edits, notes),
        so a new store is never more readable than it: owner read-write plus the dataset's read bits
        (SQLite gives its -wal and -shm files the same mode); 0600 without a dataset."""
        self.path = Path(path)
        ensure_private_dir(self.path.parent, tighten=False)  # new folders 0700; the dataset's own folder as it is
        if not self.path.exists():
            mode = 0o600
            if readable_as is not None:
                try:
                    mode |= os.stat(readable_as).st_mode & 0o044
                except OSError:
                    pass
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))  # empty = a new database
            except FileExistsError:
                pass
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        for table in ("review", "history"):  # stores written before flips existed
            if "flipped" not in {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN flipped INTEGER")

    @classmethod
    def for_dataset(cls, dataset: str | Path) -> "ReviewStore":
        return cls(store_path(dataset), readable_as=dataset)

    def close(self) -> None:
        self.db.close()

    # ---- reading ----
    def get(self, key: str) -> dict | None:
        row = self.db.execute(f"SELECT {COLUMNS} FROM review WHERE hash=?", (key,)).fetchone()
        return None if row is None else _review(*row)

    def all(self) -> dict[str, dict]:
        return {h: _review(*row) for h, *row in self.db.execute(f"SELECT hash, {COLUMNS} FROM review")}

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT verdict, COUNT(*) FROM review WHERE verdict IS NOT NULL GROUP BY verdict"))

    # ---- writing: each call is one committed transaction and one undo step ----
    def set_verdict(self, key: str, verdict: str | None) -> None:
        if verdict is not None and verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}")
        self._change([key], verdict=verdict)

    def set_verdicts(self, keys: list[str], verdict: str) -> None:
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}")
        self._change(keys, verdict=verdict)

    def set_note(self, key: str, note: str | None) -> None:
        self._change([key], note=note or None)

    def set_edit(self, key: str, messages: list[dict] | None) -> None:
        self._change([key], edit=json.dumps(messages, ensure_ascii=False) if messages else None)

    def set_flipped(self, key: str, flipped: bool) -> None:
        """Whether a preference row is reversed (see `reviewed`)."""
        self._change([key], flipped=1 if flipped else None)

    _UNSET = object()

    def _change(self, keys, verdict=_UNSET, note=_UNSET, edit=_UNSET, flipped=_UNSET) -> None:
        with self.db:  # BEGIN ... COMMIT
            self.db.execute("BEGIN IMMEDIATE")
            step = (self.db.execute("SELECT COALESCE(MAX(step), 0) FROM history").fetchone()[0]) + 1
            for key in dict.fromkeys(keys):
                old = self.db.execute(f"SELECT {COLUMNS} FROM review WHERE hash=?", (key,)).fetchone()
                self.db.execute(f"INSERT INTO history (step, hash, existed, {COLUMNS}) VALUES (?,?,?,?,?,?,?)",
                                (step, key, old is not None, *(old or (None,) * 4)))
                new = [value if change is self._UNSET else change
                       for value, change in zip(old or (None,) * 4, (verdict, note, edit, flipped))]
                self.db.execute(f"INSERT OR REPLACE INTO review (hash, {COLUMNS}, updated) VALUES (?,?,?,?,?,?)",
                                (key, *new, time.time()))

    def undo(self) -> list[str]:
        """Reverse the last step; the hashes it touched (empty when there is nothing to undo)."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            step = self.db.execute("SELECT MAX(step) FROM history").fetchone()[0]
            if step is None:
                return []
            rows = self.db.execute(f"SELECT hash, existed, {COLUMNS} FROM history WHERE step=? "
                                   "ORDER BY id DESC", (step,)).fetchall()
            for key, existed, *old in rows:
                if existed:
                    self.db.execute(f"INSERT OR REPLACE INTO review (hash, {COLUMNS}, updated) "
                                    "VALUES (?,?,?,?,?,?)", (key, *old, time.time()))
                else:
                    self.db.execute("DELETE FROM review WHERE hash=?", (key,))
            self.db.execute("DELETE FROM history WHERE step=?", (step,))
        return [r[0] for r in rows]

    # ---- where the reviewer was ----
    def get_meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))


def _review(verdict, note, edit, flipped) -> dict:
    """A review as a dict; `flipped` only where set (most examples are not preference rows)."""
    review = {"verdict": verdict, "note": note, "edit": json.loads(edit) if edit else None}
    return {**review, "flipped": True} if flipped else review
