"""A prompt above two answers, A and B, each in its own scrolling pane: the layout of a blind A/B judgement
(the ids are the Eval screen's A/B view's, so the stylesheet's rules for it apply)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Static

from tui.widgets.eval_views import answer_text


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
        self.query_one("#ab-prompt-text", Static).update(prompt if isinstance(prompt, Text) else answer_text(prompt))
        for side, answer in (("a", a), ("b", b)):
            self.query_one(f"#ab-{side}-text", Static).update("" if answer is None else answer_text(answer))
        same = a is not None and b is not None and a.strip() == b.strip()
        self.query_one("#ab-a", VerticalScroll).border_subtitle = "identical to B" if same else ""
        for name in ("ab-prompt", "ab-a", "ab-b"):
            self.query_one(f"#{name}", VerticalScroll).scroll_home(animate=False)

    def scroll_answers(self, lines: int) -> None:
        for name in ("#ab-a", "#ab-b"):
            self.query_one(name, VerticalScroll).scroll_relative(y=lines, animate=False)
