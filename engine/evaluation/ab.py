"""The blind A/B store: baseline and tuned answers to the same prompts, judged by a person
who cannot tell which side is which.

Each pair's side for the tuned answer (A or B) comes from a seed stored with the pairs
and the pair's id, so it is random across pairs, the same on every reopen, and a pair
added later does not move the others. Every judgement is committed (WAL,
synchronous=FULL) before `judge` returns, so a killed terminal loses nothing; the next
pair to show is the first one without a judgement. Light: stdlib only.

Win rate: ties count as half a win (the convention of pairwise preference studies such
as Chatbot Arena), skips count for nothing. The 95% interval is Wilson's score
interval on that rate with n = wins + losses + ties, chosen over the normal (Wald)
interval because reviews are small: with 10 judgements, or all wins, Wald's interval
collapses to zero width or leaves [0, 1], while Wilson's stays inside [0, 1] and keeps
close to its nominal coverage. Scoring a tie as half a success makes the interval a
little conservative (a tie is less variable than a coin flip).
"""

from __future__ import annotations

import math
import random
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from engine.core.files import ensure_private_dir

CHOICES = ("A", "B", "tie", "skip")
Z95 = 1.959963984540054

SCHEMA = """
CREATE TABLE IF NOT EXISTS pair (id TEXT PRIMARY KEY, position INTEGER NOT NULL, prompt TEXT NOT NULL,
    baseline TEXT NOT NULL, tuned TEXT NOT NULL, tuned_side TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS judgement (pair_id TEXT PRIMARY KEY REFERENCES pair(id), choice TEXT NOT NULL,
    seq INTEGER NOT NULL, judged REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


@dataclass(frozen=True)
class Pair:
    """What the reviewer sees (prompt, answer A, answer B) and, kept out of sight, which is tuned."""

    id: str
    position: int
    prompt: str
    a: str
    b: str
    tuned_side: str
    choice: str | None = None

    def outcome(self) -> str | None:
        """'win', 'loss' or 'tie' for the tuned model; 'skip' or None (not judged)."""
        if self.choice in (None, "skip", "tie"):
            return self.choice
        return "win" if self.choice == self.tuned_side else "loss"


def wilson_interval(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion; (0, 1) when there is nothing to go on."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def summarise(wins: int, losses: int, ties: int) -> dict:
    """Win rate of tuned over baseline (ties half) and its Wilson 95% interval."""
    n = wins + losses + ties
    rate = (wins + ties / 2) / n if n else None
    low, high = wilson_interval(wins + ties / 2, n) if n else (None, None)
    return {"wins": wins, "losses": losses, "ties": ties, "win_rate": rate, "ci_low": low, "ci_high": high}


def side_for(seed: str, pair_id: str) -> str:
    """Which side shows the tuned answer: random per pair, fixed by the stored seed."""
    return "A" if random.Random(f"{seed}:{pair_id}").random() < 0.5 else "B"


def open_store(path: Path, schema: str) -> sqlite3.Connection:
    """A review database under <run>/eval/ (owner-only), in autocommit mode with WAL and synchronous=FULL:
    every write made in a `BEGIN IMMEDIATE` block is on disk when the block ends. The A/B store and the
    error categories (engine.evaluation.errors) both keep their judgements this way."""
    ensure_private_dir(path.parent, tighten=False)  # <run>/eval/: created owner-only
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(schema)
    return db


def row_key(row: dict, index: int) -> str:
    """A held-out example's id in the review stores: its line in the data file, else its place in the report."""
    return f"line-{row['line']}" if row.get("line") is not None else f"row-{index}"


