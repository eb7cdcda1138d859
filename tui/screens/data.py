"""Data mode (3): open a dataset, see its statistics, review one example at a time by keyboard.

Loading, lint and dedup run in a worker: the first example shows at once, the rest
is indexed behind it. Every verdict, note and edit goes to the review store (SQLite
beside the dataset) and is committed before the next example is shown, so quitting
or a killed terminal loses nothing and reopening resumes at the same example.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Static

from tui.screens.base import ModeScreen
from tui.widgets.example_view import conversation_text, template_text

SPOT_CHECK_N = 100
SPOT_CHECK_SEED = 0


@dataclass
class DatasetLoaded(Message):
    """Everything the worker found: examples, problems, flags, duplicates, statistics."""

    path: Path
    result: object
    flags: list
    clusters: object
    stats: dict


@dataclass
class FirstExample(Message):
    path: Path
    example: object


class DataScreen(ModeScreen):
    MODE = "data"
    TITLE = "Data"
    BINDINGS = [
        Binding("j,down", "move(1)", "Next", show=False, id="data.next"),
        Binding("k,up", "move(-1)", "Previous", show=False, id="data.prev"),
        Binding("g", "verdict('good')", "Good", id="data.good"),
        Binding("b", "verdict('bad')", "Bad", id="data.bad"),
        Binding("s", "verdict('skip')", "Skip", id="data.skip"),
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
        self.path: Path | None = None
        self.result = None
        self.flags: dict[int, list] = {}
        self.duplicate_of: dict[int, int] = {}
        self.stats: dict = {}
        self.hashes: list[str] = []
        self.reviews: dict[str, dict] = {}
        self.store = None
        self.view: list[int] = []
        self.pos = 0
        self.filter = "all"
        self.spot: list[int] | None = None
        self.show_template = False
        self.template = None
        self.first = None
        self.loading = False
        self.remembered: str | None = None  # the example whose hash is stored as the position

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
        if self.store is not None:
            self.store.close()

    # ---- opening ----
    def _render_empty(self) -> None:
        self.query_one("#data-head", Static).update(Text("No dataset open.", style="bold"))
        self.query_one("#data-pos", Static).update("")
        self.query_one("#data-example", Static).update(Text(
            "Press o and give a file: JSONL or JSON (chat messages, Alpaca, ShareGPT, prompt/completion), "
            "CSV, Parquet, plain text, or a datasets save_to_disk directory.\n\n"
            "From a shell: tunedeck data review FILE, or tunedeck data lint|dedup|stats|split|export FILE."))

    def action_open(self) -> None:
        from tui.screens.prompt import PathPrompt

        def chosen(value: str | None) -> None:
            if value:
                self.open_path(Path(value).expanduser())

        self.app.push_screen(PathPrompt("Open a dataset", "Dataset file or directory:",
                                        str(self.path or "")), chosen)

    def open_path(self, path: Path) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
        self.path, self.result, self.first, self.loading = path, None, None, True
        self.query_one("#data-head", Static).update(Text(f"{path.name} · loading…", style="bold"))
        self.load_dataset(path)

    @work(thread=True, exclusive=True, group="data-load", name="loading the dataset", exit_on_error=False)
    def load_dataset(self, path: Path) -> None:
        from textual.worker import get_current_worker

        from engine.data.dedup import dedup
        from engine.data.lint import lint
        from engine.data.load import first_example, load_examples
        from engine.data.stats import dataset_stats

        worker = get_current_worker()
        first = first_example(path)
        if first is not None:
            self.post_message(FirstExample(path, first))

        def progress(rows: int) -> None:
            if worker.is_cancelled:
                raise KeyboardInterrupt
            self.app.call_from_thread(self._loading_progress, rows)

        try:
            result = load_examples(path, progress=progress)
        except KeyboardInterrupt:
            return
        flags = lint(result.examples)
        # near duplicates cost more than lint; on very large files they come from the command line
        found = dedup(result.examples, 0.8 if len(result.examples) <= 200_000 else None)
        stats = dataset_stats(result.examples, result.problems, flags, found["near"])
        if not worker.is_cancelled:
            self.post_message(DatasetLoaded(path, result, flags, found["near"], stats))

    def _loading_progress(self, rows: int) -> None:
        if self.loading and self.path is not None:
            self.query_one("#data-head", Static).update(Text(f"{self.path.name} · indexing {rows:,} rows…",
                                                             style="bold"))

    def on_first_example(self, message: FirstExample) -> None:
        if message.path == self.path and self.result is None:
            self.first = message.example
            self.query_one("#data-pos", Static).update(Text(f"example 1 · line {message.example.line} · "
                                                            "indexing the rest…", style="dim"))
            self.query_one("#data-example", Static).update(conversation_text(message.example.messages))

    def on_dataset_loaded(self, message: DatasetLoaded) -> None:
        from engine.data.load import content_hash
        from engine.data.review import ReviewStore

        if message.path != self.path:
            return
        self.loading = False
        self.result, self.stats = message.result, message.stats
        self.flags = {}
        for flag in message.flags:
            self.flags.setdefault(flag.index, []).append(flag)
        self.duplicate_of = {i: g[0] for g in message.clusters.groups for i in g[1:]}
        self.hashes = [content_hash(ex.messages) for ex in self.result.examples]
        self.store = ReviewStore.for_dataset(self.path)
        self.reviews = self.store.all()
        self.filter = self.store.get_meta("filter", "all")
        self.spot = None
        self._apply_filter(self.filter, keep_position=False)
        where = self.remembered = self.store.get_meta("position")
        if where in self.hashes:
            index = self.hashes.index(where)
            if index not in self.view:
                self._apply_filter("all", keep_position=False)
            self.pos = self.view.index(index)
        self.refresh_view()

    # ---- what is shown ----
    def current(self) -> int | None:
        return self.view[self.pos] if self.view and 0 <= self.pos < len(self.view) else None

    def _matches(self, i: int, spec: str) -> bool:
        review = self.reviews.get(self.hashes[i]) or {}
        if spec == "all":
            return True
        if spec == "flagged":
            return i in self.flags or i in self.duplicate_of
        if spec == "unreviewed":
            return not review.get("verdict")
        if spec in ("good", "bad", "skip"):
            return review.get("verdict") == spec
        if spec in ("duplicate", "dup"):
            return i in self.duplicate_of
        if spec.startswith("/"):
            needle = spec[1:].lower()
            return any(needle in m["content"].lower() for m in self.result.examples[i].messages)
        return any(f.rule == spec for f in self.flags.get(i, ()))

    def _apply_filter(self, spec: str, keep_position: bool = True) -> None:
        current = self.current() if keep_position else None
        self.filter = spec
        self.view = [i for i in range(len(self.result.examples)) if self._matches(i, spec)]
        self.pos = self.view.index(current) if current in self.view else 0

    def refresh_view(self) -> None:
        if self.result is None:
            return
        self._render_head()
        index = self.current()
        pos_line = self.query_one("#data-pos", Static)
        body = self.query_one("#data-example", Static)
        if index is None:
            pos_line.update(Text(f"filter {self.filter}: no examples match · f to change the filter"))
            body.update("")
            return
        self._remember_position()  # whatever moved it (a key, undo, a filter, a spot-check), before it shows
        ex = self.result.examples[index]
        review = self.reviews.get(self.hashes[index]) or {}
        line = Text()
        line.append(f"{self.pos + 1}/{len(self.view)}", "bold")
        line.append(f" · {'line' if self.result.format in ('jsonl', 'text') else 'row'} "
                    f"{self.result.display_line(ex.line)}")
        if self.filter != "all":
            line.append(f" · filter {self.filter}")
        if self.spot is not None:
            done = sum(1 for i in self.spot if (self.reviews.get(self.hashes[i]) or {}).get("verdict"))
            line.append(f" · spot-check {done}/{len(self.spot)}", "bold")
        verdict = review.get("verdict")
        line.append(" · ")
        line.append(f"[{verdict.upper()}]" if verdict else "[unreviewed]", "reverse" if verdict else "dim")
        if review.get("edit"):
            line.append(" edited", "italic")
        pos_line.update(line)
        body.update(self._example_text(index, review))
        self.query_one("#data-body", VerticalScroll).scroll_home(animate=False)

    def _example_text(self, index: int, review: dict) -> Text:
        ex = self.result.examples[index]
        messages = review.get("edit") or ex.messages
        text = Text()
        for flag in self.flags.get(index, ()):
            text.append(f"⚑ {flag.severity} {flag.rule}: {flag.message}\n", "bold yellow")
        if index in self.duplicate_of:
            kept = self.result.examples[self.duplicate_of[index]]
            text.append(f"⚑ duplicate of {self.result.display_line(kept.line)} (that one is kept)\n", "bold yellow")
        if review.get("note"):
            text.append(f"✎ {review['note']}\n", "italic")
        if text:
            text.append("\n")
        if self.show_template:
            from engine.data.template import ChatTemplate

            template = self.template or ChatTemplate()
            rendered, spans, tokens, trained = template.trained_view(messages)
            text.append_text(template_text(rendered, spans, tokens, trained,
                                           getattr(template, "name", "fallback template")))
        else:
            text.append_text(conversation_text(messages))
        return text

    def _render_head(self) -> None:
        from engine.data.stats import sparkline

        s = self.stats
        counts = {v: sum(1 for r in self.reviews.values() if r.get("verdict") == v) for v in ("good", "bad", "skip")}
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
        if self.result is None:
            self.notify("Open a dataset first (o)." if not self.loading else "Still loading…", severity="warning")
            return False
        return True

    def _remember_position(self) -> None:
        """Store the example shown as the place to reopen at (committed; only when it changed)."""
        index = self.current()
        if index is not None and self.store is not None and self.hashes[index] != self.remembered:
            self.store.set_meta("position", self.hashes[index])
            self.remembered = self.hashes[index]

    # ---- keys ----
    def action_move(self, delta: int) -> None:
        if not self._ready() or not self.view:
            return
        self.pos = max(0, min(len(self.view) - 1, self.pos + delta))
        self.refresh_view()

    def action_verdict(self, verdict: str) -> None:
        if not self._ready() or (index := self.current()) is None:
            return
        key = self.hashes[index]
        self.store.set_verdict(key, verdict)  # committed before the next example shows
        self.reviews[key] = self.store.get(key)
        if self.pos < len(self.view) - 1:
            self.pos += 1
        self.refresh_view()

    def action_undo(self) -> None:
        if not self._ready():
            return
        touched = self.store.undo()
        if not touched:
            self.notify("Nothing to undo.")
            return
        for key in touched:
            review = self.store.get(key)
            if review is None:
                self.reviews.pop(key, None)
            else:
                self.reviews[key] = review
        if len(touched) == 1 and touched[0] in self.hashes:
            index = self.hashes.index(touched[0])
            if index in self.view:
                self.pos = self.view.index(index)
        self.notify(f"Undone ({len(touched)} example{'s' if len(touched) != 1 else ''}).")
        self.refresh_view()

    def action_note(self) -> None:
        from tui.screens.prompt import PathPrompt

        if not self._ready() or (index := self.current()) is None:
            return
        key = self.hashes[index]

        def chosen(value: str | None) -> None:
            if value is not None:
                self.store.set_note(key, value)
                self.reviews[key] = self.store.get(key)
                self.refresh_view()

        self.app.push_screen(PathPrompt("Note", "A note on this example:",
                                        (self.reviews.get(key) or {}).get("note") or ""), chosen)

    def action_edit(self) -> None:
        from tui.screens.edit import EditAnswer

        if not self._ready() or (index := self.current()) is None:
            return
        key = self.hashes[index]
        messages = (self.reviews.get(key) or {}).get("edit") or self.result.examples[index].messages

        def edited(value: str | None) -> None:
            if value is None or value == messages[-1]["content"]:
                return
            self.store.set_edit(key, messages[:-1] + [{"role": "assistant", "content": value}])
            self.reviews[key] = self.store.get(key)
            self.refresh_view()

        self.app.push_screen(EditAnswer(messages[-1]["content"]), edited)

    def action_search(self) -> None:
        from tui.screens.prompt import PathPrompt

        if not self._ready():
            return

        def chosen(value: str | None) -> None:
            if value:
                self.set_filter("/" + value)

        self.app.push_screen(PathPrompt("Search", "Show examples containing:", ""), chosen)

    def action_filter(self) -> None:
        from engine.data.lint import RULES
        from tui.screens.prompt import PathPrompt

        if not self._ready():
            return

        def chosen(value: str | None) -> None:
            if value:
                self.set_filter(value.strip())

        rules = ", ".join(r for r in RULES if r in self.stats.get("flags", {}))
        self.app.push_screen(PathPrompt(
            "Filter", "all, flagged, unreviewed, good, bad, skip, duplicate, or a rule"
            + (f" ({rules})" if rules else "") + ":", self.filter), chosen)

    def set_filter(self, spec: str) -> None:
        from engine.data.lint import RULES

        known = {"all", "flagged", "unreviewed", "good", "bad", "skip", "duplicate", "dup"} | set(RULES)
        if spec not in known and not spec.startswith("/"):
            self.notify(f"Unknown filter {spec!r}.", severity="warning")
            return
        self.spot = None
        self._apply_filter(spec)
        if not spec.startswith("/"):
            self.store.set_meta("filter", spec)
        self.refresh_view()

    def action_next_flagged(self) -> None:
        if not self._ready() or not self.view:
            return
        for step in range(1, len(self.view) + 1):
            pos = (self.pos + step) % len(self.view)
            i = self.view[pos]
            if i in self.flags or i in self.duplicate_of:
                self.pos = pos
                self.refresh_view()
                return
        self.notify("No flagged example in this view.")

    def action_spot_check(self) -> None:
        from tui.screens.prompt import PathPrompt

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
            self.start_spot_check(n)

        self.app.push_screen(PathPrompt("Spot-check", f"Review how many random examples (seed {SPOT_CHECK_SEED})?",
                                        str(SPOT_CHECK_N)), chosen)

    def start_spot_check(self, n: int, seed: int = SPOT_CHECK_SEED) -> None:
        total = len(self.result.examples)
        self.spot = random.Random(seed).sample(range(total), min(n, total))
        self.view = list(self.spot)
        self.filter = f"spot-check of {len(self.spot)}"
        unreviewed = [p for p, i in enumerate(self.view) if not (self.reviews.get(self.hashes[i]) or {}).get("verdict")]
        self.pos = unreviewed[0] if unreviewed else 0
        self.refresh_view()

    def action_bulk(self) -> None:
        from tui.screens.prompt import Confirm, PathPrompt

        if not self._ready() or not self.view:
            return
        count = len(self.view)

        def verdict_chosen(value: str | None) -> None:
            if value not in ("good", "bad", "skip"):
                if value:
                    self.notify("Verdict must be good, bad or skip.", severity="warning")
                return

            def confirmed(yes: bool | None) -> None:
                if yes:
                    self.store.set_verdicts([self.hashes[i] for i in self.view], value)
                    self.reviews = self.store.all()
                    self.notify(f"Marked {count} examples {value} (u undoes it).")
                    self.refresh_view()

            self.app.push_screen(Confirm("Bulk verdict", f"Mark all {count} examples of filter "
                                                         f"'{self.filter}' as {value}?"), confirmed)

        self.app.push_screen(PathPrompt("Bulk verdict", f"Verdict for all {count} examples shown "
                                                        f"(good, bad, skip):", "bad"), verdict_chosen)

    def action_toggle_template(self) -> None:
        self.show_template = not self.show_template
        self.refresh_view()

    def action_choose_model(self) -> None:
        from tui.screens.prompt import PathPrompt

        def chosen(value: str | None) -> None:
            if value:
                self.load_template(value)

        self.app.push_screen(PathPrompt("Model", "Model directory or cached repo id (its tokenizer and "
                                                 "chat template):", ""), chosen)

    @work(thread=True, exclusive=True, group="data-model", name="loading the tokenizer", exit_on_error=False)
    def load_template(self, model: str) -> None:
        from engine.data.template import LightTokenizer

        tokenizer = LightTokenizer(model)
        self.app.call_from_thread(self._template_loaded, tokenizer)

    def _template_loaded(self, tokenizer) -> None:
        self.template = tokenizer
        self.show_template = True
        self.refresh_view()

    def _default_out_dir(self) -> Path:
        import os

        parent = self.path.resolve().parent
        return parent if os.access(parent, os.W_OK) else self.app.workspace / "data"

    def action_split(self) -> None:
        from tui.screens.prompt import PathPrompt

        if not self._ready():
            return

        def chosen(value: str | None) -> None:
            if value:
                self.split_dataset(Path(value).expanduser())

        self.app.push_screen(PathPrompt("Split", "Write train/validation/test (seed 0, duplicates kept on one "
                                                 "side) into this directory:", str(self._default_out_dir())), chosen)

    @work(thread=True, exclusive=True, group="data-write", name="splitting the dataset", exit_on_error=False)
    def split_dataset(self, out_dir: Path) -> None:
        from engine.data.export import write_examples
        from engine.data.split import split_indices

        parts = split_indices(self.result.examples, seed=0)
        stem = self.path.name.split(".")[0]
        for name, idx in parts.items():
            write_examples([self.result.examples[i].messages for i in idx], out_dir / f"{stem}.{name}.jsonl")
        sizes = " / ".join(f"{name} {len(idx)}" for name, idx in parts.items())
        self.app.call_from_thread(self.notify, f"Split into {out_dir}: {sizes}")

    def action_export(self) -> None:
        from tui.screens.prompt import PathPrompt

        if not self._ready():
            return
        stem = self.path.name.split(".")[0]

        def chosen(value: str | None) -> None:
            if value:
                self.export_dataset(Path(value).expanduser())

        self.app.push_screen(PathPrompt("Export", "Write the reviewed set (bad verdicts, error flags and duplicates "
                                                  "removed, edits applied) to:",
                                        str(self._default_out_dir() / f"{stem}.reviewed.jsonl")), chosen)

    @work(thread=True, exclusive=True, group="data-write", name="exporting the dataset", exit_on_error=False)
    def export_dataset(self, out: Path) -> None:
        from engine.data.export import export
        from engine.data.lint import ERROR_RULES

        flags = [f for fl in self.flags.values() for f in fl]
        report = export(self.result, out, reviews=dict(self.reviews), flags=flags, drop_rules=ERROR_RULES,
                        duplicates=set(self.duplicate_of))
        self.app.call_from_thread(self.notify, f"Exported {report['kept']} examples to {out}; removed "
                                               f"{report['removed']} (see {Path(report['report']).name})")
