"""Eval mode (5): the prompted base model against the tuned one on the held-out set.

Opens on the newest run that has `eval/report.json` (o picks another). Three views:
the metrics with deltas (a reference model's column when measured), the forgetting
verdict, latency and prompt cost as ratios, the error categories counted (m); one example
at a time with every side's answer (e, j/k), filtered to the tuned failures or to where
baseline and tuned disagree (f), its error category cycled with c; and the blind A/B
review (r). A/B judgements go to `<run>/eval/ab.sqlite`, error categories to
`errors.sqlite`, each committed before the next pair or example shows
(engine.evaluation.ab, .errors), so a closed terminal loses nothing and reopening resumes
at the next unjudged pair. Reading the report and opening the stores happen in a worker;
failures go to the app's modal.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import ContentSwitcher, Static
from textual.worker import Worker, WorkerState

from engine.core.files import ensure_private_dir
from engine.evaluation.ab import ABStore, Pair, pairs_from_report, row_key, store_path
from engine.evaluation.errors import FILTERS, ErrorStore, filter_rows, next_category, tally
from engine.evaluation.report import read_report, report_path
from engine.runs.protocol import Run, RunError
from engine.runs.workspace import list_runs
from tui.follow import fmt_age
from tui.messages import ReportExported, ReportLoaded
from tui.screens.base import ModeScreen
from tui.widgets.eval_views import (
    answer_text,
    cost_view,
    errors_view,
    example_view,
    forgetting_view,
    metrics_view,
    win_rate_line,
)

VIEWS = (("metrics", "m", "Metrics"), ("examples", "e", "Examples"), ("ab", "r", "A/B review"))
FILTER_WHAT = {"all": "every example", "failures": "the tuned answer misses full marks on the task metric",
               "disagreements": "one of baseline and tuned is right, the other wrong"}


def evaluated_runs(workspace: Path) -> list[Run]:
    """Runs with an evaluation report, newest first (run ids begin with their start time)."""
    return sorted((run for run in list_runs(workspace) if report_path(run).is_file()),
                  key=lambda run: run.id, reverse=True)


def default_export_path(workspace: Path, run: Run) -> Path:
    return workspace / "reports" / f"{run.id}.md"


class EvalScreen(ModeScreen):
    MODE = "eval"
    TITLE = "Eval"
    BINDINGS = [
        Binding("m", "show_view('metrics')", "Metrics", show=False, id="eval.metrics"),
        Binding("e", "show_view('examples')", "Examples", show=False, id="eval.examples"),
        Binding("r", "show_view('ab')", "A/B review", show=False, id="eval.ab"),
        Binding("j", "move(1)", "Next example", show=False, id="eval.next"),
        Binding("k", "move(-1)", "Previous example", show=False, id="eval.prev"),
        Binding("c", "categorise", "Error category", id="eval.category"),
        Binding("f", "filter", "Filter", id="eval.filter"),
        Binding("a", "judge('A')", "A better", id="eval.judge_a"),
        Binding("b", "judge('B')", "B better", id="eval.judge_b"),
        Binding("t", "judge('tie')", "Tie", id="eval.tie"),
        Binding("s", "judge('skip')", "Skip", id="eval.skip"),
        Binding("u", "undo", "Undo", id="eval.undo"),
        Binding("o", "choose_run", "Run", id="eval.choose"),
        Binding("x", "export", "Export report", id="eval.export"),
        Binding("d", "diagnose", "Diagnose", id="eval.diagnose"),
        Binding("R", "reload", "Reload", show=False, id="eval.reload"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.run: Run | None = None
        self.report: dict | None = None
        self.mtime: float | None = None
        self.store: ABStore | None = None
        self.errors: ErrorStore | None = None
        self.categories: dict[str, str] = {}  # example id -> error category, as errors.sqlite holds them
        self.example_filter = "all"  # of engine.evaluation.errors.FILTERS
        self.choices: list[tuple[str, str]] = []
        self.view = "metrics"
        self.index = 0
        self.pair: Pair | None = None
        self.loaded = False
        self.failed = False
        self.wanted: str | None = None  # the run to show: the one chosen with o, else the newest

    # ---- layout ----
    def compose_body(self) -> ComposeResult:
        yield Static("", id="eval-head")
        with ContentSwitcher(initial="eval-empty", id="eval-views"):
            with VerticalScroll(id="eval-empty", classes="empty-panel", can_focus=True) as empty:
                empty.border_title = "Eval"
                yield Static("Reading the runs…", id="eval-empty-text")
            with VerticalScroll(id="eval-metrics", can_focus=True):
                yield Static("", id="eval-table")
                yield Static("", id="eval-forgetting")
                yield Static("", id="eval-cost")
                yield Static("", id="eval-errors")
            with VerticalScroll(id="eval-examples", can_focus=True):
                yield Static("", id="eval-example")
            with Vertical(id="eval-ab"):
                yield Static("", id="ab-progress")
                with VerticalScroll(id="ab-prompt", can_focus=True) as prompt:
                    prompt.border_title = "prompt"
                    yield Static("", id="ab-prompt-text")
                with Horizontal(id="ab-answers"):
                    with VerticalScroll(id="ab-a", can_focus=True) as a:
                        a.border_title = "A"
                        yield Static("", id="ab-a-text")
                    with VerticalScroll(id="ab-b", can_focus=True) as b:
                        b.border_title = "B"
                        yield Static("", id="ab-b-text")

    def on_mount(self) -> None:
        self.load(None)

    def on_unmount(self) -> None:
        for store in (self.store, self.errors):
            if store is not None:
                store.close()

    def on_screen_resume(self) -> None:
        # Back from another mode: pick up a report written meanwhile. Not after a failure,
        # or closing the error modal would read the same broken file and reopen it.
        if self.loaded and not self.failed:
            self.load(self.wanted)

    # ---- loading ----
    def action_reload(self) -> None:
        self.failed = False
        self.load(self.wanted, force=True)

    @work(thread=True, exclusive=True, group="eval-load", name="reading the evaluation report",
          exit_on_error=False)
    def load(self, run_id: str | None, force: bool = False) -> None:
        from textual.worker import get_current_worker

        runs = evaluated_runs(self.app.workspace)
        choices = [(run.id, _choice_label(run)) for run in runs]
        run = next((r for r in runs if r.id == run_id), runs[0] if runs else None)
        if run is None:
            self.post_message(ReportLoaded(None, None, None, None, None, choices))
            return
        mtime = report_path(run).stat().st_mtime
        if not force and self.run is not None and run.id == self.run.id and mtime == self.mtime:
            self.post_message(ReportLoaded(self.run, self.report, self.mtime, self.store, self.errors, choices))
            return
        report = read_report(run)
        pairs = pairs_from_report(report)
        store = ABStore(store_path(run.path, report), pairs) if pairs else None
        errors = ErrorStore(run.path / "eval" / "errors.sqlite") if report.get("rows") else None
        if get_current_worker().is_cancelled:
            for opened in (store, errors):
                if opened is not None:
                    opened.close()
            return
        self.post_message(ReportLoaded(run, report, mtime, store, errors, choices))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR and event.worker.group == "eval-load":
            self.failed = True
            if self.report is None:
                self.query_one("#eval-empty-text", Static).update(Text(
                    "The evaluation report could not be read (see the message). Press R to try again."))
        super().on_worker_state_changed(event)

    def on_report_loaded(self, message: ReportLoaded) -> None:
        self.loaded, self.failed = True, False
        self.choices = message.choices
        same = self.run is not None and message.run is not None and message.run.id == self.run.id
        if message.store is not self.store and self.store is not None:
            self.store.close()
        if message.errors is not self.errors and self.errors is not None:
            self.errors.close()
        self.run, self.report, self.mtime, self.store = message.run, message.report, message.mtime, message.store
        self.errors = message.errors
        self.categories = self.errors.categories() if self.errors else {}
        if not same:
            self.index, self.example_filter = 0, "all"
        rows = (self.report or {}).get("rows") or []
        self.index = min(self.index, max(len(rows) - 1, 0))
        self.pair = self.store.next_unjudged() if self.store else None
        if self.report is None:
            self._render_empty()
        else:
            self._render_report()
        self.refresh_bindings()

    # ---- drawing ----
    def _render_empty(self) -> None:
        self.query_one("#eval-head", Static).update(Text("No evaluated run", style="bold"))
        switcher = self.query_one("#eval-views", ContentSwitcher)
        switcher.current = "eval-empty"
        empty = self.query_one("#eval-empty", VerticalScroll)
        empty.border_title = "Eval · no evaluated run"
        self.query_one("#eval-empty-text", Static).update(Text(
            "No run in this workspace has an evaluation report yet.\n\n"
            "From a shell:\n\n"
            "  tunedeck eval RUN --baseline   the tuned model and the prompted base\n"
            "                                 model on the run's held-out split\n"
            "  tunedeck demo                  the whole path on the CPU: baseline,\n"
            "                                 LoRA, evaluation, report\n\n"
            "This screen then shows the newest evaluated run (R reloads)."))

    def _render_report(self) -> None:
        self._render_head()
        self._render_metrics()
        forgetting = self.query_one("#eval-forgetting", Static)
        forgetting.update(forgetting_view(self.report.get("forgetting")))
        self._render_example()
        self._render_ab()
        self.query_one("#eval-views", ContentSwitcher).current = f"eval-{self.view}"

    def _render_metrics(self) -> None:
        self.query_one("#eval-table", Static).update(metrics_view(self.report, self.run.id))
        self.query_one("#eval-cost", Static).update(cost_view(self.report))
        self._render_errors()

    def _render_errors(self) -> None:
        counted = tally(self.report.get("rows") or [], self.categories) if self.errors else None
        self.query_one("#eval-errors", Static).update(errors_view(counted) if counted else "")

    def _render_head(self) -> None:
        text = Text(no_wrap=True, overflow="ellipsis")
        for view, key, title in VIEWS:
            if view == self.view:
                text.append(f"[{key} {title}]", "reverse bold")
            else:
                text.append(f" {key} {title} ", "dim")
            text.append(" ")
        text.append(f" {self.run.id}", "bold")
        self.query_one("#eval-head", Static).update(text)

    def _render_example(self) -> None:
        rows = self.report.get("rows") or []
        example = self.query_one("#eval-example", Static)
        if not rows:
            example.update(Text("This report kept no per-example outputs.", style="italic"))
            return
        visible = filter_rows(rows, self.example_filter)
        if not visible:
            example.update(Text(f"No example is among the {self.example_filter} "
                                f"({FILTER_WHAT[self.example_filter]}). f shows the next filter.", style="italic"))
            return
        if self.index not in visible:
            self.index = visible[0]
        shown = "" if self.example_filter == "all" else \
            f"{self.example_filter}: {visible.index(self.index) + 1} of {len(visible)} (f)"
        row = rows[self.index]
        example.update(example_view(row, self.index, len(rows), self.categories.get(row_key(row, self.index)), shown))
        self.query_one("#eval-examples", VerticalScroll).scroll_home(animate=False)

    def _render_ab(self) -> None:
        progress = self.query_one("#ab-progress", Static)
        prompt, a, b = (self.query_one(f"#{name}", Static) for name in ("ab-prompt-text", "ab-a-text", "ab-b-text"))
        if self.store is None:
            progress.update(Text(f"No baseline answers in this report: run `tunedeck eval {self.run.id} "
                                 "--baseline` to compare blind.", style="italic"))
            for widget in (prompt, a, b):
                widget.update("")
            return
        summary = self.store.summary()
        line = win_rate_line(summary)
        if self.pair is None:
            line.append(" · all judged (u undoes the last)")
            progress.update(line)
            prompt.update(Text("Every pair has a judgement. The win rate above is the tuned model's "
                               "against the baseline, ties counting half.", style="italic"))
            a.update("")
            b.update("")
            return
        line.append(f" · pair {self.pair.position + 1}")
        progress.update(line)
        prompt.update(answer_text(self.pair.prompt))
        a.update(answer_text(self.pair.a))
        b.update(answer_text(self.pair.b))
        same = self.pair.a.strip() == self.pair.b.strip()
        self.query_one("#ab-a", VerticalScroll).border_subtitle = "identical to B" if same else ""
        for name in ("ab-prompt", "ab-a", "ab-b"):
            self.query_one(f"#{name}", VerticalScroll).scroll_home(animate=False)

    # ---- keys ----
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("judge", "undo"):
            return self.view == "ab" and self.store is not None
        if action in ("categorise", "filter"):
            return self.view == "examples" and self.errors is not None
        if action in ("show_view", "move", "export", "diagnose"):
            return self.report is not None
        if action == "choose_run":
            return len(self.choices) > 1
        return True

    def action_show_view(self, view: str) -> None:
        self.view = view
        self.query_one("#eval-views", ContentSwitcher).current = f"eval-{view}"
        self._render_head()
        focus = {"metrics": "#eval-metrics", "examples": "#eval-examples", "ab": "#ab-a"}[view]
        self.query_one(focus).focus()
        self.refresh_bindings()

    def action_move(self, delta: int) -> None:
        if self.view == "examples":
            visible = filter_rows(self.report.get("rows") or [], self.example_filter)
            if self.index in visible:
                at = max(0, min(len(visible) - 1, visible.index(self.index) + delta))
                self.index = visible[at]
                self._render_example()
        elif self.view == "metrics":
            scroll = self.query_one("#eval-metrics", VerticalScroll)
            scroll.scroll_relative(y=delta * 3, animate=False)
        else:
            for name in ("#ab-a", "#ab-b"):
                self.query_one(name, VerticalScroll).scroll_relative(y=delta * 3, animate=False)

    def action_categorise(self) -> None:
        """The shown example's error category: the next of factual, format, reasoning, other, none."""
        rows = self.report.get("rows") or []
        if self.index not in filter_rows(rows, self.example_filter):
            return
        key = row_key(rows[self.index], self.index)
        category = next_category(self.categories.get(key))
        self.errors.set(key, category)  # committed before anything else shows
        self.categories = self.errors.categories()
        self._render_example()
        self._render_errors()

    def action_filter(self) -> None:
        self.example_filter = FILTERS[(FILTERS.index(self.example_filter) + 1) % len(FILTERS)]
        visible = filter_rows(self.report.get("rows") or [], self.example_filter)
        self._render_example()
        self.notify(f"Examples: {self.example_filter} ({len(visible)})")

    def action_judge(self, choice: str) -> None:
        if self.store is None:
            return
        if self.pair is None:
            self.notify("Every pair is judged; u undoes the last judgement.")
            return
        self.store.judge(self.pair.id, choice)  # committed before the next pair shows
        self.pair = self.store.next_unjudged()
        self._render_ab()

    def action_undo(self) -> None:
        if self.store is None:
            return
        undone = self.store.undo()
        if undone is None:
            self.notify("Nothing to undo.")
            return
        self.pair = self.store.pair(undone)
        self._render_ab()
        self.notify(f"Undone: pair {self.pair.position + 1} is unjudged again.")

    def action_diagnose(self) -> None:
        if self.run is None:
            self.notify("No evaluated run to diagnose yet.", severity="warning")
            return
        from tui.screens.diagnosis import DiagnosisScreen

        self.app.push_screen(DiagnosisScreen(self.run, "eval"))

    def action_choose_run(self) -> None:
        from tui.screens.choose_run import RunChooser

        def chosen(run_id: str | None) -> None:
            if run_id and (self.run is None or run_id != self.run.id):
                self.wanted = run_id
                self.load(run_id, force=True)

        self.app.push_screen(RunChooser("Evaluated runs", self.choices, self.run.id if self.run else None), chosen)

    def action_export(self) -> None:
        from tui.screens.prompt import Confirm, PathPrompt

        run = self.run

        def confirmed(path: Path, yes: bool | None) -> None:
            if yes:
                self.export_report(run, path)

        def chosen(value: str | None) -> None:
            if not value:
                return
            path = Path(value).expanduser()
            if path.exists():
                self.app.push_screen(Confirm("Replace?", f"{path} exists. Replace it with this report?"),
                                     lambda yes: confirmed(path, yes))
            else:
                self.export_report(run, path)

        default = default_export_path(self.app.workspace, run)
        self.app.push_screen(PathPrompt("Export the report", f"Copy {run.id}'s eval/report.md to:",
                                        str(default)), chosen)

    @work(thread=True, exclusive=True, group="eval-export", name="exporting the report", exit_on_error=False)
    def export_report(self, run: Run, path: Path) -> None:
        import shutil

        source = run.path / "eval" / "report.md"
        if not source.is_file():
            raise RunError(f"{run.id} has no eval/report.md; run `tunedeck eval {run.id}` again to write it.")
        ensure_private_dir(path.parent, tighten=False)  # reports/ is created owner-only
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(path)  # a reader never sees half a report
        self.post_message(ReportExported(path))

    def on_report_exported(self, message: ReportExported) -> None:
        self.notify(f"Report written to {message.path}")


def _choice_label(run: Run) -> str:
    age = fmt_age(time.time() - report_path(run).stat().st_mtime)
    return f"{run.id}  (evaluated {age} ago)"
