"""What every mode screen shares: the mode bar, the footer, and forwarding worker failures."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer
from textual.worker import Worker, WorkerState

from tui.messages import ErrorReported
from tui.widgets.modebar import ModeBar


def advice_for(error: BaseException) -> str:
    """What a person can do about an exception, in one sentence."""
    from tui.errors import EXPLAINED_ERRORS

    if isinstance(error, EXPLAINED_ERRORS):
        return ""  # its message already says what to do
    if isinstance(error, PermissionError):
        return "Check that you own the workspace and the file, or pick another workspace."
    if isinstance(error, FileNotFoundError):
        return "Check the path: it does not exist from this machine's point of view."
    if isinstance(error, ImportError):
        return "Part of tunedeck is missing here; reinstall it with `pip install -e .` in the repository."
    if isinstance(error, OSError):
        return "The file system refused; check free disk space and permissions of the workspace."
    return "This looks like a bug in tunedeck; please report it with the message above."


class ModeScreen(Screen):
    """A mode's screen: ModeBar on top, the body from `compose_body`, the Footer below."""

    MODE = ""

    def compose(self) -> ComposeResult:
        yield ModeBar(self.MODE)
        yield from self.compose_body()
        yield Footer(compact=True)

    def compose_body(self) -> ComposeResult:
        yield from ()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        # Worker failures do not bubble on their own; this is the one path to the error modal.
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            error = event.worker.error
            self.post_message(ErrorReported(
                title=f"{event.worker.name or 'background task'} failed",
                message=_describe(error),
                advice=advice_for(error),
            ))


def _where(error: BaseException) -> str:
    """Where an unexpected exception was raised, so a report can point at the line."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return ""
    return f" (at {tb.tb_frame.f_code.co_filename.rsplit('/', 2)[-1]}:{tb.tb_lineno})"


def _describe(error: BaseException) -> str:
    from tui.errors import EXPLAINED_ERRORS

    if isinstance(error, EXPLAINED_ERRORS):
        return str(error)
    if isinstance(error, OSError):
        return f"{type(error).__name__}: {error}"
    return f"{type(error).__name__}: {error}{_where(error)}"
