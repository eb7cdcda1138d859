"""The live monitor of one run (Runs mode, after attach).

It only reads the run directory and drops command files into `control/`:
closing it, or losing the terminal, never touches the engine. A worker
thread replays events.jsonl from the first byte, then follows it by offset;
the UI receives whole views (can_replace), so a slow terminal skips frames
instead of queueing them.
"""

from __future__ import annotations

import threading
import time

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Static
from textual.worker import get_current_worker

from engine.runs.protocol import ACTIVE_STATES, RESUMABLE_STATES, Run, RunError, status_ranks
from tui.follow import (RANK_HEADER, RunFollower, RunView, SampleAnswer, fmt_duration, fmt_gib, fmt_num, rank_row,
                        word_diff)
from tui.messages import ErrorReported, RunLaunched, RunUpdated
from tui.screens.base import ModeScreen
from tui.watch import ending_key, mark_seen
from tui.widgets.plot import BraillePlot, PlotSeries
from tui.widgets.textplot import meter

# The two side plots: (series, its eval series, title, text while empty, value format) each. Titles stay short:
# at 80 columns a side plot's title has about 26.
SIDE_CURVES = {
    "training": (("learning_rate", None, "lr", "no lr yet", fmt_num),
                 ("grad_norm", None, "grad norm", "no grad norm yet", fmt_num)),
    "rewards": (("rewards/margins", "eval_rewards/margins", "margin", "no reward margin: a preference run logs it",
                 fmt_num),
                ("rewards/accuracies", "eval_rewards/accuracies", "accuracy",
                 "no reward accuracy (a DPO or ORPO run logs it)", lambda v: f"{v:.0%}")),
}
COMMAND_WORDS = {"stop": "stop (save, then exit)", "stop_now": "stop now", "pause": "pause",
                 "resume": "resume", "checkpoint": "checkpoint", "eval": "evaluate"}


