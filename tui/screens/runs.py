"""Runs mode (4): every run in the workspace; attach, start a new one, resume a stopped one."""

from __future__ import annotations

import re
import time
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from engine.runs.protocol import RESUMABLE_STATES, Run
from engine.runs.workspace import list_runs
from tui.follow import fmt_age, fmt_num
from tui.messages import RunLaunched, RunsListed
from tui.screens.base import ModeScreen
from tui.watch import is_unseen

REFRESH_SECONDS = 2.0


def run_row(run: Run, now: float | None = None) -> dict:
    """What the list shows for one run; reads status.json (judged for crashes) and run.json only."""
    now = time.time() if now is None else now
    status = run.status()
    info = run.info()
    model = status.get("model") or info.get("base_model") or run.config().get("model") or "?"
    step, max_steps = status.get("step"), status.get("max_steps")
    created = info.get("created")
    return {
        "id": run.id,
        "path": str(run.path),
        "state": status.get("state", "unknown"),
        "model": _short(Path(str(model)).name or str(model), 11),
        "method": status.get("method") or info.get("method") or "?",
        "step": "-" if step is None else f"{step}/{max_steps if max_steps else '?'}",
        "loss": fmt_num(status.get("loss")) if status.get("loss") is not None else "-",
        "age": fmt_age(now - created) if isinstance(created, (int, float)) else "?",
        "error": status.get("error"),
        "warnings": status.get("warnings") or [],
        "unseen": is_unseen(run, status),  # ended, and not opened since (tui.watch)
    }


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


RUN_CELL = 19  # characters of a run id in the list: with the other columns, 80 in all


