"""Messages between workers, widgets and the app.

High-frequency ones (GPU samples, run updates) carry a complete picture and
set `can_replace`, so a busy UI drops stale ones instead of queueing them.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from tui.follow import RunView


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
