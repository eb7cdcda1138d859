"""Pick one run from a list (the Eval screen offers the runs that have a report)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList
from textual.widgets.option_list import Option


class RunChooser(ModalScreen[str | None]):
    """Enter picks the highlighted run (its id); Esc answers None."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="choose.cancel"),
        Binding("j", "move(1)", "Down", show=False, id="choose.down"),
        Binding("k", "move(-1)", "Up", show=False, id="choose.up"),
    ]

    def __init__(self, title: str, choices: list[tuple[str, str]], current: str | None = None):
        """`choices`: (run id, label) pairs, shown in this order."""
        super().__init__()
        self.choose_title = title
        self.choices = choices
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="prompt-box") as box:
            box.border_title = self.choose_title
            box.border_subtitle = "Enter to open · Esc to cancel"
            yield OptionList(*(Option(label, id=run_id) for run_id, label in self.choices), id="choose-list")

    def on_mount(self) -> None:
        options = self.query_one("#choose-list", OptionList)
        ids = [run_id for run_id, _ in self.choices]
        options.highlighted = ids.index(self.current) if self.current in ids else 0
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_move(self, delta: int) -> None:
        options = self.query_one("#choose-list", OptionList)
        options.action_cursor_down() if delta > 0 else options.action_cursor_up()

    def action_cancel(self) -> None:
        self.dismiss(None)
