"""GPU mode (1): every GPU, its processes, the host; refreshed on a timer the user sets."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.timer import Timer
from textual.widgets import Static
from textual.worker import Worker, WorkerState, get_current_worker

from tui.messages import GpuSampled
from tui.screens.base import ModeScreen
from tui.widgets.gpu_panels import GpuCard, History, HostPanel, NoGpuPanel

INTERVALS = (0.5, 1.0, 2.0, 5.0, 10.0)


class GpuScreen(ModeScreen):
    MODE = "gpu"
    TITLE = "GPU"
    BINDINGS = [
        Binding("plus,equals_sign", "slower", "Slower refresh", id="gpu.slower"),
        Binding("minus", "faster", "Faster refresh", id="gpu.faster"),
        Binding("r", "sample", "Refresh now", id="gpu.refresh"),
        Binding("j,down", "scroll(1)", "Scroll down", show=False, id="gpu.down"),
        Binding("k,up", "scroll(-1)", "Scroll up", show=False, id="gpu.up"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.interval = 1.0
        self.history = History()
        self.samples = 0
        self.failed = False
        self._timer: Timer | None = None

    def compose_body(self) -> ComposeResult:
        yield Static("", id="gpu-summary")
        yield VerticalScroll(id="gpu-body", can_focus=True)

    def on_mount(self) -> None:
        self.interval = min(INTERVALS, key=lambda i: abs(i - self.app.gpu_interval))
        self._show_summary()
        self.action_sample()
        self._timer = self.set_interval(self.interval, self.action_sample)

    def on_screen_suspend(self) -> None:
        # Another mode is showing: stop sampling rather than poll NVML for nobody.
        if self._timer is not None:
            self._timer.pause()

    def on_screen_resume(self) -> None:
        if self._timer is not None and not self.failed:
            self._timer.resume()

    def _restart_timer(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_interval(self.interval, self.action_sample)
        self._show_summary()

    def action_slower(self) -> None:
        i = INTERVALS.index(self.interval)
        self.interval = INTERVALS[min(len(INTERVALS) - 1, i + 1)]
        self._restart_timer()

    def action_faster(self) -> None:
        i = INTERVALS.index(self.interval)
        self.interval = INTERVALS[max(0, i - 1)]
        self._restart_timer()

    def action_scroll(self, lines: int) -> None:
        self.query_one("#gpu-body", VerticalScroll).scroll_relative(y=lines, animate=False)

    def action_sample(self) -> None:
        if self.failed:
            # `r` after a failure: try again and, if it works, go back to sampling on the timer.
            self.failed = False
            if self._timer is not None:
                self._timer.resume()
        self.sample()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR and event.worker.group == "gpu-sample":
            # A failure would repeat every second: stop the timer until the user asks again.
            self.failed = True
            if self._timer is not None:
                self._timer.pause()
            self.query_one("#gpu-summary", Static).update(" sampling stopped after an error · r to retry")
        super().on_worker_state_changed(event)

    @work(thread=True, exclusive=True, group="gpu-sample", name="GPU sampling", exit_on_error=False)
    def sample(self) -> None:
        # NVML calls can block on a sick driver: they run here, never on the UI thread.
        snap = self.app.gpu_sampler(self.app.workspace)
        if not get_current_worker().is_cancelled:
            self.post_message(GpuSampled(snap))

    def _show_summary(self, snap: dict | None = None) -> None:
        parts = [f"refresh every {self.interval:g} s (+/-)"]
        if snap and snap.get("driver_version"):
            parts.insert(0, f"driver {snap['driver_version']} · CUDA {snap.get('cuda_version') or '?'}")
        if snap is not None:
            n = len(snap.get("gpus") or [])
            parts.insert(0, f"{n} GPU{'s' if n != 1 else ''}")
        self.query_one("#gpu-summary", Static).update(" " + " · ".join(parts))

    async def on_gpu_sampled(self, message: GpuSampled) -> None:
        snap = message.snapshot
        gpus = snap.get("gpus") or []
        host = snap.get("host") or {}
        for g in gpus:
            self.history.add(f"gpu{g['index']}.util", g.get("utilization_pct"))
            used, total = g.get("memory_used_mib"), g.get("memory_total_mib")
            self.history.add(f"gpu{g['index']}.mem", used / total if used is not None and total else None)
        self.history.add("host.cpu", host.get("cpu_pct"))
        ram_used, ram_total = host.get("ram_used_mib"), host.get("ram_total_mib")
        self.history.add("host.ram", ram_used / ram_total if ram_used is not None and ram_total else None)

        body = self.query_one("#gpu-body", VerticalScroll)
        wanted = [f"gpu-card-{g['index']}" for g in gpus] if gpus else ["no-gpu"]
        wanted.append("host-panel")
        if [w.id for w in body.children] != wanted:
            # The set of GPUs changed (first sample, or a GPU fell off the bus): rebuild once.
            await body.remove_children()
            new = [GpuCard(g["index"], id=f"gpu-card-{g['index']}") for g in gpus] if gpus else [
                NoGpuPanel(id="no-gpu")]
            await body.mount_all([*new, HostPanel(id="host-panel")])
        if gpus:
            for g in gpus:
                body.query_one(f"#gpu-card-{g['index']}", GpuCard).show(g, self.history)
        else:
            body.query_one("#no-gpu", NoGpuPanel).show(snap.get("reason") or "no NVIDIA GPU found")
        body.query_one("#host-panel", HostPanel).show(host, self.history)
        self._show_summary(snap)
        self.samples += 1