class MonitorScreen(ModeScreen):
    MODE = "runs"
    TITLE = "Run monitor"
    BINDINGS = [
        Binding("escape,backspace", "back", "Runs", id="monitor.back"),
        Binding("s", "command('stop')", "Stop", id="monitor.stop"),
        Binding("S", "stop_now", "Stop now", id="monitor.stop_now"),
        Binding("p", "pause_resume", "Pause", id="monitor.pause"),
        Binding("c", "command('checkpoint')", "Checkpoint", id="monitor.checkpoint"),
        Binding("e", "command('eval')", "Eval", id="monitor.eval"),
        Binding("l", "toggle_log", "Log", id="monitor.log", show=False),
        Binding("d", "diagnose", "Diagnose", id="monitor.diagnose"),
        Binding("a", "toggle_samples", "Answers", id="monitor.samples", show=False),  # the events box says so
        Binding("r", "resume_run", "Resume run", id="monitor.resume", show=False),
        # the side curves of a preference run: reward margin and accuracy, or lr and grad norm (titles say so)
        Binding("m", "toggle_curves", "Rewards/lr curves", id="monitor.curves", show=False),
        # every rank's memory and utilisation at full height (a run of several ranks shows a few above the plots)
        Binding("g", "toggle_ranks", "Ranks: memory, GPU use", id="monitor.ranks", show=False),
    ]

    # Class attributes so tests and the benchmark can follow faster.
    POLL_SECONDS = 0.5  # idle wait between reads once caught up
    STATUS_SECONDS = 1.0  # status.json and engine.log are re-read at most this often
    POST_SECONDS = 0.2  # at most this many views a second reach the UI while replaying
    CHUNK_BYTES = 1 << 20  # events read per step while replaying a long run
    LOG_LINES = 60
    RANKS_SHOWN = 4  # ranks listed above the plots; more than that: the first few and a summary line

    def __init__(self, run: Run):
        super().__init__()
        self.run = run
        self.view: RunView | None = None
        self.pending: dict[str, dict] = {}  # command id -> {"command", "sent"}
        self.answered: list[tuple[dict, dict]] = []  # (command, ack event), newest last
        self._stop = threading.Event()
        self.seen_ending: str | None = None  # the ending this screen has shown, recorded as seen (tui.watch)
        self.rewards_shown: bool | None = None  # side curves: None follows the run (rewards when it logs them)

    def compose_body(self) -> ComposeResult:
        yield Static("", id="mon-head")
        yield Static("", id="mon-progress")
        with VerticalScroll(id="mon-ranks"):
            yield Static("", id="mon-ranks-text")
        with Horizontal(id="mon-plots"):
            yield BraillePlot("loss", "waiting for the first log event", id="plot-loss")
            with Vertical(id="mon-side"):
                yield BraillePlot("learning rate", "no lr yet", id="plot-lr")
                yield BraillePlot("grad norm", "no grad norm yet", id="plot-grad")
        with VerticalScroll(id="mon-samples"):
            yield Static("", id="mon-samples-text")
        with Horizontal(id="mon-bottom"):
            yield Static("", id="mon-events")
            yield Static("", id="mon-log")

    def on_mount(self) -> None:
        # The first frame comes from status.json and the log tail alone: O(1) whatever the run length.
        follower = RunFollower(self.run)
        self.show(follower.view(self.run.status(), self.run.log_tail(self.LOG_LINES)))
        # Replay starts after that frame is drawn, so a long history never delays it.
        self.call_after_refresh(self.follow)

    def on_unmount(self) -> None:
        self._stop.set()

    @work(thread=True, exclusive=True, group="follow", name="following the run", exit_on_error=False)
    def follow(self) -> None:
        worker = get_current_worker()
        follower = RunFollower(self.run)
        status = self.run.status()
        tail = self.run.log_tail(self.LOG_LINES)
        log_size = _size(self.run.log_path)
        last_status = time.monotonic()
        last_post = 0.0
        dirty = True
        while not worker.is_cancelled and not self._stop.is_set():
            new = follower.poll(self.CHUNK_BYTES)
            dirty = dirty or new > 0
            now = time.monotonic()
            if now - last_status >= self.STATUS_SECONDS:
                last_status = now
                fresh = self.run.status()
                if fresh != status:
                    status, dirty = fresh, True
                size = _size(self.run.log_path)
                if size != log_size:
                    log_size, tail, dirty = size, self.run.log_tail(self.LOG_LINES), True
            caught_up = new == 0
            if dirty and (caught_up or now - last_post >= self.POST_SECONDS):
                self.post_message(RunUpdated(follower.view(status, tail)))
                last_post, dirty = now, False
            if caught_up:
                self._stop.wait(self.POLL_SECONDS)
            else:
                time.sleep(0)  # hand the interpreter to the UI thread between chunks

    def on_run_updated(self, message: RunUpdated) -> None:
        self.show(message.view)

    # ---- drawing -------------------------------------------------------
    def show(self, view: RunView) -> None:
        self.view = view
        status = view.status
        state = status.get("state", "unknown")
        ending = ending_key(status)
        if ending not in (None, self.seen_ending):
            self.seen_ending = ending
            mark_seen(self.run, status)
        for cid in [cid for cid in self.pending if cid in view.acks]:
            command = self.pending.pop(cid)
            ack = view.acks[cid]
            self.answered.append((command, ack))
            self.notify(f"Engine acknowledged {COMMAND_WORDS.get(command['command'], command['command'])}"
                        f" at step {ack.get('step', '?')}")
        head = self.query_one("#mon-head", Static)
        head.set_class(state in {"crashed", "failed"}, "-bad")
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f" {state.upper()} ", "reverse bold")
        t.append(f" {view.run_id}")
        model = status.get("model") or self.run.info().get("base_model")
        method = status.get("method") or self.run.info().get("method")
        if model or method:
            t.append(f" · {model or '?'} · {method or '?'}", "dim")
        if view.replaying:
            t.append(f"  replaying {view.replay_fraction * 100:.0f}%", "italic")
        head.update(t)
        self.query_one("#mon-progress", Static).update(self._progress(view))
        self._ranks(view)
        self._plots(view)
        self._samples(view)
        self._events(view, state)
        log = self.query_one("#mon-log", Static)
        log.border_title = "engine.log"
        height = max(1, log.content_size.height or 4)
        log.update(Text("\n".join(view.log_tail[-height:]) or "(empty)", no_wrap=True, overflow="ellipsis"))

    def _progress(self, view: RunView) -> Text:
        s, last = view.status, view.last_log
        step, max_steps = s.get("step"), s.get("max_steps")
        logged = last.get("step")
        if isinstance(logged, int) and (not isinstance(step, int) or logged > step):
            step = logged  # status.json is rewritten every ~2 s; the event stream can be ahead of it
        frac = step / max_steps if isinstance(step, (int, float)) and max_steps else None
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f" step {step if step is not None else '-'}/{max_steps or '?'} ")
        t.append(meter(frac, 16))
        t.append(f" {frac * 100:.0f}%" if frac is not None else "  ?%")
        eta = s.get("eta_seconds")
        t.append(f"  ETA {fmt_duration(eta) if s.get('state') in ACTIVE_STATES else '-'}")
        tps = s.get("tokens_per_second", last.get("tokens_per_second"))
        t.append(f"  {tps:,.0f} tok/s" if isinstance(tps, (int, float)) else "  - tok/s")
        gpu_mem = last.get("cuda_memory_gb")
        t.append(f"  GPU {gpu_mem:.1f} GiB" if isinstance(gpu_mem, (int, float)) else "  GPU n/a")
        epoch = s.get("epoch", last.get("epoch"))
        if isinstance(epoch, (int, float)):
            t.append(f"  epoch {epoch:.2f}")
        return t

    def _plots(self, view: RunView) -> None:
        loss = self.query_one("#plot-loss", BraillePlot)
        last_train, last_eval = view.series_last["loss"], view.series_last["eval_loss"]
        title = f"loss {fmt_num(last_train[1]) if last_train else '-'}"
        if last_eval:
            title += f" · eval ● {fmt_num(last_eval[1])}"
        bad = view.nonfinite["loss"] + view.nonfinite["eval_loss"]
        if bad:
            title += f" · {bad} NaN/Inf not drawn"
        loss.border_title = title
        loss.set_series([PlotSeries("train", view.series["loss"]),
                         PlotSeries("eval", view.series["eval_loss"], marker="●")])
        hint = " (m)" if _preference(view) else ""
        for plot_id, (name, eval_name, label, empty, fmt) in zip(
                ("#plot-lr", "#plot-grad"), SIDE_CURVES["rewards" if self._rewards_shown(view) else "training"]):
            plot = self.query_one(plot_id, BraillePlot)
            last = view.series_last[name]
            title = f"{label} {fmt(last[1]) if last else '-'}"
            series = [PlotSeries(label, view.series[name])]
            if eval_name:
                last_eval = view.series_last[eval_name]
                title += f" ●{fmt(last_eval[1])}" if last_eval else ""
                series.append(PlotSeries("eval", view.series[eval_name], marker="●"))
            plot.border_title, plot.empty = title + hint, empty
            plot.set_series(series)

    def _ranks(self, view: RunView) -> None:
        """Each rank's device memory and utilisation from status.json: above the plots when the run has several
        ranks (the first few there), every rank at full height with g."""
        ranks = status_ranks(view.status)
        self.set_class(len(ranks) > 1, "-several-ranks")
        full = self.has_class("-ranks")
        box = self.query_one("#mon-ranks", VerticalScroll)
        box.border_title = (f"{len(ranks)} rank{'s' if len(ranks) != 1 else ''} "
                            f"at step {view.status.get('ranks_step', '?')}")
        box.border_subtitle = "g closes"
        t = Text(no_wrap=True, overflow="ellipsis")
        if not ranks:
            t.append("No figures per rank yet: the engine records them when training begins.", "dim")
        else:
            shown = ranks if full or len(ranks) <= self.RANKS_SHOWN else ranks[:self.RANKS_SHOWN - 1]
            t.append(RANK_HEADER + ("" if full else "   (g)"), "dim")
            for entry in shown:
                t.append("\n" + rank_row(entry))
            if len(shown) < len(ranks):
                most = max(ranks, key=lambda e: e.get("memory_peak") or 0)
                t.append(f"\n… {len(ranks) - len(shown)} more; highest peak rank {most['rank']} "
                         f"{fmt_gib(most.get('memory_peak'))} GiB · g shows all", "italic")
        self.query_one("#mon-ranks-text", Static).update(t)

    def _samples(self, view: RunView) -> None:
        """Each held-out prompt: the newest answer and what changed since the evaluation before."""
        box = self.query_one("#mon-samples", VerticalScroll)
        step, before = view.sample_steps
        if not view.samples:
            box.border_title = "answers"
            text = Text("No answers yet: they come with each evaluation (config key sample_prompts; "
                        "the run needs held-out data).", "dim")
        else:
            changed = sum(s.changed for s in view.samples)
            box.border_title = (f"answers at step {step}" + (f" · {changed} of {len(view.samples)} changed since "
                                                             f"step {before}" if before is not None else ""))
            width = max(20, self.query_one("#mon-samples-text", Static).content_size.width or 76)
            text = Text(no_wrap=True, overflow="ellipsis")
            for i, sample in enumerate(view.samples):
                number = f"{sample.index + 1} "
                text.append(("\n" if i else "") + number + _middle(_one_line(sample.prompt), width - len(number)))
                text.append("\n  → ")
                text.append(_one_line(sample.answer) or "(empty)", "bold" if sample.answer else "dim")
                text.append(f"\n  ref {_one_line(sample.reference)}\n  ", "dim")
                text.append_text(_change(sample, before))
        self.query_one("#mon-samples-text", Static).update(text)

    def _events(self, view: RunView, state: str) -> None:
        box = self.query_one("#mon-events", Static)
        box.border_title = f"events · {len(view.warnings)} warning{'s' if len(view.warnings) != 1 else ''}"
        lines: list[tuple[str, str]] = []
        reported = {e.get("message") for e in view.errors}
        if state in {"crashed", "failed", "unknown"} and view.status.get("error") and view.status["error"] not in reported:
            lines.append((f"✗ {view.status['error']}", "bold"))
        for e in reversed(view.errors[-2:]):
            advice = f" → {e['advice']}" if e.get("advice") else ""
            lines.append((f"✗ step {e.get('step', '?')}: {e.get('message', '')}{advice}", "bold"))
        now = time.time()
        for cmd in self.pending.values():
            lines.append((f"… {COMMAND_WORDS[cmd['command']]} sent, awaiting ack ({now - cmd['sent']:.0f}s)",
                          "italic"))
        for cmd, ack in reversed(self.answered[-3:]):
            note = f": {ack['message']}" if ack.get("message") else ""
            lines.append((f"✓ {COMMAND_WORDS[cmd['command']]} acknowledged at step {ack.get('step', '?')}{note}", ""))
        if view.samples:
            changed = sum(s.changed for s in view.samples)
            lines.append((f"◆ step {view.sample_steps[0]} answers: "
                          + (f"{changed}/{len(view.samples)} changed" if view.sample_steps[1] is not None
                             else f"{len(view.samples)} prompts") + " (a)", ""))
        for w in reversed(view.warnings):
            lines.append((f"⚠ step {w.get('step', '?')} {w.get('code', '')}: {w.get('message', '')}", ""))
        if view.checkpoints:
            c = view.checkpoints[-1]
            lines.append((f"▣ checkpoint at step {c.get('step', '?')}: {c.get('path', '')}", "dim"))
        if view.skipped:
            lines.append((f"{view.skipped} damaged event lines skipped", "dim"))
        t = Text(no_wrap=True, overflow="ellipsis")
        for i, (line, style) in enumerate(lines or [("no warnings", "dim")]):
            t.append(("\n" if i else "") + line, style)
        box.update(t)

    # ---- actions -------------------------------------------------------
    def _state(self) -> str:
        return (self.view.status if self.view else self.run.status()).get("state", "unknown")

    def action_command(self, command: str) -> None:
        state = self._state()
        if state not in ACTIVE_STATES:
            self.notify(f"The run is {state}; commands reach a running engine only."
                        + (" Press r to resume it." if state in RESUMABLE_STATES else ""), severity="warning")
            return
        if command in ("stop", "stop_now") and state == "starting":
            self.stop_waiting(command)  # node 0 of several may still wait for the others: no engine reads commands
            return
        self._send(command, state)

    @work(thread=True, exclusive=True, group="launch", name="stopping the run", exit_on_error=False)
    def stop_waiting(self, command: str) -> None:
        from engine.runs.nodes import stop_waiting

        if stop_waiting(self.run):
            self.app.call_from_thread(self.notify, "Stopped while node 0 waited for the other nodes")
        else:
            self.app.call_from_thread(self._send, command, "starting")

    def _send(self, command: str, state: str) -> None:
        try:
            cid = self.run.send_command(command)
        except (OSError, RunError) as exc:
            self.post_message(ErrorReported(f"sending {command}", str(exc),
                                            "Check that the run directory is writable by you."))
            return
        self.pending[cid] = {"command": command, "sent": time.time()}
        self.notify(f"Sent {COMMAND_WORDS[command]}; waiting for the engine to acknowledge")
        if self.view is not None:
            self._events(self.view, state)

    def action_pause_resume(self) -> None:
        self.action_command("resume" if self._state() == "paused" else "pause")

    def action_stop_now(self) -> None:
        from tui.screens.prompt import Confirm

        def answered(yes: bool | None) -> None:
            if yes:
                self.action_command("stop_now")

        self.app.push_screen(Confirm("Stop now?", "Stop without saving: the steps since the last "
                                     "checkpoint are lost. (s stops after saving.)"), answered)

    def action_toggle_log(self) -> None:
        self.remove_class("-samples", "-ranks")
        self.toggle_class("-log-full")
        if self.view is not None:
            self.call_after_refresh(self.show, self.view)

    def action_toggle_samples(self) -> None:
        self.remove_class("-log-full", "-ranks")
        self.toggle_class("-samples")
        if self.has_class("-samples"):  # arrows and page keys scroll answers that do not fit
            self.call_after_refresh(self.query_one("#mon-samples", VerticalScroll).focus)
        if self.view is not None:
            self.call_after_refresh(self.show, self.view)

    def action_toggle_ranks(self) -> None:
        self.remove_class("-log-full", "-samples")
        self.toggle_class("-ranks")
        if self.has_class("-ranks"):  # arrows and page keys scroll the ranks of a large run
            self.call_after_refresh(self.query_one("#mon-ranks", VerticalScroll).focus)
        if self.view is not None:
            self.call_after_refresh(self.show, self.view)

    def _rewards_shown(self, view: RunView | None) -> bool:
        return self.rewards_shown if self.rewards_shown is not None else bool(view and _preference(view))

    def action_toggle_curves(self) -> None:
        self.rewards_shown = not self._rewards_shown(self.view)
        if self.view is not None:
            self._plots(self.view)

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_diagnose(self) -> None:
        from tui.screens.diagnosis import DiagnosisScreen

        self.app.push_screen(DiagnosisScreen(self.run, "runs"))

    def action_resume_run(self) -> None:
        state = self._state()
        if state not in RESUMABLE_STATES:
            self.notify(f"The run is {state}; only a stopped, failed, crashed or unknown run resumes.", severity="warning")
            return
        self.resume()

    @work(thread=True, exclusive=True, group="launch", name="resuming the run", exit_on_error=False)
    def resume(self) -> None:
        from engine.runs.launch import resume_detached

        self.post_message(RunLaunched(resume_detached(self.run), resumed=True))

    def on_run_launched(self, message: RunLaunched) -> None:
        self.notify(message.notice)


