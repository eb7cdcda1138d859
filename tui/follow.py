"""Following a run's events for the monitor, with memory that stays bounded.

`RunFollower` reads `events.jsonl` by byte offset (through engine.runs.events.EventReader),
so each poll costs in proportion to the new bytes only, and keeps what the
monitor draws: downsampled curves, the latest warnings and errors, command
acknowledgements, the answers of the last two evaluations. A million events fold into a few hundred buckets per curve.
Nothing here touches Textual, so it is tested and benchmarked on its own.
"""

from __future__ import annotations

import difflib
import math
import os
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from engine.runs.events import EventReader
from engine.runs.protocol import Run

# A preference run (engine.training.recipes.preference) also logs TRL's reward margin and accuracy.
REWARD_SERIES = ("rewards/margins", "rewards/accuracies")
SERIES = ("loss", "eval_loss", "learning_rate", "grad_norm", *REWARD_SERIES, *(f"eval_{n}" for n in REWARD_SERIES))


class BucketSeries:
    """A curve kept as at most `capacity` buckets; when full, neighbours merge pairwise.

    Each bucket holds (last x, mean y, min y, max y, count). Adding a point is
    amortised O(1) and memory never grows past `capacity` buckets, whatever
    the run length; the newest points are always in the last (partial) bucket.
    """

    __slots__ = ("capacity", "width", "buckets", "pending", "count", "nonfinite", "last")

    def __init__(self, capacity: int = 256):
        if capacity < 2 or capacity % 2:
            raise ValueError("capacity must be an even number >= 2")
        self.capacity = capacity
        self.width = 1  # raw points per full bucket
        self.buckets: list[list[float]] = []  # [x_last, y_sum, y_min, y_max, n]
        self.pending: list[float] | None = None
        self.count = 0
        self.nonfinite = 0  # NaN/Inf values: counted and shown, never drawn
        self.last: tuple[float, float] | None = None

    def add(self, x: float, y: float) -> None:
        if not math.isfinite(y):
            self.nonfinite += 1
            return
        self.count += 1
        self.last = (x, y)
        p = self.pending
        if p is None:
            self.pending = p = [x, y, y, y, 1]
        else:
            p[0] = x
            p[1] += y
            if y < p[2]:
                p[2] = y
            if y > p[3]:
                p[3] = y
            p[4] += 1
        if p[4] >= self.width:
            self.buckets.append(p)
            self.pending = None
            if len(self.buckets) >= self.capacity:
                self._merge()

    def _merge(self) -> None:
        b = self.buckets
        merged = []
        for i in range(0, len(b) - 1, 2):
            a, c = b[i], b[i + 1]
            merged.append([c[0], a[1] + c[1], min(a[2], c[2]), max(a[3], c[3]), a[4] + c[4]])
        self.buckets = merged
        self.width *= 2

    def points(self) -> list[tuple[float, float, float, float]]:
        """(x, mean, min, max) per bucket, oldest first, the partial bucket last."""
        rows = self.buckets + ([self.pending] if self.pending else [])
        return [(r[0], r[1] / r[4], r[2], r[3]) for r in rows]


@dataclass(frozen=True)
class SampleAnswer:
    """One held-out prompt's answer at the newest evaluation, and at the one before (None at the first)."""

    index: int
    prompt: str
    reference: str
    answer: str
    previous: str | None

    @property
    def changed(self) -> bool:
        return self.previous is not None and self.previous != self.answer


def sample_answers(older: dict | None, newer: dict) -> tuple[SampleAnswer, ...]:
    """The answers of a `sample` event beside those of the event before it, matched by prompt index."""
    before = dict(_samples_of(older)) if older else {}
    return tuple(SampleAnswer(i, str(s.get("prompt", "")), str(s.get("reference", "")), str(s.get("answer", "")),
                              str(before[i].get("answer", "")) if i in before else None)
                 for i, s in _samples_of(newer))


def _samples_of(event: dict) -> list[tuple[int, dict]]:
    """(index, sample) for each well-formed sample; a damaged line never breaks the monitor."""
    samples = event.get("samples")
    return [(s["index"] if isinstance(s.get("index"), int) else i, s)
            for i, s in enumerate(samples if isinstance(samples, list) else []) if isinstance(s, dict)]