class ABStore:
    """`ABStore(path, pairs)`: pairs are dicts with id, prompt, baseline, tuned (or 4-tuples in that
    order). Pairs already stored keep their text, side and judgement; new ones are appended."""

    def __init__(self, path: str | Path, pairs: Iterable[dict | tuple] = (), seed: str | None = None):
        self.path = Path(path)
        self.lock = threading.Lock()  # the UI judges on its thread, a worker may read on another
        self.db = open_store(self.path, SCHEMA)
        with self.lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute("SELECT value FROM meta WHERE key='seed'").fetchone()
            if row is None:
                self.seed = seed if seed is not None else secrets.token_hex(8)
                self.db.execute("INSERT INTO meta (key, value) VALUES ('seed', ?)", (self.seed,))
            else:
                self.seed = row[0]
            position = self.db.execute("SELECT COALESCE(MAX(position), -1) FROM pair").fetchone()[0]
            for item in pairs:
                pair_id, prompt, baseline, tuned = _fields(item)
                position += 1
                cursor = self.db.execute(
                    "INSERT OR IGNORE INTO pair (id, position, prompt, baseline, tuned, tuned_side) "
                    "VALUES (?,?,?,?,?,?)", (pair_id, position, prompt, baseline, tuned, side_for(self.seed, pair_id)))
                if cursor.rowcount == 0:
                    position -= 1

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "ABStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- reading ----
    def pairs(self) -> list[Pair]:
        with self.lock:
            rows = self.db.execute(
                "SELECT p.id, p.position, p.prompt, p.baseline, p.tuned, p.tuned_side, j.choice "
                "FROM pair p LEFT JOIN judgement j ON j.pair_id = p.id ORDER BY p.position").fetchall()
        return [_pair(*row) for row in rows]

    def pair(self, pair_id: str) -> Pair | None:
        return next((p for p in self.pairs() if p.id == pair_id), None)

    def next_unjudged(self) -> Pair | None:
        """The first pair, in stored order, that has no judgement yet."""
        with self.lock:
            row = self.db.execute(
                "SELECT p.id, p.position, p.prompt, p.baseline, p.tuned, p.tuned_side, NULL FROM pair p "
                "WHERE NOT EXISTS (SELECT 1 FROM judgement j WHERE j.pair_id = p.id) "
                "ORDER BY p.position LIMIT 1").fetchone()
        return _pair(*row) if row else None

    def judgements(self) -> dict[str, str]:
        with self.lock:
            return dict(self.db.execute("SELECT pair_id, choice FROM judgement ORDER BY seq"))

    def summary(self) -> dict:
        """wins/losses/ties of tuned against baseline, win rate and CI, judged/skipped/remaining/total."""
        with self.lock:
            rows = self.db.execute(
                "SELECT j.choice, p.tuned_side FROM judgement j JOIN pair p ON p.id = j.pair_id").fetchall()
            total = self.db.execute("SELECT COUNT(*) FROM pair").fetchone()[0]
        wins = sum(1 for choice, side in rows if choice == side)
        ties = sum(1 for choice, _ in rows if choice == "tie")
        skipped = sum(1 for choice, _ in rows if choice == "skip")
        losses = len(rows) - wins - ties - skipped
        return {**summarise(wins, losses, ties), "skipped": skipped, "judged": len(rows),
                "remaining": total - len(rows), "total": total}

    # ---- writing: committed before returning ----
    def judge(self, pair_id: str, choice: str) -> None:
        """Record A, B, tie or skip for a pair (replacing an earlier judgement of it)."""
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, not {choice!r}")
        with self.lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            if self.db.execute("SELECT 1 FROM pair WHERE id=?", (pair_id,)).fetchone() is None:
                raise KeyError(f"no pair {pair_id!r} in {self.path}")
            seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM judgement").fetchone()[0] + 1
            self.db.execute("INSERT OR REPLACE INTO judgement (pair_id, choice, seq, judged) VALUES (?,?,?,?)",
                            (pair_id, choice, seq, time.time()))

    def undo(self) -> str | None:
        """Remove the most recent judgement; the id of its pair, or None when nothing was judged."""
        with self.lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute("SELECT pair_id FROM judgement ORDER BY seq DESC LIMIT 1").fetchone()
            if row is None:
                return None
            self.db.execute("DELETE FROM judgement WHERE pair_id=?", (row[0],))
        return row[0]


def _fields(item: dict | tuple) -> tuple[str, str, str, str]:
    if isinstance(item, dict):
        return str(item["id"]), str(item["prompt"]), str(item["baseline"]), str(item["tuned"])
    pair_id, prompt, baseline, tuned = item
    return str(pair_id), str(prompt), str(baseline), str(tuned)


def _pair(pair_id, position, prompt, baseline, tuned, tuned_side, choice) -> Pair:
    a, b = (tuned, baseline) if tuned_side == "A" else (baseline, tuned)
    return Pair(pair_id, position, prompt, a, b, tuned_side, choice)


def store_path(run_dir: Path, report: dict) -> Path:
    """A report's A/B store: one per baseline side (the prompted base, or `--against` another run or the base
    unprompted), so judgements of one comparison never mix with another's."""
    against = report.get("against")
    return run_dir / "eval" / (f"ab-{against}.sqlite" if against else "ab.sqlite")


def pairs_from_report(report: dict) -> list[dict]:
    """A/B pairs from an evaluation report's rows: only rows that have both answers."""
    pairs = []
    for i, row in enumerate(report.get("rows") or []):
        if row.get("baseline") is None or row.get("tuned") is None:
            continue
        pairs.append({"id": row_key(row, i), "prompt": row.get("prompt") or "", "baseline": row["baseline"],
                      "tuned": row["tuned"]})
    return pairs
