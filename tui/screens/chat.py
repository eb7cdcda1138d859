"""Chat mode (6): talk to a run's tuned model and its base side by side, as they were trained (the run's
chat template, system prompt and special tokens; 4 bit for QLoRA).

The models run in engine.chat.server, a subprocess this screen owns through a pipe (engine.chat.client): it
opens on the newest run with final weights (ctrl+o picks another run, a complete checkpoint or an export), shows
the model loading, streams each answer token by token with its speed, and says so when the process dies
(ctrl+r starts it again). Every answer is appended to `<run>/chat/<time>.jsonl` as it arrives. ctrl+s saves
the conversation, its last answer edited if wanted, as a training example appended to
`<workspace>/data/chat-<run>.jsonl`, the file the Data screen opens next (ctrl+g goes there).
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Input, Static

from engine.chat.client import ChatEngine
from engine.chat.session import (
    FINAL,
    ChatWeights,
    Conversation,
    ConversationLog,
    chat_weights,
    default_dataset,
    run_exports,
    save_example,
    turn_record,
    with_system,
)
from engine.runs.protocol import Run, RunError
from engine.runs.workspace import list_runs
from tui.messages import ChatEngineGone, ChatReply
from tui.screens.base import ModeScreen

DEFAULT_SETTINGS = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 256}


def chat_targets(workspace: Path) -> list[tuple[Run, ChatWeights]]:
    """What one can chat with, newest run first: each run's final weights, its exports still on disk, then
    its complete checkpoints."""
    targets = []
    for run in sorted(list_runs(workspace), key=lambda run: run.id, reverse=True):
        if (run.path / "adapter").is_dir() or (run.path / "model").is_dir():
            targets.append((run, FINAL))
        targets += [(run, ChatWeights(export=path)) for path in run_exports(run)]
        targets += [(run, ChatWeights(checkpoint=step)) for step, _, ok in reversed(run.checkpoints()) if ok]
    return targets


def target_key(run: Run, weights: ChatWeights) -> str:
    return f"{run.id}@{weights.export or weights.checkpoint}" if weights != FINAL else run.id


def settings_line(settings: dict) -> str:
    how = "greedy" if settings["temperature"] == 0 else \
        f"temperature {settings['temperature']:g}, top-p {settings['top_p']:g}"
    return f"{how} · max {settings['max_new_tokens']} new tokens"


def parse_settings(text: str) -> dict:
    """`temperature top_p max_new_tokens`, as the settings prompt shows them; ValueError says what is wrong."""
    parts = text.split()
    if len(parts) != 3:
        raise ValueError("give three numbers: temperature (0 is greedy), top-p, max new tokens")
    temperature, top_p, max_new = float(parts[0]), float(parts[1]), int(parts[2])
    if not 0 <= temperature <= 5 or not 0 < top_p <= 1 or not 1 <= max_new <= 32768:
        raise ValueError("temperature 0 to 5, top-p above 0 and at most 1, max new tokens 1 to 32768")
    return {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new}


class ChatScreen(ModeScreen):
    MODE = "chat"
    TITLE = "Chat"
    BINDINGS = [
        Binding("escape", "stop", "Stop", id="chat.stop"),
        Binding("i", "type", "Type", show=False, id="chat.type"),
        Binding("ctrl+s", "save_example", "Save example", id="chat.save"),
        Binding("ctrl+b", "toggle_base", "Base", id="chat.base"),
        Binding("ctrl+t", "settings", "Sampling", id="chat.settings"),
        Binding("ctrl+n", "new_conversation", "New", id="chat.new"),
        Binding("ctrl+o", "choose", "Run", id="chat.choose"),
        Binding("ctrl+g", "open_dataset", "Open saved in Data", show=False, id="chat.data"),
        Binding("ctrl+r", "restart", "Restart engine", show=False, id="chat.restart"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.run: Run | None = None
        self.weights = FINAL
        self.engine: ChatEngine | None = None
        self.state = "none"  # none, loading, ready, gone
        self.ready: dict = {}
        self.gone: str | None = None  # how the engine ended
        self.settings = dict(DEFAULT_SETTINGS)
        self.with_base = True
        self.conversation = Conversation(("tuned", "base"))
        self.chat_log: ConversationLog | None = None
        self.pending: dict[int, str] = {}  # request id -> side, answers asked for and not done
        self.partial = {"tuned": "", "base": ""}  # the answer streaming in
        self.speed = {"tuned": "", "base": ""}  # the last answer's tokens and tokens per second
        self.streamed = {"tuned": 0, "base": 0}  # token messages of the answer streaming in
        self.saved: Path | None = None

    def compose_body(self) -> ComposeResult:
        yield Static("", id="chat-title")
        yield Static("", id="chat-status")
        with Horizontal(id="chat-panes"):
            with VerticalScroll(id="chat-tuned", can_focus=True) as tuned:
                tuned.border_title = "tuned"
                yield Static("", id="chat-tuned-text")
            with VerticalScroll(id="chat-base", can_focus=True) as base:
                base.border_title = "base"
                yield Static("", id="chat-base-text")
        yield Input(placeholder="Ask; Enter sends · Esc leaves for the mode keys (i comes back)", id="chat-input")

    def on_mount(self) -> None:
        targets = chat_targets(self.app.workspace)
        if targets:
            self.open(*targets[0])
            self.query_one("#chat-input", Input).focus()
        else:
            self._show()  # nothing focused: the number keys go to the modes

    def on_unmount(self) -> None:
        self._close_engine()

    # ---- the engine ----
    def open(self, run: Run, weights: ChatWeights) -> None:
        """Chat with a run's final weights, one of its complete checkpoints or one of its exports."""
        self._close_engine()
        self.run, self.weights = run, weights
        self.gone, self.ready = None, {}
        self._new_conversation()
        try:
            chat_weights(run, weights)
        except RunError as exc:
            self.state, self.gone = "gone", str(exc)
            self._show()
            return
        self.engine = ChatEngine(run, weights)
        self.state = "loading"
        self._show()
        self.follow_engine(self.engine)

    @work(thread=True, group="chat-engine", name="the chat engine", exit_on_error=False)
    def follow_engine(self, engine: ChatEngine) -> None:
        """Start the process and hand each of its messages to the screen, then how it ended."""
        engine.start()
        while (reply := engine.read()) is not None:
            self.post_message(ChatReply(engine, reply))
        self.post_message(ChatEngineGone(engine, engine.exit_report()))

    def _close_engine(self) -> None:
        if self.engine is not None:
            engine, self.engine = self.engine, None
            engine.close()

    def on_chat_reply(self, message: ChatReply) -> None:
        if message.engine is not self.engine:
            return
        reply = message.reply
        kind = reply["type"]
        if kind == "ready":
            self.state, self.ready = "ready", reply
        elif kind == "token" and reply.get("id") in self.pending:
            side = self.pending[reply["id"]]
            self.partial[side] += reply["text"]
            self.streamed[side] += 1
        elif kind == "done" and reply.get("id") in self.pending:
            self._answered(self.pending.pop(reply["id"]), reply)
        elif kind == "error":
            side = self.pending.pop(reply.get("id"), None)
            if side is not None:  # that side's question goes unanswered; its history stays a dialogue
                self.conversation.history[side].pop()
                self.partial[side] = ""
            self.notify(reply["message"], severity="error", timeout=10)
            if reply.get("fatal"):
                self.gone = reply["message"]
        self._show()

    def on_chat_engine_gone(self, message: ChatEngineGone) -> None:
        if message.engine is not self.engine:
            return
        self.state = "gone"
        self.gone = self.gone or message.report
        for side in self.pending.values():
            self.conversation.history[side].pop()
            self.partial[side] = ""
        self.pending.clear()
        self._close_engine()
        self._show()

    def _answered(self, side: str, done: dict) -> None:
        messages = list(self.conversation.history[side])
        self.conversation.answered(side, done["text"])
        self.partial[side] = ""
        rate = done.get("tokens_per_second")
        self.speed[side] = f"{done['tokens']} tokens" + (f" · {rate:.1f} tok/s" if rate else "")
        try:
            if self.chat_log is None:
                self.chat_log = ConversationLog(self.run)
            self.chat_log.append(turn_record(side, self.weights.label, with_system(
                messages, self.ready.get("system_prompt")), done, self.settings))
        except OSError as exc:  # a run directory one may read but not write: the chat goes on, unrecorded
            self.notify(f"This answer is not kept in {self.run.path / 'chat'}: {exc}", severity="error")

    # ---- asking ----
    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if self.state != "ready":
            self.notify("The model is not ready: " + ("it is loading." if self.state == "loading" else
                                                       "ctrl+r starts the chat engine again."), severity="warning")
            return
        if self.pending:
            self.notify("Still answering; Esc stops the answer.", severity="warning")
            return
        event.input.value = ""
        self.conversation.ask(text)
        for side in ("tuned", "base") if self.with_base else ("tuned",):
            self.streamed[side] = 0
            request_id = self.engine.generate(list(self.conversation.history[side]), side, **self.settings)
            if request_id is not None:
                self.pending[request_id] = side
        if not self.with_base:
            self.conversation.history["base"].pop()  # the base is not asked: its dialogue stays whole
        self._show()

    def action_stop(self) -> None:
        """Esc: ends the answer streaming in; else leaves the input, so that the number keys switch modes."""
        if self.engine is not None and self.pending:
            self.engine.stop()
        elif isinstance(self.focused, Input):
            self.query_one("#chat-tuned", VerticalScroll).focus()

    def action_type(self) -> None:
        self.query_one("#chat-input", Input).focus()

    def action_toggle_base(self) -> None:
        if self.pending:
            self.notify("Still answering; Esc stops the answer.", severity="warning")
            return
        self.with_base = not self.with_base
        self.notify(f"The base model {'answers too' if self.with_base else 'is off'}; a new conversation begins.")
        self._new_conversation()
        self._show()

    def action_new_conversation(self) -> None:
        if self.pending:
            self.notify("Still answering; Esc stops the answer.", severity="warning")
            return
        self._new_conversation()
        self._show()

    def _new_conversation(self) -> None:
        self.conversation = Conversation(("tuned", "base"))
        self.chat_log = None  # the next answer starts a new file in <run>/chat/
        self.partial = {"tuned": "", "base": ""}
        self.speed = {"tuned": "", "base": ""}

    def action_restart(self) -> None:
        if self.run is not None:
            self.open(self.run, self.weights)

    def action_settings(self) -> None:
        from tui.screens.prompt import PathPrompt

        def chosen(value: str | None) -> None:
            if value:
                try:
                    self.settings = parse_settings(value)
                except ValueError as exc:
                    self.notify(str(exc), severity="error")
                self._show()

        s = self.settings
        self.app.push_screen(PathPrompt("Sampling", "temperature (0: greedy) · top-p · max new tokens:",
                                        f"{s['temperature']:g} {s['top_p']:g} {s['max_new_tokens']}"), chosen)

    def action_choose(self) -> None:
        from tui.screens.choose_run import RunChooser

        targets = {target_key(run, weights): (run, weights) for run, weights in chat_targets(self.app.workspace)}
        if not targets:
            self.notify("No run has final weights or a complete checkpoint yet.", severity="warning")
            return
        labels = [(key, f"{run.id}  {weights.label}") for key, (run, weights) in targets.items()]
        current = None if self.run is None else target_key(self.run, self.weights)

        def chosen(key: str | None) -> None:
            if key is not None and key != current:
                self.open(*targets[key])

        self.app.push_screen(RunChooser("Chat with", labels, current), chosen)

    # ---- saving ----
    def action_save_example(self) -> None:
        messages = self.conversation.history["tuned"]
        if self.run is None or not messages or messages[-1]["role"] != "assistant" or self.pending:
            self.notify("Nothing to save yet: ask, and wait for the tuned model's answer.", severity="warning")
            return
        from tui.screens.edit import EditAnswer

        def edited(answer: str | None) -> None:
            if answer is None:
                self.notify("Not saved.")
                return
            self.save(with_system(messages[:-1], self.ready.get("system_prompt")) +
                      [{"role": "assistant", "content": answer}])

        self.app.push_screen(EditAnswer(messages[-1]["content"]), edited)

    def save(self, messages: list[dict]) -> None:
        path = default_dataset(self.app.workspace, self.run)
        try:
            line = save_example(messages, path)
        except OSError as exc:
            self.notify(f"Not saved to {path}: {exc}", severity="error", timeout=10)
            return
        self.saved = path
        self.app.data_path = path  # the Data screen opens it next
        self.notify(f"Saved as line {line} of {path}; ctrl+g opens it in Data.", timeout=8)

    async def action_open_dataset(self) -> None:
        if self.saved is None:
            self.notify("No example saved from this chat yet (ctrl+s saves one).", severity="warning")
            return
        await self.app.switch_mode("data")
        data = self.app.screen
        if not (data.path == self.saved and data.loading):  # a Data screen opened just now is reading it already
            data.open_path(self.saved)

    # ---- drawing ----
    def _show(self) -> None:
        head = Text(no_wrap=True, overflow="ellipsis")
        status = Text(no_wrap=True, overflow="ellipsis")
        if self.run is None:
            head.append("No run to chat with.", "bold")
            status.append("Train one (4 Runs, or tunedeck train CONFIG) or run tunedeck demo; a run with "
                          "final weights or a complete checkpoint opens here.")
        else:
            head.append(self.run.id, "bold")
            head.append(f" · {self.weights.label} weights")
            if self.ready.get("base_4bit"):
                head.append(" · 4-bit base")
            system = self.ready.get("system_prompt")
            head.append(f" · system: {system}" if system else " · no system prompt")
            if self.state == "loading":
                status.append("loading the models…", "bold")
            elif self.state == "gone":
                status.append("CHAT ENGINE GONE (why: in the tuned pane) · ctrl+r restarts it", "bold")
            else:
                status.append(f"ready on {self.ready.get('device', '?')}", "bold")
                if self.pending:
                    status.append(" · answering… (Esc stops)")
            status.append(f" · {settings_line(self.settings)}")
        self.query_one("#chat-title", Static).update(head)
        self.query_one("#chat-status", Static).update(status)
        for side in ("tuned", "base"):
            pane = self.query_one(f"#chat-{side}", VerticalScroll)
            pane.border_subtitle = self.speed[side]
            if side == "base" and not self.with_base:
                pane.border_title = "base: off (ctrl+b)"
                self.query_one("#chat-base-text", Static).update("")
                continue
            pane.border_title = side
            self.query_one(f"#chat-{side}-text", Static).update(self._transcript(side))
            if side in self.pending.values():
                pane.border_subtitle = f"{self.streamed[side]} tokens…"
            pane.scroll_end(animate=False)

    def _transcript(self, side: str) -> Text:
        text = Text()
        for message in self.conversation.history[side]:
            who = "you" if message["role"] == "user" else side
            text.append(f"{who}: ", "bold")
            text.append(message["content"] + "\n")
        if side in self.pending.values():
            text.append(f"{side}: ", "bold")
            text.append(self.partial[side] + "▌")
        if side == "tuned" and self.state == "gone":
            text.append(f"\nCHAT ENGINE GONE: {self.gone}.\n", "bold")
            text.append("ctrl+r starts it again; its log is <run>/chat/engine.log.")
        return text

