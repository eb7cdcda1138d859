"""Messages between workers, widgets and the app.

Every worker hands its result to the UI as one of these, handled by an `on_<message>` method;
its failure goes to ModeScreen's worker-state handler instead. High-frequency ones (GPU samples,
run updates, indexing progress) carry a complete picture and set `can_replace`, so a busy UI
drops stale ones instead of queueing them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from textual.message import Message

from tui.follow import RunView
from tui.watch import RunNotice

if TYPE_CHECKING:
    from engine.data.dedup import Clusters
    from engine.data.load import Example, LoadResult
    from engine.data.template import LightTokenizer
    from engine.evaluation.ab import ABStore
    from engine.evaluation.errors import ErrorStore
    from engine.runs.protocol import Run
    from tui.screens.plan import Computed


@dataclass
class GpuSampled(Message):
    """A new snapshot from engine.gpu."""

    snapshot: dict

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, GpuSampled)


@dataclass
class RunUpdated(Message):
    """The follower's view of a run; each one holds everything, so a newer one supersedes an older."""

    view: RunView

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunUpdated) and message.view.run_id == self.view.run_id


@dataclass
class RunsListed(Message):
    """Rows for the Runs list: one dict per run."""

    rows: list[dict]

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunsListed)


@dataclass
class ErrorReported(Message):
    """Something failed; the app shows it in a modal with what to do about it."""

    title: str
    message: str
    advice: str = ""


# ---- Plan ----


@dataclass
class PlanComputed(Message):
    """The plan worker's answer for the form as it was read."""

    computed: Computed


# ---- Data ----


@dataclass
class DatasetIndexing(Message):
    """How many rows of the dataset the loader has read so far."""

    path: Path
    rows: int

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, DatasetIndexing) and message.path == self.path


@dataclass
class FirstExample(Message):
    """The dataset's first example, read before the whole file is indexed."""

    path: Path
    example: Example


@dataclass
class DatasetLoaded(Message):
    """Everything the worker found: examples, problems, flags, duplicates, statistics."""

    path: Path
    result: LoadResult
    flags: list
    clusters: Clusters
    stats: dict


@dataclass
class TemplateLoaded(Message):
    """A model's tokenizer and chat template, for the trained-token view."""

    tokenizer: LightTokenizer


@dataclass
class SplitWritten(Message):
    """The split files written: {"train": {"path", "examples"}, ...}."""

    out_dir: Path
    written: dict[str, dict]


@dataclass
class DatasetExported(Message):
    """The export's report (engine.data.export.export)."""

    out: Path
    report: dict


# ---- Runs ----


@dataclass
class RunLaunched(Message):
    """An engine process started for a new run, or for a stopped one resumed."""

    run: Run
    resumed: bool

    @property
    def notice(self) -> str:
        return f"{'Resumed' if self.resumed else 'Started'} {self.run.id}"


@dataclass
class RunsCompared(Message):
    """engine.runs.compare's comparison of the runs the Compare screen was opened on."""

    comparison: dict


@dataclass
class RunNoticed(Message):
    """A run the app watches ended, or raised a warning code for the first time (tui.watch)."""

    notice: RunNotice


# ---- Eval ----


@dataclass
class ReportLoaded(Message):
    """What the worker read: the run shown, its report, the A/B store, the error categories, and the runs
    one could pick."""

    run: Run | None
    report: dict | None
    mtime: float | None
    store: ABStore | None
    errors: ErrorStore | None
    choices: list[tuple[str, str]]


@dataclass
class ReportExported(Message):
    """The evaluation report copied to `path`."""

    path: Path


@dataclass
class DiagnosisReady(Message):
    """engine.evaluation.diagnosis's result for a run."""

    run: Run
    result: dict


# ---- Chat ----


@dataclass
class ChatReply(Message):
    """One message of the chat's model process (engine.chat.server's protocol), as it came."""

    engine: object  # the engine.chat.client.ChatEngine it came from: a replaced engine's are dropped
    reply: dict


@dataclass
class ChatEngineGone(Message):
    """The chat's model process ended; `report` says how (exit code or signal, its log's last line)."""

    engine: object
    report: str
