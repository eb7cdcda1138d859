"""A prompt above two answers, A and B, each in its own scrolling pane: the layout of a blind A/B judgement
(the ids are the Eval screen's A/B view's, so the stylesheet's rules for it apply). Sampled answers can hold
control characters (a shift-out byte switches a real terminal's character set): they show escaped."""

from __future__ import annotations

import re

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Static

from tui.widgets.eval_views import answer_text

CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")  # all but tab and newline


def visible(text: str) -> str:
    return CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class BlindPair(Vertical):
    def compose(self) -> ComposeResult:
        yield Static("", id="ab-progress")
        with VerticalScroll(id="ab-prompt", can_focus=True) as prompt:
            prompt.border_title = "prompt"
            yield Static("", id="ab-prompt-text")
        with Horizontal(id="ab-answers"):
            for side in ("a", "b"):
                with VerticalScroll(id=f"ab-{side}", can_focus=True) as pane:
                    pane.border_title = side.upper()
                    yield Static("", id=f"ab-{side}-text")

    def show(self, progress: Text, prompt: str | Text, a: str | None = None, b: str | None = None) -> None:
        """A pair, from the top of each pane (`a` and `b` None: a message in the prompt pane, no answers)."""
        self.query_one("#ab-progress", Static).update(progress)
        self.query_one("#ab-prompt-text", Static).update(prompt if isinstance(prompt, Text)
                                                         else answer_text(visible(prompt)))
        for side, answer in (("a", a), ("b", b)):
            self.query_one(f"#ab-{side}-text", Static).update("" if answer is None else answer_text(visible(answer)))
        same = a is not None and b is not None and a.strip() == b.strip()
        self.query_one("#ab-a", VerticalScroll).border_subtitle = "identical to B" if same else ""
        for name in ("ab-prompt", "ab-a", "ab-b"):
            self.query_one(f"#{name}", VerticalScroll).scroll_home(animate=False)

    def scroll_answers(self, lines: int) -> None:
        for name in ("#ab-a", "#ab-b"):
            self.query_one(name, VerticalScroll).scroll_relative(y=lines, animate=False)
