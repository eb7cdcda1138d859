"""Plan mode (2): should you fine-tune, which method fits, hyperparameters, time and cost; writes a config.

The form on the left feeds engine.plan.recommend.plan in a worker (it reads model file headers, no torch);
the right side shows the decision path, a memory bar per method (per GPU: of how many GPUs, under which
sharding), hyperparameters and time. `w`
writes the run configuration that `tunedeck train` runs as it is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Checkbox, Input, Label, Select, Static
from textual.worker import Worker, WorkerState, get_current_worker

from engine.plan.memory import per_gpu
from tui.messages import ErrorReported, PlanComputed
from tui.screens.base import ModeScreen

GiB = 1024 ** 3
STEPS = (("measure_baseline", "measure baseline"), ("prompt", "prompt"), ("rag", "RAG"),
         ("collect_data", "collect data"), ("fine_tune", "fine-tune"))
BAR = 16
COMPUTING = "computing… (the first plan for a model builds it on the meta device: seconds, then cached)"
# Form fields: (id, label, placeholder, kind); kind says how the text is read.
NUMBER_FIELDS = (("examples", "Examples", "from data", int), ("baseline", "Baseline", "0..1, measured", float),
                 ("target", "Target", "0..1", float), ("seq-len", "Seq length", "1024", int),
                 ("batch", "Batch size", "4", int), ("gpus", "GPUs/node", "found here", int),
                 ("nodes", "Nodes", "1", int), ("price", "$/GPU-hour", "optional", float))
# Sharding: auto is DDP replicas while one GPU holds the run, else the mode the plan recommends.
SHARDING = "auto"


@dataclass
class Inputs:
    """The form, read on the UI thread and handed to the worker."""

    model: str
    data: str
    task: str
    reason: str
    fresh: bool
    stable: bool
    numbers: dict
    general: str = ""  # a general-data file to mix in against forgetting
    objective: str = "sft"  # sft, or a preference objective (dpo, orpo, kto)
    fsdp: str | None = None  # a sharding mode asked for; None: auto
    offload: bool = False  # FSDP's CPU offload (fsdp_offload)


@dataclass
class Computed:
    plan: object
    facts: object
    inputs: Inputs
    data_path: Path | None
    counted: int | None
    gpus: list


class PlanScreen(ModeScreen):
    MODE = "plan"
    TITLE = "Plan"
    BINDINGS = [
        Binding("w", "write", "Write config", show=False, id="plan.write"),
        Binding("ctrl+s", "write", "Write config", priority=True, id="plan.write_anywhere"),
        Binding("escape", "leave_form", "Leave form", id="plan.leave_form"),
        Binding("i", "edit_form", "Edit inputs", id="plan.edit"),
        Binding("r", "recompute", "Recompute", id="plan.recompute"),
        Binding("j,down", "scroll(1)", "Scroll down", show=False, id="plan.down"),
        Binding("k,up", "scroll(-1)", "Scroll up", show=False, id="plan.up"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.result: Computed | None = None
        self.problem = ""  # an input that does not parse, shown in place of an error modal
        self._gpus: list | None = None
        self._data_cache: tuple | None = None  # (path, mtime, TokenEstimate, (desirable, undesirable))

    def compose_body(self) -> ComposeResult:
        from engine.plan.recommend import TASKS
        from engine.training.config import FSDP_MODES, OBJECTIVES

        with Horizontal(id="plan-main"):
            with VerticalScroll(id="plan-form") as form:
                form.border_title = "Inputs"
                yield self._row("Model", Input("demo", placeholder="dir, .gguf, repo id, demo", id="plan-model",
                                               compact=True))
                data = str(self.app.data_path) if getattr(self.app, "data_path", None) else ""
                yield self._row("Data file", Input(data, placeholder="optional .jsonl", id="plan-data",
                                                   compact=True))
                yield self._row("Objective", Select([(o, o) for o in OBJECTIVES], value="sft", allow_blank=False,
                                                    id="plan-objective", compact=True))
                yield self._row("Task", Select([(t, t) for t in TASKS], value="formatting", allow_blank=False,
                                               id="plan-task", compact=True))
                for key, label, hint, _ in NUMBER_FIELDS[:3]:
                    yield self._row(label, Input("", placeholder=hint, id=f"plan-{key}", compact=True))
                yield Checkbox("fresh/private knowledge", False, id="plan-fresh", compact=True)
                yield Checkbox("task is stable", True, id="plan-stable", compact=True)
                yield self._row("Reason", Select([(r, r) for r in ("quality", "latency", "cost")], value="quality",
                                                 allow_blank=False, id="plan-reason", compact=True))
                for key, label, hint, _ in NUMBER_FIELDS[3:]:
                    yield self._row(label, Input("", placeholder=hint, id=f"plan-{key}", compact=True))
                    if key == "nodes":
                        yield self._row("Sharding", Select([(m, m) for m in (SHARDING, *FSDP_MODES)], value=SHARDING,
                                                           allow_blank=False, id="plan-fsdp", compact=True))
                        yield Checkbox("FSDP CPU offload", False, id="plan-offload", compact=True)
                yield self._row("General", Input("", placeholder="optional file", id="plan-general",
                                                 compact=True))
            with VerticalScroll(id="plan-out", can_focus=True) as out:
                out.border_title = "Plan"
                yield Static(COMPUTING, id="plan-result")

    @staticmethod
    def _row(label: str, widget) -> Horizontal:
        return Horizontal(Label(label, classes="plan-label"), widget, classes="plan-row")

    def on_mount(self) -> None:
        # Focus starts outside the form, so the number keys still switch modes; `i` or tab edits.
        self.query_one("#plan-out", VerticalScroll).focus()
        self.action_recompute()

    # ---- reading the form ----------------------------------------------------------

    def read_inputs(self) -> Inputs | None:
        numbers, problems = {}, []
        for key, label, _, kind in NUMBER_FIELDS:
            text = self.query_one(f"#plan-{key}", Input).value.strip()
            if not text:
                numbers[key] = None
                continue
            try:
                numbers[key] = kind(text)
            except ValueError:
                problems.append(f"{label.lower()} {text!r} is not a{' whole' if kind is int else ''} number")
                continue
            if key in ("baseline", "target") and not 0 <= numbers[key] <= 1:
                problems.append(f"{label.lower()} must be between 0 and 1")
            elif key in ("seq-len", "batch", "gpus", "nodes") and numbers[key] < 1:
                problems.append(f"{label.lower()} must be at least 1")
        self.problem = "; ".join(problems)
        if problems:
            return None
        return Inputs(model=self.query_one("#plan-model", Input).value.strip() or "demo",
                      data=self.query_one("#plan-data", Input).value.strip(),
                      task=str(self.query_one("#plan-task", Select).value),
                      reason=str(self.query_one("#plan-reason", Select).value),
                      fresh=self.query_one("#plan-fresh", Checkbox).value,
                      stable=self.query_one("#plan-stable", Checkbox).value, numbers=numbers,
                      general=self.query_one("#plan-general", Input).value.strip(),
                      objective=str(self.query_one("#plan-objective", Select).value),
                      fsdp=None if (mode := str(self.query_one("#plan-fsdp", Select).value)) == SHARDING else mode,
                      offload=self.query_one("#plan-offload", Checkbox).value)

    @on(Input.Changed, "#plan-examples, #plan-baseline, #plan-target, #plan-seq-len, #plan-batch, #plan-gpus, "
                       "#plan-nodes, #plan-price")
    @on(Select.Changed)
    @on(Checkbox.Changed)
    def _changed(self) -> None:
        self.action_recompute()

    @on(Input.Submitted, "#plan-model, #plan-data, #plan-general")
    @on(Input.Blurred, "#plan-model, #plan-data, #plan-general")
    def _path_done(self) -> None:
        # Paths are checked when typed out (enter or leaving the field), not at every keystroke.
        if self.result is None or (self.result.inputs.model, self.result.inputs.data, self.result.inputs.general) != (
                self.query_one("#plan-model", Input).value.strip() or "demo",
                self.query_one("#plan-data", Input).value.strip(),
                self.query_one("#plan-general", Input).value.strip()):
            self.action_recompute()

    def action_recompute(self) -> None:
        inputs = self.read_inputs()
        if inputs is None:
            self._show()
            return
        self.compute(inputs)

    # ---- the worker ----------------------------------------------------------------

    @work(thread=True, exclusive=True, group="plan", name="Plan", exit_on_error=False)
    def compute(self, inputs: Inputs) -> None:
        from engine.models.facts import model_facts
        from engine.plan.memory import Assumptions
        from engine.plan.recommend import Situation, plan, sft_runs

        facts = model_facts(inputs.model)
        data_path, measured, (desirable, undesirable) = self._read_data(inputs.data)
        general = Path(inputs.general).expanduser().resolve() if inputs.general else None
        if general is not None and not general.is_file():
            raise FileNotFoundError(f"general data file {inputs.general} does not exist")
        counted, tokens, p99 = (measured.examples, measured.mean, measured.p99) if measured else (None, None, None)
        if self._gpus is None:
            self._gpus = list(self.app.gpu_sampler(self.app.workspace).get("gpus") or [])
        n = inputs.numbers
        situation = Situation(task=inputs.task, clean_examples=n["examples"] if n["examples"] is not None else counted,
                              baseline_score=n["baseline"], target_score=n["target"], fresh_knowledge=inputs.fresh,
                              task_stable=inputs.stable, reason=inputs.reason, gpus=self._gpus,
                              tokens_per_example=tokens, tokens_p99=p99, price_per_gpu_hour=n["price"],
                              general_data=str(general) if general else None, objective=inputs.objective,
                              sft_runs=sft_runs(self.app.workspace), desirable=desirable, undesirable=undesirable)
        assumptions = Assumptions(seq_len=n["seq-len"] or 1024, batch_size=n["batch"] or 4, gpus=n["gpus"],
                                  nodes=n["nodes"] or 1, fsdp=inputs.fsdp, fsdp_offload=inputs.offload)
        result = plan(facts, situation, assumptions)
        if get_current_worker().is_cancelled:
            return
        self.post_message(PlanComputed(Computed(result, facts, inputs, data_path, counted, self._gpus)))

    def _read_data(self, text: str):
        """The data file, its example count and token lengths estimated as `tunedeck plan` does, and its
        desirable and undesirable (KTO) completions."""
        if not text:
            return None, None, (None, None)
        from engine.data.load import load_examples
        from engine.data.stats import estimate_tokens
        from engine.plan.recommend import labels

        path = Path(text).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"data file {text} does not exist")
        mtime = path.stat().st_mtime
        if self._data_cache and self._data_cache[:2] == (path, mtime):
            return path, *self._data_cache[2:]
        examples = load_examples(path).examples
        measured = estimate_tokens(examples)
        self._data_cache = (path, mtime, measured, labels(examples))
        return path, measured, labels(examples)

    def on_plan_computed(self, message: PlanComputed) -> None:
        self.result = message.computed
        self._show()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "plan":
            return  # ModeScreen's handler runs too (Textual calls each class's handler)
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            error = event.worker.error
            from engine.models.find import ModelError
            from engine.training.config import ConfigError

            if isinstance(error, ConfigError):  # fields that cannot go together (fsdp on one GPU): said in place
                event.prevent_default()
                self.problem = str(error)
                self._show()
                return
            if isinstance(error, ModelError):
                advice = "Type another model in the Model field: a directory, a .gguf file, a cached repo id, or demo."
            elif isinstance(error, FileNotFoundError):
                advice = "Fix the Data file or General field, or clear it: the plan works without them."
            else:
                return  # unexpected: ModeScreen's handler reports it with where it was raised
            event.prevent_default()  # reported here, with advice; not a second time by ModeScreen
            self.problem = str(error) + (" (the plan below is for the last model that worked)" if self.result else "")
            self._show()
            self.post_message(ErrorReported("Plan failed", str(error), advice))

    # ---- showing the plan ----------------------------------------------------------

    def _show(self) -> None:
        self.query_one("#plan-result", Static).update(self.render_plan())

    def render_plan(self) -> Text:
        out = Text()
        if self.problem:
            out.append(f"! {self.problem}\n\n", style="bold")
        if self.result is None:
            out.append(COMPUTING if not self.problem else "")
            return out
        r, facts, c = self.result.plan, self.result.facts, self.result
        counted = f" · data: {c.counted:,} examples" if c.counted is not None else ""
        size = f"{facts.parameters / 1e9:.1f}B" if facts.parameters >= 1e9 else f"{facts.parameters / 1e6:.3g}M"
        out.append(f"{facts.name} {size}{counted}\n", style="dim")
        for i, (key, label) in enumerate(STEPS):
            if i:
                out.append(" → ", style="dim")
            if key == r.decision:
                out.append(f"[{label.upper()}]", style="bold reverse")
            else:
                out.append(label, style="dim")
        out.append("\n")
        for reason in r.reasons:
            out.append(f" · {reason}\n")
        if r.objective != "sft":
            out.append(f"\nObjective {r.objective.upper()}\n", style="bold")
            for advice in r.objective_advice:
                out.append(f" · {advice}\n")
        out.append("\nMemory ", style="bold")
        out.append(per_gpu(r.gpus, r.nodes, r.fsdp) + " ")
        if r.free_memory_gib is None:
            out.append("(no GPU here: the estimate is for a GPU; fits unknown)\n", style="dim")
        else:
            out.append(f"(against {r.free_memory_gib:.1f} GiB free)\n", style="dim")
        scale = max([m["required_gib"] for m in r.memory.values()] + [r.free_memory_gib or 0]) or 1
        for method, m in r.memory.items():
            filled = max(1, round(BAR * m["required_gib"] / scale))
            mark = "▸" if method == r.method else " "
            fits = "" if m["fits"] is None else (" fits" if m["fits"] else " NO")
            out.append(f"{mark}{method:<5} ")
            out.append("█" * filled, style="bold" if method == r.method else "")
            out.append("░" * (BAR - filled), style="dim")
            out.append(f" {m['required_gib']:6.2f} GiB{fits}\n")
        if r.fsdp_reason:
            out.append(f"  sharded: {r.fsdp_reason}\n")
        for note in r.memory[r.method]["notes"]:
            out.append(f"  {r.method}: {note}\n", style="dim")
        for advice in r.fit_advice:
            out.append(f"  try: {advice}\n")
        out.append("\nMethod ", style="bold")
        out.append(f"{r.method}: {r.method_reason}\n")
        out.append("\nHyperparameters\n", style="bold")
        for hp in r.hyperparameters:
            out.append(f" {hp.key} = {hp.value}")
            out.append(f"  {hp.reason}\n", style="dim")
        out.append("\nForgetting ", style="bold")
        out.append(f"{r.forgetting}\n")
        for hp in r.mixing:
            out.append(f" {hp.key} = {hp.value}")
            out.append(f"  {hp.reason}\n", style="dim")
        out.append("\nTime ", style="bold")
        cost = f", about ${r.cost_usd:,.2f}" if r.cost_usd is not None else ", cost: set $/GPU-hour"
        minutes = r.time_hours * 60
        when = f"{minutes:,.0f} min" if minutes < 120 else f"{r.time_hours:,.1f} h"
        out.append(f"about {when}{cost}\n ({r.time_basis})\n")
        if not c.gpus:
            out.append(" No GPU here: that is the CPU time; on a GPU it is far less.\n", style="dim")
        return out

    # ---- keys ----------------------------------------------------------------------

    def action_scroll(self, lines: int) -> None:
        self.query_one("#plan-out", VerticalScroll).scroll_relative(y=lines, animate=False)

    def action_leave_form(self) -> None:
        self.query_one("#plan-out", VerticalScroll).focus()

    def action_edit_form(self) -> None:
        self.query_one("#plan-model", Input).focus()

    def action_write(self) -> None:
        if self.result is None:
            self.notify("No plan yet: fix the inputs first.", severity="warning")
            return
        if self.result.data_path is None:
            self.notify("Writing a config needs a data file: fill in Data file (the config names it).",
                        severity="warning")
            return
        from tui.screens.prompt import PathPrompt

        default = self.app.workspace / "configs" / f"plan-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
        result = self.result

        def chosen(path: str | None) -> None:
            if path:
                self.write_config(result, Path(path).expanduser())

        self.app.push_screen(PathPrompt("Write run config", "Write the run configuration to:", str(default)),
                             chosen)

    def write_config(self, result: Computed, path: Path) -> None:
        import yaml

        from engine.core.files import ensure_private_dir

        try:
            ensure_private_dir(path.parent, tighten=False)  # configs/ is created owner-only
            path.write_text(yaml.safe_dump(result.plan.config(result.inputs.model, str(result.data_path)),
                                           sort_keys=False))
        except OSError as exc:
            self.post_message(ErrorReported("Could not write the config", f"{type(exc).__name__}: {exc}",
                                            "Pick a path in a directory you can write to."))
            return
        self.written = path
        self.notify(f"Wrote {path}\nStart it with: tunedeck train {path}", title="Config written", timeout=10)
