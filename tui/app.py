"""The tunedeck app: six modes, the global keys, the one place errors are shown, and the bell and toast
when a run ends or warns, whatever screen is open (tui.watch)."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from tui.messages import ErrorReported, RunNoticed
from tui.modes import MODES as MODE_TITLES
from tui.screens.chat import ChatScreen
from tui.screens.data import DataScreen
from tui.screens.eval import EvalScreen
from tui.screens.gpu import GpuScreen
from tui.screens.plan import PlanScreen
from tui.screens.runs import RunsScreen
from tui.watch import RunWatch

SCREENS = {screen.MODE: screen for screen in (GpuScreen, PlanScreen, DataScreen, RunsScreen, EvalScreen, ChatScreen)}


class TunedeckApp(App):
    CSS_PATH = Path(__file__).with_name("app.tcss")
    TITLE = "tunedeck"
    ENABLE_COMMAND_PALETTE = True
    MODES = {mode: SCREENS[mode] for mode in MODE_TITLES}  # a mode without its screen fails here, at import
    BINDINGS = [
        *(Binding(str(i), f"app.switch_mode('{mode}')", title, id=f"mode.{mode}", show=False)
          for i, (mode, title) in enumerate(MODE_TITLES.items(), start=1)),
        Binding("question_mark,f1", "app.show_keys", "Keys", id="app.keys"),
        Binding("ctrl+q", "app.quit", "Quit", id="app.quit", show=False, priority=True),
    ]
    WATCH_SECONDS = 2.0  # every run's status is read this often for endings and warnings

    def __init__(self, workspace: Path, mode: str | None = None, attach: str | Path | None = None,
                 gpu_sampler: Callable[[Path], dict] | None = None, gpu_interval: float = 1.0,
                 data: str | Path | None = None, judge_pairs: Path | None = None):
        super().__init__()
        self.judge_pairs = judge_pairs  # a folder of sampled pairs to judge blind, on top (`tunedeck pairs`)
        self.data_path = Path(data) if data else None  # the dataset the Data screen opens
        self.workspace = Path(workspace).expanduser()
        self.start_mode = mode or ("runs" if attach else "gpu")
        if self.start_mode not in self.MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(self.MODES)}")
        self.attach = attach
        if gpu_sampler is None:
            from engine.hardware import snapshot as gpu_sampler
        self.gpu_sampler = gpu_sampler
        self.gpu_interval = gpu_interval
        self.run_watch = RunWatch(self.workspace)

    async def on_mount(self) -> None:
        await self.switch_mode(self.start_mode)
        if self.attach is not None:
            from engine.runs.workspace import resolve_run
            from tui.screens.monitor import MonitorScreen

            run = resolve_run(self.attach, self.workspace)
            self.run_watch.include(run)  # it may live outside the workspace
            await self.push_screen(MonitorScreen(run))
        if self.judge_pairs is not None:
            from tui.screens.pair_review import PairReviewScreen

            await self.push_screen(PairReviewScreen(self.judge_pairs))
        self.poll_runs()
        self.set_interval(self.WATCH_SECONDS, self.poll_runs)

    @work(thread=True, group="watch", name="watching runs", exit_on_error=False)
    def poll_runs(self) -> None:
        try:
            notices = self.run_watch.poll()
        except OSError:
            return  # an unreadable workspace: the Runs screen says why; the next poll tries again
        for notice in notices:
            self.post_message(RunNoticed(notice))

    def on_run_noticed(self, message: RunNoticed) -> None:
        self.bell()
        self.notify(message.notice.text, severity=message.notice.severity, timeout=10)

    def action_show_keys(self) -> None:
        from tui.screens.keys import KeysScreen

        if not isinstance(self.screen, KeysScreen):
            self.push_screen(KeysScreen(self.screen))

    def on_error_reported(self, message: ErrorReported) -> None:
        from tui.screens.error import ErrorScreen

        logging.getLogger("tunedeck").error("%s: %s", message.title, message.message)
        if any(isinstance(s, ErrorScreen) and (s.error_title, s.message) == (message.title, message.message)
               for s in self.screen_stack):
            return  # a failure that repeats on every refresh is shown once, not stacked
        self.push_screen(ErrorScreen(message.title, message.message, message.advice))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Every action: the modes, then each binding of the screen underneath, then Textual's own."""
        for mode, title in MODE_TITLES.items():
            yield SystemCommand(f"Go to {title}", f"switch to the {title} screen", partial(self.switch_mode, mode))
        seen = set()
        for active in screen.active_bindings.values():
            binding = active.binding
            if not binding.description or active.node is self or binding.action in seen:
                continue
            seen.add(binding.action)
            yield SystemCommand(binding.description, f"key: {self.get_key_display(binding)}",
                                partial(active.node.run_action, binding.action))
        yield SystemCommand("Keys", "show the keys of this screen", self.action_show_keys)
        yield from (c for c in super().get_system_commands(screen) if c.title != "Keys")


def run_app(workspace: Path, mode: str | None = None, attach: str | None = None, data: str | None = None) -> None:
    """Open the app; with `attach` (a run id or directory) it opens on that run's monitor."""
    workspace = Path(workspace).expanduser()
    if attach is not None:
        from engine.runs.workspace import resolve_run

        resolve_run(attach, workspace)  # fail with the RunError's one line before the screen opens
    TunedeckApp(workspace, mode=mode, attach=attach, data=data).run()
