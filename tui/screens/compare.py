"""Compare (from Runs: mark runs with space, press c): two or more runs side by side.

Each run has a letter (A, B, ...): its column in the tables and its marker in the overlaid loss and
eval-loss plots, so the screen reads the same without colour. Below the plots: the run facts, the
configuration keys that differ, the held-out metrics and the forgetting check (engine.runs.compare
builds them, the same rows `tunedeck compare` prints), then what is missing or damaged per run.
Reading the runs happens in a worker; the screen only draws.
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Static

from engine.runs.compare import fit, table_sections
from engine.runs.protocol import Run
from tui.follow import BucketSeries
from tui.messages import RunsCompared
from tui.screens.base import ModeScreen
from tui.widgets.plot import BraillePlot, PlotSeries

LABEL_WIDTH = 20
PLOT_POINTS = 128  # per curve: enough for a plot's width in braille dots, whatever the run's length


class CompareScreen(ModeScreen):
    MODE = "runs"
    TITLE = "Compare runs"
    BINDINGS = [
        Binding("escape,backspace", "back", "Runs", id="compare.back"),
        Binding("j", "scroll(3)", "Down", show=False, id="compare.down"),
        Binding("k", "scroll(-3)", "Up", show=False, id="compare.up"),
        Binding("R", "reload", "Reload", id="compare.reload"),
    ]

    def __init__(self, runs: list[Run]):
        super().__init__()
        self.runs = runs
        self.comparison: dict | None = None

    def compose_body(self) -> ComposeResult:
        head = Text(f"Comparing {len(self.runs)} runs", style="bold")
        head.append("  j/k scroll · R reload · esc back to Runs", "dim")
        yield Static(head, id="cmp-head")
        with VerticalScroll(id="cmp-body", can_focus=True):
            yield Static(f"Reading {len(self.runs)} runs…", id="cmp-legend")
            with Horizontal(id="cmp-plots"):
                yield BraillePlot("train loss", "no run logged a loss", id="cmp-loss")
                yield BraillePlot("eval loss", "no run was evaluated", id="cmp-eval")
            yield Static("", id="cmp-table")
            yield Static("", id="cmp-notes")

    def on_mount(self) -> None:
        self.query_one("#cmp-body", VerticalScroll).focus()
        self.compare()

    @work(thread=True, exclusive=True, group="compare", name="comparing the runs", exit_on_error=False)
    def compare(self) -> None:
        from engine.runs.compare import compare_runs

        self.post_message(RunsCompared(compare_runs(self.runs)))

    def on_runs_compared(self, message: RunsCompared) -> None:
        self.comparison = message.comparison
        entries = self.comparison["runs"]
        self.query_one("#cmp-legend", Static).update(legend(entries))
        for plot_id, name in (("#cmp-loss", "loss"), ("#cmp-eval", "eval_loss")):
            self.query_one(plot_id, BraillePlot).set_series(
                [PlotSeries(short_id(e["run_id"]), downsample(e["curves"][name]), marker=e["letter"]) for e in entries])
        self._render_table()
        self.query_one("#cmp-notes", Static).update(notes_view(entries))

    def on_resize(self) -> None:
        if self.comparison is not None:
            self._render_table()

    def _render_table(self) -> None:
        table = self.query_one("#cmp-table", Static)
        table.update(sections_view(self.comparison, table.content_size.width))

    def action_reload(self) -> None:
        """Read the runs again: a run still training has moved on since the screen opened."""
        self.compare()

    def action_scroll(self, lines: int) -> None:
        self.query_one("#cmp-body", VerticalScroll).scroll_relative(y=lines, animate=False)

    def action_back(self) -> None:
        self.app.pop_screen()


def short_id(run_id: str) -> str:
    """A run id without its leading date and time (20260105-101500-people-3f2a -> people-3f2a)."""
    parts = run_id.split("-", 2)
    return parts[2] if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit() else run_id


def downsample(curve: list) -> list[tuple[float, ...]]:
    series = BucketSeries(PLOT_POINTS)
    for step, value in curve:
        series.add(float(step), value)
    return series.points()


def legend(entries: list[dict]) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    for i, e in enumerate(entries):
        text.append("\n" if i else "")
        text.append(f"{e['letter']} ", "bold reverse")
        text.append(f" {e['run_id']}", "bold")
        text.append(f"  {e['state'] or '?'}")
    return text


def sections_view(comparison: dict, width: int) -> Group:
    """One table per section, all with the same column widths, so the runs' columns line up throughout.
    Long values fold onto more lines, except paths: they keep their end (the file name) on one line."""
    letters = [e["letter"] for e in comparison["runs"]]
    cell = max(8, (width - LABEL_WIDTH) // len(letters) - 2)  # 2: the padding between columns
    tables = []
    for i, (title, rows) in enumerate(table_sections(comparison)):
        table = Table(box=None, expand=True, show_header=i == 0, header_style="bold", pad_edge=False,
                      padding=(0, 1), title=Text(title, style="bold"), title_justify="left")
        table.add_column("", width=LABEL_WIDTH, no_wrap=True, overflow="ellipsis")
        for letter in letters:
            table.add_column(letter, ratio=1, overflow="fold")
        for label, cells in rows:
            table.add_row(label, *(fit(c, cell) if "/" in c else c for c in cells))
        tables.append(table)
    return Group(*tables)


def notes_view(entries: list[dict]) -> Text:
    notes = [(e["letter"], note) for e in entries for note in e["notes"]]
    text = Text()
    text.append("notes", "bold")
    if not notes:
        text.append("\nnothing missing: every run has its config, events and evaluation report", "dim")
    for letter, note in notes:
        text.append(f"\n{letter}  ", "bold")
        text.append(note)
    return text
