"""`?` / F1: every key of the screen underneath, including the ones the footer leaves out."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static


def binding_rows(screen: Screen) -> list[tuple[str, str, str]]:
    """(keys, description, where) for the screen's and the app's bindings, screen first."""
    rows: dict[str, tuple[str, str, str]] = {}
    for key, active in screen.active_bindings.items():
        binding = active.binding
        if not binding.description or binding.action in ("app.show_keys",):
            continue
        where = "global" if active.node is screen.app else "this screen"
        display = screen.app.get_key_display(binding)
        name = f"{where}:{binding.description}"
        if name in rows:
            rows[name] = (f"{rows[name][0]} {display}", binding.description, where)
        else:
            rows[name] = (display, binding.description, where)
    return sorted(rows.values(), key=lambda r: (r[2] != "this screen",))


class KeysScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,q,question_mark,f1", "close", "Close", id="keys.close"),
        Binding("j,down", "scroll(1)", "Down", show=False),
        Binding("k,up", "scroll(-1)", "Up", show=False),
    ]

    def __init__(self, under: Screen):
        super().__init__()
        self.under = under

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        table.add_column(style="dim")
        for keys, description, where in binding_rows(self.under):
            table.add_row(Text(keys), Text(description), Text(where))
        with VerticalScroll(id="keys-box") as box:
            box.border_title = f"Keys: {getattr(self.under, 'TITLE', None) or type(self.under).__name__}"
            box.border_subtitle = "Esc to close · ^p lists every action"
            yield Static(table, id="keys-table")

    def action_scroll(self, lines: int) -> None:
        self.query_one("#keys-box", VerticalScroll).scroll_relative(y=lines, animate=False)

    def action_close(self) -> None:
        self.dismiss(None)
