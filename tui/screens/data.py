"""Data mode (3): open a dataset, see its statistics, review one example at a time by keyboard.

Loading, lint and dedup run in a worker: the first example shows at once, the rest
is indexed behind it. The review itself is a ReviewSession (tui/review_session.py):
every verdict, note and edit goes to the review store (SQLite beside the dataset) and
is committed before the next example is shown, so quitting or a killed terminal loses
nothing and reopening resumes at the same example. This screen keeps the keys, the
dialogs and the drawing.

A preference pair shows its prompt, then the chosen and the rejected completion (side by
side on a wide terminal, stacked at 80 columns): g accepts it, b rejects it (export drops
it), w swaps chosen and rejected (export writes them swapped), n notes. An unpaired (KTO)
row shows its label, and w flips it.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from engine.data.lint import RULES
from engine.data.review import VERDICTS
from tui.messages import DatasetExported, DatasetIndexing, DatasetLoaded, FirstExample, SplitWritten, TemplateLoaded
from tui.review_session import FILTERS, SPOT_CHECK_N, SPOT_CHECK_SEED, ReviewSession, examine
from tui.screens.base import ModeScreen
from tui.screens.edit import EditAnswer
from tui.screens.prompt import Confirm, PathPrompt
from tui.widgets.review_view import example_body, position_line, review_body


class DataScreen(ModeScreen):
    MODE = "data"
    TITLE = "Data"
    BINDINGS = [
        Binding("j,down", "move(1)", "Next", show=False, id="data.next"),
        Binding("k,up", "move(-1)", "Previous", show=False, id="data.prev"),
        Binding("g", "verdict('good')", "Good", id="data.good"),
        Binding("b", "verdict('bad')", "Bad", id="data.bad"),
        Binding("s", "verdict('skip')", "Skip", id="data.skip"),
        Binding("w", "flip", "Swap/flip", id="data.flip"),
        Binding("u", "undo", "Undo", id="data.undo"),
        Binding("n", "note", "Note", show=False, id="data.note"),
        Binding("e", "edit", "Edit", show=False, id="data.edit"),
        Binding("slash", "search", "Search", show=False, id="data.search"),
        Binding("f", "filter", "Filter", id="data.filter"),
        Binding("right_square_bracket", "next_flagged", "Next flagged", show=False, id="data.next_flagged"),
        Binding("r", "spot_check", "Spot-check", show=False, id="data.spot"),
        Binding("B", "bulk", "Bulk verdict", show=False, id="data.bulk"),
        Binding("t", "toggle_template", "Template", id="data.template"),
        Binding("S", "split", "Split", show=False, id="data.split"),
        Binding("x", "export", "Export", show=False, id="data.export"),
        Binding("o", "open", "Open", id="data.open"),
        Binding("M", "choose_model", "Model", show=False, id="data.model"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.path: Path | None = None  # the dataset open or being loaded
        self.session: ReviewSession | None = None  # once it is loaded
        self.first = None  # the first example, shown while the rest is indexed
        self.show_template = False
        self.template = None
        self.loading = False
        self.go_to: int | None = None  # the file line to show once the dataset is loaded

    def compose_body(self) -> ComposeResult:
        yield Static("", id="data-head")
        yield Static("", id="data-pos")
        with VerticalScroll(id="data-body"):
            yield Static("", id="data-example")

    def on_mount(self) -> None:
        path = getattr(self.app, "data_path", None)
        if path is not None:
            self.open_path(Path(path))
        else:
            self._render_empty()

    def on_unmount(self) -> None:
        if self.session is not None:
            self.session.close()

    # ---- opening ----
    def _render_empty(self) -> None:
        self.query_one("#data-head", Static).update(Text("No dataset open.", style="bold"))
        self.query_one("#data-pos", Static).update("")
        self.query_one("#data-example", Static).update(Text(
            "Press o and give a file: JSONL or JSON (chat messages, Alpaca, ShareGPT, prompt/completion), "
            "CSV, Parquet, plain text, or a datasets save_to_disk directory.\n\n"
            "From a shell: tunedeck data review FILE, or tunedeck data lint|dedup|stats|split|export FILE."))

    def action_open(self) -> None:
        def chosen(value: str | None) -> None:
            if value:
                self.open_path(Path(value).expanduser())

        self.app.push_screen(PathPrompt("Open a dataset", "Dataset file or directory:",
                                        str(self.path or "")), chosen)

    def open_path(self, path: Path, line: int | None = None) -> None:
        """Open a dataset; at the example read from `line` of the file when given (a diagnosis names it)."""
        self.go_to = line
        if self.session is not None and self.session.path == path and line is not None:
            self._go_to_line()
            return
        if self.session is not None:
            self.session.close()
            self.session = None
        self.path, self.first, self.loading = path, None, True
        self.query_one("#data-head", Static).update(Text(f"{path.name} · loading…", style="bold"))
        self.load_dataset(path)

    @work(thread=True, exclusive=True, group="data-load", name="loading the dataset", exit_on_error=False)
    def load_dataset(self, path: Path) -> None:
        from textual.worker import get_current_worker

        from engine.data.load import first_example, load_examples

        worker = get_current_worker()
        first = first_example(path)
        if first is not None:
            self.post_message(FirstExample(path, first))

        def progress(rows: int) -> None:
            if worker.is_cancelled:
                raise KeyboardInterrupt
            self.post_message(DatasetIndexing(path, rows))

        try:
            result = load_examples(path, progress=progress)
        except KeyboardInterrupt:
            return
        flags, clusters, stats = examine(result)
        if not worker.is_cancelled:
            self.post_message(DatasetLoaded(path, result, flags, clusters, stats))

    def on_dataset_indexing(self, message: DatasetIndexing) -> None:
        if self.loading and message.path == self.path:
            self.query_one("#data-head", Static).update(Text(f"{self.path.name} · indexing {message.rows:,} rows…",
                                                             style="bold"))

    def on_first_example(self, message: FirstExample) -> None:
        if message.path == self.path and self.session is None:
            self.first = message.example
            self.query_one("#data-pos", Static).update(Text(f"example 1 · line {message.example.line} · "
                                                            "indexing the rest…", style="dim"))
            first = message.example
            self.query_one("#data-example", Static).update(example_body(first, first.messages, self.app.size.width))

    def on_dataset_loaded(self, message: DatasetLoaded) -> None:
        if message.path != self.path:
            return
        self.loading = False
        self.session = ReviewSession(message.path, message.result, message.flags, message.clusters, message.stats)
        self.refresh_bindings()  # w shows where the dataset has preference rows
        if self.go_to is not None:
            self._go_to_line()
        else:
            self.refresh_view()

    def _go_to_line(self) -> None:
        if not self.session.go_to_line(self.go_to):
            self.notify(f"{self.path.name} has no example at line {self.go_to}", severity="warning")
        self.go_to = None
        self.refresh_view()

    # ---- drawing ----
    def refresh_view(self) -> None:
        session = self.session
        if session is None:
            return
        self._render_head()
        index = session.current()
        pos_line = self.query_one("#data-pos", Static)
        body = self.query_one("#data-example", Static)
        if index is None:
            pos_line.update(Text(f"filter {session.filter}: no examples match · f to change the filter"))
            body.update("")
            return
        pos_line.update(position_line(session, index))
        template = None
        if self.show_template:
            from engine.data.template import ChatTemplate

            template = self.template or ChatTemplate()
        body.update(review_body(session, index, self.app.size.width, template))
        self.query_one("#data-body", VerticalScroll).scroll_home(animate=False)

    def on_resize(self) -> None:
        if self.session is not None and self.session.preference_rows:
            self.refresh_view()  # a pair goes side by side, or back to stacked

    def _render_head(self) -> None:
        from engine.data.stats import sparkline

        s = self.session.stats
        counts = self.session.counts()
        head = Text()
        head.append(f"{self.path.name}", "bold")
        head.append(f" · {s['examples']:,} ex · {s['skipped']} skipped · {s['flagged_examples']} flagged · "
                    f"{s.get('duplicates', 0)} dup · ✓{counts['good']} ✗{counts['bad']} ~{counts['skip']}\n")
        h = s["answer_chars"]
        head.append(f"answer chars p50 {h['p50']} p90 {h['p90']} max {h['max']} ")
        head.append(sparkline(h["bins"]), "bold")
        flags = s["flags"]
        if flags:
            top = sorted(flags.items(), key=lambda kv: -kv[1])[:2]
            head.append("  " + " ".join(f"{rule} {n}" for rule, n in top), "dim")
        self.query_one("#data-head", Static).update(head)

    def _ready(self) -> bool:
        if self.session is None:
            self.notify("Open a dataset first (o)." if not self.loading else "Still loading…", severity="warning")
            return False
        return True

    # ---- keys: the session commits each change before the view is drawn ----
    def action_move(self, delta: int) -> None:
        if not self._ready() or not self.session.view:
            return
        self.session.move(delta)
        self.refresh_view()

    def action_verdict(self, verdict: str) -> None:
        if not self._ready() or self.session.current() is None:
            return
        self.session.set_verdict(verdict)
        self.refresh_view()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "flip":  # only datasets with preference rows show the key
            return self.session is not None and self.session.preference_rows > 0
        return True

    def action_flip(self) -> None:
        if not self._ready() or (index := self.session.current()) is None:
            return
        if not self.session.flip(index):
            self.notify("w swaps a preference pair's chosen and rejected, or flips a KTO label: this example "
                        "is a demonstration.", severity="warning")
            return
        self.refresh_view()

    def action_undo(self) -> None:
        if not self._ready():
            return
        touched = self.session.undo()
        if not touched:
            self.notify("Nothing to undo.")
            return
        self.notify(f"Undone ({len(touched)} example{'s' if len(touched) != 1 else ''}).")
        self.refresh_view()

    def action_note(self) -> None:
        if not self._ready() or (index := self.session.current()) is None:
            return
        session = self.session

        def chosen(value: str | None) -> None:
            if value is not None:
                session.set_note(index, value)
                self.refresh_view()

        self.app.push_screen(PathPrompt("Note", "A note on this example:", session.review(index).get("note") or ""),
                             chosen)

    def action_edit(self) -> None:
        if not self._ready() or (index := self.session.current()) is None:
            return
        if self.session.result.examples[index].kind == "pair":
            self.notify("A pair's completions are not edited here: w swaps them, b rejects the pair.",
                        severity="warning")
            return
        session = self.session

        def edited(value: str | None) -> None:
            if value is not None and session.set_answer(index, value):
                self.refresh_view()

        self.app.push_screen(EditAnswer(session.messages(index)[-1]["content"]), edited)

    def action_search(self) -> None:
        if not self._ready():
            return

        def chosen(value: str | None) -> None:
            if value:
                self.set_filter("/" + value)

        self.app.push_screen(PathPrompt("Search", "Show examples containing:", ""), chosen)

    def action_filter(self) -> None:
        if not self._ready():
            return

        def chosen(value: str | None) -> None:
            if value:
                self.set_filter(value.strip())

        rules = ", ".join(r for r in RULES if r in self.session.stats.get("flags", {}))
        self.app.push_screen(PathPrompt(
            "Filter", ", ".join(FILTERS) + ", or a rule" + (f" ({rules})" if rules else "") + ":",
            self.session.filter), chosen)

    def set_filter(self, spec: str) -> None:
        if not self.session.set_filter(spec):
            self.notify(f"Unknown filter {spec!r}.", severity="warning")
            return
        self.refresh_view()

    def action_next_flagged(self) -> None:
        if not self._ready() or not self.session.view:
            return
        if self.session.next_flagged():
            self.refresh_view()
        else:
            self.notify("No flagged example in this view.")

    def action_spot_check(self) -> None:
        if not self._ready():
            return

        def chosen(value: str | None) -> None:
            if value is None:
                return
            try:
                n = int(value or SPOT_CHECK_N)
            except ValueError:
                self.notify(f"Not a number: {value!r}", severity="warning")
                return
            self.session.start_spot_check(n)
            self.refresh_view()

        self.app.push_screen(PathPrompt("Spot-check", f"Review how many random examples (seed {SPOT_CHECK_SEED})?",
                                        str(SPOT_CHECK_N)), chosen)

    def action_bulk(self) -> None:
        if not self._ready() or not self.session.view:
            return
        count = len(self.session.view)

        def verdict_chosen(value: str | None) -> None:
            if value not in VERDICTS:
                if value:
                    self.notify("Verdict must be good, bad or skip.", severity="warning")
                return

            def confirmed(yes: bool | None) -> None:
                if yes:
                    marked = self.session.bulk_verdict(value)
                    self.notify(f"Marked {marked} examples {value} (u undoes it).")
                    self.refresh_view()

            self.app.push_screen(Confirm("Bulk verdict", f"Mark all {count} examples of filter "
                                                         f"'{self.session.filter}' as {value}?"), confirmed)

        self.app.push_screen(PathPrompt("Bulk verdict", f"Verdict for all {count} examples shown "
                                                        f"(good, bad, skip):", "bad"), verdict_chosen)

    def action_toggle_template(self) -> None:
        self.show_template = not self.show_template
        self.refresh_view()

    def action_choose_model(self) -> None:
        def chosen(value: str | None) -> None:
            if value:
                self.load_template(value)

        self.app.push_screen(PathPrompt("Model", "Model directory or cached repo id (its tokenizer and "
                                                 "chat template):", ""), chosen)

    @work(thread=True, exclusive=True, group="data-model", name="loading the tokenizer", exit_on_error=False)
    def load_template(self, model: str) -> None:
        from textual.worker import get_current_worker

        from engine.data.template import LightTokenizer

        tokenizer = LightTokenizer(model)
        if not get_current_worker().is_cancelled:
            self.post_message(TemplateLoaded(tokenizer))

    def on_template_loaded(self, message: TemplateLoaded) -> None:
        self.template = message.tokenizer
        self.show_template = True
        self.refresh_view()

    # ---- new files, written in workers by the session (the same engine calls as the command line) ----
    def _default_out_dir(self) -> Path:
        import os

        parent = self.path.resolve().parent
        return parent if os.access(parent, os.W_OK) else self.app.workspace / "data"

    def action_split(self) -> None:
        if not self._ready():
            return
        session = self.session

        def chosen(value: str | None) -> None:
            if value:
                self.split_dataset(session, Path(value).expanduser())

        self.app.push_screen(PathPrompt("Split", "Write train/validation/test (seed 0, duplicates kept on one "
                                                 "side) into this directory:", str(self._default_out_dir())), chosen)

    @work(thread=True, exclusive=True, group="data-write", name="splitting the dataset", exit_on_error=False)
    def split_dataset(self, session: ReviewSession, out_dir: Path) -> None:
        self.post_message(SplitWritten(out_dir, session.split(out_dir)))

    def on_split_written(self, message: SplitWritten) -> None:
        sizes = " / ".join(f"{name} {info['examples']}" for name, info in message.written.items())
        self.notify(f"Split into {message.out_dir}: {sizes}")

    def action_export(self) -> None:
        if not self._ready():
            return
        session = self.session
        stem = self.path.name.split(".")[0]

        def chosen(value: str | None) -> None:
            if value:
                self.export_dataset(session, Path(value).expanduser())

        self.app.push_screen(PathPrompt("Export", "Write the reviewed set (bad verdicts, error flags and duplicates "
                                                  "removed, edits applied) to:",
                                        str(self._default_out_dir() / f"{stem}.reviewed.jsonl")), chosen)

    @work(thread=True, exclusive=True, group="data-write", name="exporting the dataset", exit_on_error=False)
    def export_dataset(self, session: ReviewSession, out: Path) -> None:
        self.post_message(DatasetExported(out, session.export(out)))

    def on_dataset_exported(self, message: DatasetExported) -> None:
        report = message.report
        self.notify(f"Exported {report['kept']} examples to {message.out}; removed {report['removed']} "
                    f"(see {Path(report['report']).name})")
