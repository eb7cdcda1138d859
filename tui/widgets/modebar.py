"""The top line: the five modes with their number keys, the current one marked."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui.modes import MODES


class ModeBar(Static):
    """`tunedeck  1 GPU  2 Plan ...`; the current mode is bracketed so it shows without colour."""

    COMPONENT_CLASSES = {"modebar--current", "modebar--other", "modebar--hint"}

    DEFAULT_CSS = """
    ModeBar { height: 1; background: $panel; }
    ModeBar > .modebar--current { background: $accent; color: $text; text-style: bold; }
    ModeBar > .modebar--other { color: $text-muted; }
    ModeBar > .modebar--hint { color: $text-muted; }
    """

    def __init__(self, current: str, **kwargs):
        super().__init__(**kwargs)
        self.current = current

    def render(self) -> Text:
        text = Text(no_wrap=True, overflow="crop")
        text.append(" tunedeck ", "bold")
        for key, (mode, label) in enumerate(MODES.items(), start=1):
            if mode == self.current:
                text.append(f"[{key} {label}]", self.get_component_rich_style("modebar--current"))
            else:
                text.append(f" {key} {label} ", self.get_component_rich_style("modebar--other"))
        hint = "? keys  ^p commands "
        pad = self.content_size.width - text.cell_len - len(hint)
        if pad > 0:
            text.append(" " * pad)
            text.append(hint, self.get_component_rich_style("modebar--hint"))
        return text
