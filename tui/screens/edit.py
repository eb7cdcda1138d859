"""Edit an example's answer in a text area: ctrl+s keeps the edit, Esc drops it."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import TextArea


class EditAnswer(ModalScreen[str | None]):
    BINDINGS = [
        Binding("ctrl+s", "save", "Save", id="edit.save", priority=True),
        Binding("escape", "cancel", "Cancel", id="edit.cancel"),
    ]

    def __init__(self, answer: str):
        super().__init__()
        self.answer = answer

    def compose(self) -> ComposeResult:
        with Vertical(classes="prompt-box", id="edit-box") as box:
            box.border_title = "Edit the answer"
            box.border_subtitle = "ctrl+s save · Esc cancel"
            yield TextArea(self.answer, id="edit-area", soft_wrap=True)

    def on_mount(self) -> None:
        self.query_one(TextArea).focus()

    def action_save(self) -> None:
        self.dismiss(self.query_one(TextArea).text)

    def action_cancel(self) -> None:
        self.dismiss(None)