def _preference(view: RunView) -> bool:
    """The run logs reward margins: a preference run (TRL's rewards/margins)."""
    return bool(view.series["rewards/margins"] or view.series["eval_rewards/margins"])


def _one_line(text: str) -> str:
    return text.strip().replace("\n", " ⏎ ")


def _middle(text: str, width: int) -> str:
    """Long prompts often share an instruction and differ at the end: keep both ends."""
    if len(text) <= width:
        return text
    head = width // 3
    return text[:head] + " … " + text[-(width - head - 3):]


def _change(sample: SampleAnswer, before: int | None) -> Text:
    """unchanged, new, or the words removed [-like this-] and added {+like this+}: readable without colour."""
    if sample.previous is None:
        return Text("new: no earlier answer to compare" if before is not None else "first evaluation", "dim")
    if not sample.changed:
        return Text(f"= unchanged since step {before}", "dim")
    t = Text(f"Δ since step {before}: ", "italic")
    styles = {"del": ("[-", "-]", "strike"), "add": ("{+", "+}", "bold underline")}
    for i, (kind, words) in enumerate(word_diff(_one_line(sample.previous), _one_line(sample.answer))):
        opening, closing, style = styles.get(kind, ("", "", "dim" if kind == "gap" else ""))
        t.append((" " if i else "") + opening + words + closing, style)
    return t


def _size(path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1