class RunsScreen(ModeScreen):
    MODE = "runs"
    TITLE = "Runs"
    BINDINGS = [
        Binding("enter,a", "attach", "Attach", id="runs.attach"),
        Binding("n", "new_run", "New run", id="runs.new"),
        Binding("r", "resume", "Resume", id="runs.resume"),
        Binding("space", "toggle_mark", "Mark", id="runs.mark"),
        Binding("c", "compare", "Compare", id="runs.compare"),
        Binding("j", "cursor(1)", "Down", show=False, id="runs.down"),
        Binding("k", "cursor(-1)", "Up", show=False, id="runs.up"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self.marked: set[str] = set()  # run ids to compare

    def compose_body(self) -> ComposeResult:
        table = DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        table.add_column("run", key="run")
        table.add_columns("state", "model", "method", "step", "loss", "age")
        yield table
        yield Static("", id="run-detail")

    def on_mount(self) -> None:
        self.query_one("#runs-table", DataTable).focus()
        self.list_runs()
        self.set_interval(REFRESH_SECONDS, self.list_runs)

    def on_screen_resume(self) -> None:
        self.list_runs()

    @work(thread=True, exclusive=True, group="runs-list", name="listing runs", exit_on_error=False)
    def list_runs(self) -> None:
        rows = [run_row(run) for run in list_runs(self.app.workspace)]
        rows.sort(key=lambda r: r["id"], reverse=True)  # ids begin with the time: newest first
        self.post_message(RunsListed(rows))

    def on_runs_listed(self, message: RunsListed) -> None:
        table = self.query_one("#runs-table", DataTable)
        if message.rows != self.rows:
            current = self.selected()
            self.rows = message.rows
            self.marked &= {row["id"] for row in self.rows}  # a run deleted meanwhile is no longer marked
            table.clear()
            for row in self.rows:
                state = Text(("•" if row["unseen"] else "") + row["state"],
                             style="bold" if row["state"] in {"crashed", "failed"} or row["unseen"] else "")
                table.add_row(self._run_cell(row["id"]), state, row["model"], row["method"], row["step"],
                              row["loss"], row["age"], key=row["id"])
            if current is not None:
                for i, row in enumerate(self.rows):
                    if row["id"] == current["id"]:
                        table.move_cursor(row=i)
        self._show_detail()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_attach()

    def selected(self) -> dict | None:
        table = self.query_one("#runs-table", DataTable)
        if not self.rows or table.cursor_row is None or not 0 <= table.cursor_row < len(self.rows):
            return None
        return self.rows[table.cursor_row]

    def _show_detail(self) -> None:
        detail = self.query_one("#run-detail", Static)
        row = self.selected()
        if row is None:
            detail.update(Text(
                f"No runs in {self.app.workspace / 'runs'} yet.\n"
                "Press n to start one from a config file (today also: tunedeck train CONFIG).",
            ))
            return
        text = Text(no_wrap=False)
        text.append(f"{row['id']}  ", "bold")
        text.append(f"{row['state']}" + (" • not seen yet" if row["unseen"] else "") + "\n")
        text.append(f"{row['path']}\n", "dim")
        if row["error"]:
            text.append(f"{row['error']}\n")
        for w in row["warnings"][:2]:
            text.append(f"warning: {w if isinstance(w, str) else w.get('message', w)}\n")
        hint = "Enter attach · n new run"
        if row["state"] in RESUMABLE_STATES:
            hint += " · r resume"
        hint += (f" · space mark · c compare ({len(self.marked)} marked)" if self.marked
                 else " · space mark to compare")
        text.append(hint, "dim")
        detail.update(text)

    def action_cursor(self, delta: int) -> None:
        table = self.query_one("#runs-table", DataTable)
        table.action_cursor_down() if delta > 0 else table.action_cursor_up()

    def _run_cell(self, run_id: str) -> str:
        """The end of the run's id (without its date: the age column says when; any unique end of an id names
        the run), after a ✓ when it is marked; no room is taken while nothing is (80 columns are tight). The
        pane below shows the whole id."""
        shown = run_id[9:] if re.match(r"\d{8}-", run_id) else run_id
        if len(shown) > RUN_CELL:
            shown = "…" + shown[-(RUN_CELL - 1):]
        if not self.marked:
            return shown
        return f"{'✓' if run_id in self.marked else ' '} {shown}"

    def action_toggle_mark(self) -> None:
        """Mark or unmark the highlighted run for comparing, then move down, to mark the next one quickly."""
        row = self.selected()
        if row is None:
            return
        self.marked ^= {row["id"]}
        table = self.query_one("#runs-table", DataTable)
        for each in self.rows:
            table.update_cell(each["id"], "run", self._run_cell(each["id"]), update_width=True)
        self.action_cursor(1)
        self._show_detail()

    def action_compare(self) -> None:
        from tui.screens.compare import CompareScreen

        if len(self.marked) < 2:
            self.notify("Mark two or more runs with space, then press c to compare them.", severity="warning")
            return
        # Oldest first (ids begin with their start time): run A is the earliest.
        self.app.push_screen(CompareScreen([Run(Path(row["path"])) for row in reversed(self.rows)
                                            if row["id"] in self.marked]))

    def action_attach(self) -> None:
        row = self.selected()
        if row is None:
            self.notify("No run to attach to; press n to start one.", severity="warning")
            return
        self.open_monitor(Run(Path(row["path"])))

    def open_monitor(self, run: Run) -> None:
        from tui.screens.monitor import MonitorScreen

        self.app.push_screen(MonitorScreen(run))

    def action_new_run(self) -> None:
        from tui.screens.prompt import PathPrompt

        def chosen(path: str | None) -> None:
            if path:
                self.start_run(Path(path).expanduser())

        self.app.push_screen(PathPrompt("New run", "Train with this config file (YAML):", ""), chosen)

    def action_resume(self) -> None:
        row = self.selected()
        if row is None:
            self.notify("No run selected.", severity="warning")
        elif row["state"] not in RESUMABLE_STATES:
            self.notify(f"{row['id']} is {row['state']}: only a stopped, failed, crashed or unknown run resumes.",
                        severity="warning")
        else:
            self.resume_run(Run(Path(row["path"])))

    @work(thread=True, exclusive=True, group="launch", name="starting the run", exit_on_error=False)
    def start_run(self, config_path: Path) -> None:
        from engine.runs.launch import start_detached

        self.post_message(RunLaunched(start_detached(config_path, self.app.workspace), resumed=False))

    @work(thread=True, exclusive=True, group="launch", name="resuming the run", exit_on_error=False)
    def resume_run(self, run: Run) -> None:
        from engine.runs.launch import resume_detached

        self.post_message(RunLaunched(resume_detached(run), resumed=True))

    def on_run_launched(self, message: RunLaunched) -> None:
        self.notify(message.notice)
        self.open_monitor(message.run)
