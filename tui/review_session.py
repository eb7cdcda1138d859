"""Reviewing a dataset one example at a time, without Textual: what the Data screen drives.

A `ReviewSession` holds the loaded examples, their lint flags and duplicates, the reviews
and their SQLite store (engine.data.review), the view (a filter or a spot-check sample)
and the position in it. Every verdict, note, edit and flip (a preference pair's chosen and rejected
exchanged, a KTO row's label reversed) is committed to the store before the
method returns, and every move stores the example shown as the place to reopen at, so the
screen draws only what is already safe. The screen keeps the keys, dialogs and drawing.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

from engine.data.lint import RULES
from engine.data.load import Example, LoadResult
from engine.data.review import VERDICTS, ReviewStore, review_key, reviewed

if TYPE_CHECKING:
    from engine.data.dedup import Clusters

FILTERS = ("all", "flagged", "unreviewed", *VERDICTS, "duplicate")  # besides a rule id or a /search
DUPLICATE_FILTERS = ("duplicate", "dup")
SPOT_CHECK_N = 100
SPOT_CHECK_SEED = 0
NEAR_SIMILARITY = 0.8
NEAR_DEDUP_MAX_EXAMPLES = 200_000  # near duplicates of larger files cost too long here: the command line has them


def examine(result: LoadResult) -> tuple[list, Clusters, dict]:
    """(lint flags, duplicate clusters, statistics) of loaded examples: what a session is opened with."""
    from engine.data.dedup import dedup
    from engine.data.lint import lint
    from engine.data.stats import dataset_stats

    flags = lint(result.examples)
    similarity = NEAR_SIMILARITY if len(result.examples) <= NEAR_DEDUP_MAX_EXAMPLES else None
    clusters = dedup(result.examples, similarity)["near"]
    return flags, clusters, dataset_stats(result.examples, result.problems, flags, clusters)


def known_filter(spec: str) -> bool:
    return spec in FILTERS or spec in DUPLICATE_FILTERS or spec in RULES or spec.startswith("/")


class ReviewSession:
    """One dataset under review; reopening one on the same store resumes at the same example and filter.
    `flags`, `clusters` and `stats` are what `examine` found; `store`: by default the one beside the dataset."""

    def __init__(self, path: str | Path, result: LoadResult, flags, clusters: Clusters, stats: dict,
                 store: ReviewStore | None = None):
        self.path = Path(path)
        store = store or ReviewStore.for_dataset(self.path)
        self.result = result
        self.stats = stats
        self.flags: dict[int, list] = {}
        for flag in flags:
            self.flags.setdefault(flag.index, []).append(flag)
        self.duplicate_of = {i: g[0] for g in clusters.groups for i in g[1:]}  # duplicate -> the one kept
        self.hashes = [review_key(ex) for ex in result.examples]
        self.preference_rows = sum(1 for ex in result.examples if ex.kind != "sft")
        self.store = store
        self.reviews: dict[str, dict] = store.all()
        self.view: list[int] = []
        self.pos = 0
        self.filter = "all"
        self.spot: list[int] | None = None  # the sample under spot-check, when one is
        self._apply(store.get_meta("filter", "all"), keep_position=False)
        where = self.remembered = store.get_meta("position")  # the hash stored as the position
        if where in self.hashes:
            index = self.hashes.index(where)
            if index not in self.view:
                self._apply("all", keep_position=False)
            self.pos = self.view.index(index)
        self._remember()

    def close(self) -> None:
        self.store.close()

    # ---- what is shown ----
    def current(self) -> int | None:
        return self.view[self.pos] if self.view and 0 <= self.pos < len(self.view) else None

    def review(self, index: int) -> dict:
        return self.reviews.get(self.hashes[index]) or {}

    def example(self, index: int) -> Example:
        """The example as reviewed: a flipped pair's completions exchanged, a flipped KTO row's label reversed."""
        return reviewed(self.result.examples[index], self.review(index))

    def messages(self, index: int) -> list[dict]:
        """The example's messages as reviewed: its edit, else the original (flipped where it is)."""
        return self.review(index).get("edit") or self.example(index).messages

    def is_flagged(self, index: int) -> bool:
        return index in self.flags or index in self.duplicate_of

    def counts(self) -> dict[str, int]:
        return {v: sum(1 for r in self.reviews.values() if r.get("verdict") == v) for v in VERDICTS}

    def spot_done(self) -> int:
        """How many examples of the spot-check sample have a verdict."""
        return sum(1 for i in self.spot or () if self.review(i).get("verdict"))

    def matches(self, index: int, spec: str) -> bool:
        review = self.review(index)
        if spec == "all":
            return True
        if spec == "flagged":
            return self.is_flagged(index)
        if spec == "unreviewed":
            return not review.get("verdict")
        if spec in VERDICTS:
            return review.get("verdict") == spec
        if spec in DUPLICATE_FILTERS:
            return index in self.duplicate_of
        if spec.startswith("/"):
            needle = spec[1:].lower()
            ex = self.result.examples[index]
            return any(needle in m["content"].lower() for m in ex.messages + (ex.rejected or []))
        return any(f.rule == spec for f in self.flags.get(index, ()))

    def _apply(self, spec: str, keep_position: bool = True) -> None:
        current = self.current() if keep_position else None
        self.filter = spec
        self.view = [i for i in range(len(self.result.examples)) if self.matches(i, spec)]
        self.pos = self.view.index(current) if current in self.view else 0

    def _remember(self) -> None:
        """Store the example shown as the place to reopen at (committed; only when it changed)."""
        index = self.current()
        if index is not None and self.hashes[index] != self.remembered:
            self.store.set_meta("position", self.hashes[index])
            self.remembered = self.hashes[index]

    # ---- moving ----
    def go_to_line(self, line: int) -> bool:
        """Show the example read from `line` of the file (leaving a filter that hides it); False if none is."""
        index = next((i for i, ex in enumerate(self.result.examples) if ex.line == line), None)
        if index is None:
            return False
        if index not in self.view:
            self._apply("all", keep_position=False)
        self.pos = self.view.index(index)
        self._remember()
        return True

    def move(self, delta: int) -> None:
        self.pos = max(0, min(len(self.view) - 1, self.pos + delta))
        self._remember()

    def set_filter(self, spec: str) -> bool:
        """Show the examples `spec` matches, staying on the current one if it is among them; False if unknown.
        A filter (not a search) is stored, so reopening shows it again."""
        if not known_filter(spec):
            return False
        self.spot = None
        self._apply(spec)
        if not spec.startswith("/"):
            self.store.set_meta("filter", spec)
        self._remember()
        return True

    def next_flagged(self) -> bool:
        """Move to the next flagged example of the view, wrapping around; False if there is none."""
        for step in range(1, len(self.view) + 1):
            pos = (self.pos + step) % len(self.view)
            if self.is_flagged(self.view[pos]):
                self.pos = pos
                self._remember()
                return True
        return False

    def start_spot_check(self, n: int = SPOT_CHECK_N, seed: int = SPOT_CHECK_SEED) -> None:
        """Review a seeded random sample of `n` examples, starting at its first unreviewed one."""
        total = len(self.result.examples)
        self.spot = random.Random(seed).sample(range(total), min(n, total))
        self.view = list(self.spot)
        self.filter = f"spot-check of {len(self.spot)}"
        unreviewed = [p for p, i in enumerate(self.view) if not self.review(i).get("verdict")]
        self.pos = unreviewed[0] if unreviewed else 0
        self._remember()

    # ---- reviewing: each change is committed before the method returns ----
    def set_verdict(self, verdict: str) -> None:
        """The verdict of the example shown, then the next one."""
        key = self.hashes[self.current()]
        self.store.set_verdict(key, verdict)
        self.reviews[key] = self.store.get(key)
        if self.pos < len(self.view) - 1:
            self.pos += 1
        self._remember()

    def bulk_verdict(self, verdict: str) -> int:
        """The verdict of every example in the view, as one undo step; how many."""
        self.store.set_verdicts([self.hashes[i] for i in self.view], verdict)
        self.reviews = self.store.all()
        return len(self.view)

    def set_note(self, index: int, note: str) -> None:
        key = self.hashes[index]
        self.store.set_note(key, note)
        self.reviews[key] = self.store.get(key)

    def set_answer(self, index: int, answer: str) -> bool:
        """Replace the text of the example's last (assistant) turn with `answer`; False if that is no change."""
        messages = self.messages(index)
        if answer == messages[-1]["content"]:
            return False
        key = self.hashes[index]
        self.store.set_edit(key, messages[:-1] + [{**messages[-1], "content": answer}])  # keeps its weight, reasoning, parts
        self.reviews[key] = self.store.get(key)
        return True

    def flip(self, index: int) -> bool:
        """Reverse a preference row (a pair's chosen and rejected change places, an unpaired row's label turns
        over), or put it back; committed. False for a demonstration, which has nothing to flip."""
        if self.result.examples[index].kind == "sft":
            return False
        key = self.hashes[index]
        self.store.set_flipped(key, not self.review(index).get("flipped"))
        self.reviews[key] = self.store.get(key)
        return True

    def undo(self) -> list[str]:
        """Reverse the last change (one verdict, note, edit, flip or bulk verdict); the hashes it touched.
        Undoing one example shows it again, when the view holds it."""
        touched = self.store.undo()
        for key in touched:
            review = self.store.get(key)
            if review is None:
                self.reviews.pop(key, None)
            else:
                self.reviews[key] = review
        if len(touched) == 1 and touched[0] in self.hashes:
            index = self.hashes.index(touched[0])
            if index in self.view:
                self.pos = self.view.index(index)
        self._remember()
        return touched

    # ---- writing new files (called from a worker thread; the source is never touched) ----
    def split(self, out_dir: str | Path) -> dict[str, dict]:
        """train/validation/test beside each other in `out_dir`: seed 0, JSONL, as `tunedeck data split`."""
        from engine.data.split import write_splits

        return write_splits(self.result, self.path, out_dir)

    def export(self, out: str | Path) -> dict:
        """The reviewed set: as `tunedeck data export --drop-rule errors --drop-duplicates near`."""
        from engine.data.export import REVIEWED, export_chosen

        return export_chosen(self.result, out, REVIEWED, dict(self.reviews))
