"""The Diagnosis view of one run (d on the monitor and on the Eval screen): engine.evaluation.diagnosis
on the run's evidence, each finding with what to try and the config change; `w` writes the next run's
configuration, `j`/`k` pick a training example the findings name and `o` opens it on the Data screen.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from engine.evaluation.findings import MARK_CLOSE, MARK_OPEN
from engine.runs.protocol import Run
from tui.messages import DiagnosisReady, ErrorReported
from tui.screens.base import ModeScreen


def training_lines(result: dict) -> list[tuple[int, str]]:
    """(training line, why it is named) for every training example the findings point at, in order."""
    named = []
    for f in result["findings"]:
        details = f.get("details") or {}
        named += [(ex["line"], f"{f['id']}: rendered example") for ex in details.get("examples", []) if "line" in ex]
        for s in details.get("similar", []):
            named += [(t["line"], f"format: like held-out line {s['line']}") for t in s["training"]]
        named += [(c["training_line"], f"memorization: copied by held-out line {c['line']}")
                  for c in details.get("copied", []) if c.get("training_line")]
    return named


def diagnosis_text(result: dict, chosen: int | None) -> Text:
    t = Text()
    styles = {"healthy": "bold green", "failed": "bold red", "lr_too_high": "bold red"}
    pick = 0
    for f in result["findings"]:
        t.append(f"{f['id']}\n", style=styles.get(f["id"], "bold yellow"))
        t.append(f"{f['evidence']}\n")
        t.append("try: ", style="bold")
        t.append(f"{f['advice']}\n")
        if f["config"]:
            t.append("config: ", style="bold")
            t.append(", ".join(f"{k}: {v}" for k, v in f["config"].items()) + "\n")
        details = f.get("details") or {}
        for ex in details.get("examples", []):
            if "error" in ex:
                t.append(f"  {ex['error']}\n", style="dim")
                continue
            pick = _pick(t, pick, chosen, f"line {ex['line']} · {ex['trained']} of {ex['tokens']} tokens trained")
            _marked(t, ex["text"][:400])
        for s in details.get("similar", []):
            t.append(f"  held-out line {s['line']} answered {s['output'][:60]!r}; most like:\n", style="dim")
            for near in s["training"]:
                pick = _pick(t, pick, chosen, f"training line {near['line']} ({near['similarity']:.2f}): "
                                              f"{near['answer'][:50]!r}")
        for c in details.get("copied", []):
            if c.get("training_line"):
                pick = _pick(t, pick, chosen, f"held-out line {c['line']} copies training line {c['training_line']}")
        t.append("\n")
    for line in result["checked"]:
        t.append(f"checked: {line}\n", style="dim")
    for line in result["not_checked"]:
        t.append(f"not checked: {line}\n", style="dim")
    return t


def _pick(t: Text, index: int, chosen: int | None, label: str) -> int:
    """One openable training example: marked when chosen (j/k), so `o` opens it."""
    here = index == chosen
    t.append(f"{'>' if here else ' '} [{index + 1}] {label}\n", style="reverse" if here else "")
    return index + 1


def _marked(t: Text, text: str) -> None:
    """A rendered example with its trained text underlined (the marks stay for NO_COLOR terminals)."""
    rest = text
    while MARK_OPEN in rest:
        before, _, after = rest.partition(MARK_OPEN)
        trained, _, rest = after.partition(MARK_CLOSE)
        t.append(before, style="dim")
        t.append(MARK_OPEN + trained + MARK_CLOSE, style="bold underline")
    t.append(rest + "\n", style="dim")


class DiagnosisScreen(ModeScreen):
    """Pushed over the screen of `mode` (runs or eval), whose mode bar it keeps."""

    TITLE = "Diagnosis"
    BINDINGS = [
        Binding("escape,backspace", "back", "Back", id="diagnosis.back"),
        Binding("w", "write", "Write next config", id="diagnosis.write"),
        Binding("j,down", "pick(1)", "Next example", show=False, id="diagnosis.next"),
        Binding("k,up", "pick(-1)", "Previous example", show=False, id="diagnosis.prev"),
        Binding("o,enter", "open_example", "Open in Data", id="diagnosis.open"),
        Binding("R", "reload", "Again", show=False, id="diagnosis.reload"),
    ]

    def __init__(self, run: Run, mode: str):
        super().__init__()
        self.MODE = mode
        self.run = run
        self.result: dict | None = None
        self.chosen: int | None = None
        self.written: Path | None = None

    def compose_body(self) -> ComposeResult:
        yield Static(Text(f"Diagnosis of {self.run.id} · reading the run…", style="bold"), id="diagnosis-head")
        with VerticalScroll(id="diagnosis-body", can_focus=True):
            yield Static("", id="diagnosis-text")

    def on_mount(self) -> None:
        self.diagnose()

    @work(thread=True, exclusive=True, group="diagnosis", name="diagnosing the run", exit_on_error=False)
    def diagnose(self) -> None:
        from engine.evaluation.diagnosis import diagnose

        self.post_message(DiagnosisReady(self.run, diagnose(self.run)))

    def on_diagnosis_ready(self, message: DiagnosisReady) -> None:
        self.result = message.result
        self.chosen = 0 if training_lines(self.result) else None
        self._show()

    def _show(self) -> None:
        result = self.result
        ids = ", ".join(f["id"] for f in result["findings"])
        head = Text(f"Diagnosis of {self.run.id} ({result['state']}): {ids}", style="bold")
        if self.written:
            head.append(f"\nnext config: {self.written}", style="dim")
        self.query_one("#diagnosis-head", Static).update(head)
        self.query_one("#diagnosis-text", Static).update(diagnosis_text(result, self.chosen))

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_reload(self) -> None:
        self.diagnose()

    def action_pick(self, delta: int) -> None:
        named = training_lines(self.result) if self.result else []
        if not named:
            self.query_one("#diagnosis-body", VerticalScroll).scroll_relative(y=delta)
            return
        self.chosen = max(0, min(len(named) - 1, (self.chosen or 0) + delta))
        self._show()

    async def action_open_example(self) -> None:
        named = training_lines(self.result) if self.result else []
        if self.chosen is None or not named:
            self.notify("No training example is named by this diagnosis.", severity="warning")
            return
        line = named[self.chosen][0]
        data = Path(self.run.config().get("data", ""))
        await self.app.switch_mode("data")
        self.app.screen.open_path(data, line=line)

    def action_write(self) -> None:
        if self.result is None:
            return
        from tui.screens.prompt import PathPrompt

        default = self.app.workspace / "configs" / f"next-{self.run.id}-{time.strftime('%H%M%S')}.yaml"

        def chosen(path: str | None) -> None:
            if path:
                self.write_config(Path(path).expanduser())

        self.app.push_screen(PathPrompt("Write the next run's config", "Write it to:", str(default)), chosen)

    def write_config(self, path: Path) -> None:
        from engine.core.files import ensure_private_dir
        from engine.evaluation.diagnosis import write_next_config
        from tui.errors import EXPLAINED_ERRORS

        try:
            ensure_private_dir(path.parent, tighten=False)
            changes = write_next_config(self.run, self.result, path)
        except (OSError, *EXPLAINED_ERRORS) as exc:
            self.post_message(ErrorReported("Could not write the next config", f"{type(exc).__name__}: {exc}",
                                            "Pick a path in a directory you can write to."))
            return
        self.written = path
        self._show()
        self.notify(f"Wrote {path} ({len(changes)} changes)\nStart it with n on the Runs screen, or "
                    f"tunedeck train {path}", title="Next config written", timeout=10)