def word_diff(old: str, new: str, context: int = 3) -> list[tuple[str, str]]:
    """What changed from `old` to `new`, word by word, as (kind, text) pieces: kind is same, del, add, or gap
    (unchanged words left out, more than `context` away from a change)."""
    a, b = old.split(), new.split()
    pieces: list[tuple[str, str]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            words = a[i1:i2]
            head = words[:context] if pieces else []
            tail = words[-context:] if i2 < len(a) or j2 < len(b) else []
            if len(head) + len(tail) < len(words):
                pieces += [("same", " ".join(head))] if head else []
                pieces += [("gap", "…")] + ([("same", " ".join(tail))] if tail else [])
            else:
                pieces.append(("same", " ".join(words)))
            continue
        if i2 > i1:
            pieces.append(("del", " ".join(a[i1:i2])))
        if j2 > j1:
            pieces.append(("add", " ".join(b[j1:j2])))
    return pieces


@dataclass(frozen=True)
class RunView:
    """A copy of what the monitor draws, safe to hand from the follower thread to the UI."""

    run_id: str
    status: dict
    series: dict[str, list[tuple[float, float, float, float]]]
    series_last: dict[str, tuple[float, float] | None]
    nonfinite: dict[str, int]
    last_log: dict
    warnings: tuple[dict, ...]
    errors: tuple[dict, ...]
    acks: dict[str, dict]
    checkpoints: tuple[dict, ...]
    events: int
    skipped: int
    offset: int
    size: int
    log_tail: tuple[str, ...] = field(default=())
    samples: tuple[SampleAnswer, ...] = ()  # answers to the held-out prompts at the newest evaluation
    sample_steps: tuple[int | None, int | None] = (None, None)  # (that evaluation's step, the one before)

    @property
    def replaying(self) -> bool:
        return self.offset < self.size

    @property
    def replay_fraction(self) -> float:
        return 1.0 if self.size <= 0 else min(1.0, self.offset / self.size)


class RunFollower:
    """Replays a run from its first event, then follows it; never writes to the run."""

    def __init__(self, run: Run, capacity: int = 256, keep: int = 50):
        self.run = run
        self.reader = EventReader(run.events_path)
        self.series = {name: BucketSeries(capacity) for name in SERIES}
        self.warnings: deque[dict] = deque(maxlen=keep)
        self.errors: deque[dict] = deque(maxlen=10)
        self.checkpoints: deque[dict] = deque(maxlen=keep)
        self.acks: OrderedDict[str, dict] = OrderedDict()
        self.sample_events: deque[dict] = deque(maxlen=2)  # the last two evaluations' answers, to compare
        self.keep = keep
        self.last_log: dict = {}
        self.events = 0

    def size(self) -> int:
        try:
            return os.stat(self.run.events_path).st_size
        except OSError:
            return 0

    def poll(self, max_bytes: int | None = None) -> int:
        """Read and fold the events written since the last poll; returns how many."""
        events = self.reader.read_new(max_bytes)
        for event in events:
            self.feed(event)
        return len(events)

    def feed(self, event: dict) -> None:
        self.events += 1
        kind = event.get("type")
        step = event.get("step")
        x = float(step if isinstance(step, (int, float)) else event.get("seq", self.events))
        if kind == "log":
            self.last_log = event
            for name in ("loss", "learning_rate", "grad_norm", *REWARD_SERIES):
                value = event.get(name)
                if isinstance(value, (int, float)):
                    self.series[name].add(x, float(value))
        elif kind == "eval":
            for name in ("eval_loss", *(f"eval_{n}" for n in REWARD_SERIES)):
                value = event.get(name)
                if isinstance(value, (int, float)):
                    self.series[name].add(x, float(value))
        elif kind == "warning":
            self.warnings.append(event)
        elif kind == "error":
            self.errors.append(event)
        elif kind == "checkpoint":
            self.checkpoints.append(event)
        elif kind == "sample":
            self.sample_events.append(event)
        elif kind == "command_ack":
            self.acks[str(event.get("id"))] = event
            while len(self.acks) > self.keep:
                self.acks.popitem(last=False)

    def view(self, status: dict | None = None, log_tail: list[str] | None = None) -> RunView:
        older, newer = ([None, None] + list(self.sample_events))[-2:]
        return RunView(
            run_id=self.run.id,
            status=dict(status or {}),
            series={name: s.points() for name, s in self.series.items()},
            series_last={name: s.last for name, s in self.series.items()},
            nonfinite={name: s.nonfinite for name, s in self.series.items()},
            last_log=dict(self.last_log),
            warnings=tuple(self.warnings),
            errors=tuple(self.errors),
            acks=dict(self.acks),
            checkpoints=tuple(self.checkpoints),
            events=self.events,
            skipped=self.reader.skipped,
            offset=self.reader.offset,
            size=max(self.size(), self.reader.offset),
            log_tail=tuple(log_tail or ()),
            samples=sample_answers(older, newer) if newer else (),
            sample_steps=(newer.get("step") if newer else None, older.get("step") if older else None),
        )


RANK_HEADER = "rank  host          device    memory now / peak GiB util      pid"


def rank_row(entry: dict) -> str:
    """One rank of status.json's `ranks` (engine.runs.protocol.status_ranks) as a line under RANK_HEADER."""
    if entry.get("error"):
        return f"{entry['rank']:>4}  {(entry.get('host') or '?')[:13]:<13} not measured: {entry['error']}"
    util = entry.get("utilization")
    return (f"{entry['rank']:>4}  {(entry.get('host') or '?')[:13]:<13} {(entry.get('device') or '?')[:8]:<8}"
            f"{fmt_gib(entry.get('memory_used')):>12} / {fmt_gib(entry.get('memory_peak')):>4} GiB"
            f"{'n/a' if util is None else f'{util:.0f}%':>5}  {entry.get('pid') or '?':>7}")


def fmt_gib(nbytes: Any) -> str:
    """Bytes as GiB with three significant figures or so: 0.61, 12.3, 141."""
    if not isinstance(nbytes, (int, float)) or not math.isfinite(nbytes):
        return "n/a"
    gib = nbytes / 2**30
    return f"{gib:.2f}" if gib < 10 else f"{gib:.1f}" if gib < 100 else f"{gib:.0f}"


def fmt_duration(seconds: Any) -> str:
    """3725 -> '1h02m'; None -> '?'."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def fmt_age(seconds: Any) -> str:
    """Coarse age for lists: 45s, 12m, 3h, 2d."""
    if not isinstance(seconds, (int, float)) or seconds < 0:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def fmt_num(value: Any) -> str:
    """Compact numbers for curves: 0.000123 -> 1.23e-04, 2.5 -> 2.500, NaN stays visible."""
    if not isinstance(value, (int, float)):
        return "n/a"
    if not math.isfinite(value):
        return str(value)
    a = abs(value)
    if a != 0 and (a < 1e-2 or a >= 1e5):
        return f"{value:.2e}"
    if a >= 100:
        return f"{value:.1f}"
    return f"{value:.3f}"
