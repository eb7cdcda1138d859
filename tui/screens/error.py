"""The one place failures are shown: what happened and what to do."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static


class ErrorScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,enter,q", "dismiss_error", "Close", id="error.close"),
    ]

    def __init__(self, title: str, message: str, advice: str = ""):
        super().__init__()
        self.error_title = title
        self.message = message
        self.advice = advice

    def compose(self) -> ComposeResult:
        with Vertical(id="error-box") as box:
            box.border_title = f"Error: {self.error_title}"
            box.border_subtitle = "Enter or Esc to close"
            yield Static(self.message, id="error-message", markup=False)
            if self.advice:
                yield Static(f"What to do: {self.advice}", id="error-advice", markup=False)

    def action_dismiss_error(self) -> None:
        self.dismiss(None)
