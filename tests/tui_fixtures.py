"""Shared helpers for the TUI tests: the app under Pilot, fabricated runs, fixed GPU samplers, screen text,
snapshots."""

from __future__ import annotations

import io
import json
import math
import os
import socket
import time
from pathlib import Path

from rich.console import Console

from engine.core.files import write_atomic
from engine.runs.events import EventWriter
from engine.runs.protocol import Run
from engine.runs.workspace import create_run
from tui.app import TunedeckApp

SNAPSHOT_DIR = Path(__file__).parent / "snapshots"
UPDATE_ENV = "TUNEDECK_UPDATE_SNAPSHOTS"


def screen_text(app) -> str:
    """What the terminal shows, as plain text lines (no colour): the base of text snapshots."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system=None, record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


def assert_snapshot(app, name: str) -> None:
    """Compare the screen with tests/snapshots/<name>.txt; TUNEDECK_UPDATE_SNAPSHOTS=1 rewrites it."""
    text = screen_text(app)
    path = SNAPSHOT_DIR / f"{name}.txt"
    if os.environ.get(UPDATE_ENV) or not path.exists():
        if not os.environ.get(UPDATE_ENV):
            raise AssertionError(f"no snapshot {path}; run with {UPDATE_ENV}=1 to write it, then review it")
        SNAPSHOT_DIR.mkdir(exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
        return
    expected = path.read_text(encoding="utf-8").rstrip("\n")
    assert text == expected, f"screen differs from {path}:\n{text}"


# ---- GPU snapshots -------------------------------------------------------------

HOST = {"hostname": "box", "cpu_model": "Test CPU", "cpu_count": 8, "cpu_pct": 12.5,
        "load_avg": [0.5, 0.4, 0.3], "ram_total_mib": 65536, "ram_used_mib": 16384,
        "ram_available_mib": 49152, "workspace": "/ws", "cuda_visible_devices": None,
        "disk_path": "/ws", "disk_total_gib": 500.0, "disk_free_gib": 123.4}


def no_gpu_snapshot(workspace: Path) -> dict:
    return {"time": 0, "gpus": [], "host": dict(HOST),
            "reason": "no NVIDIA driver found (libnvidia-ml.so.1 is missing); training will run on the CPU"}


def one_gpu_snapshot(workspace: Path) -> dict:
    gpu = {"index": 0, "name": "NVIDIA A100-SXM4-80GB", "uuid": "GPU-1", "unavailable": {"fan_pct": "Not Supported"},
           "memory_total_mib": 81920, "memory_used_mib": 40960, "utilization_pct": 63,
           "memory_utilization_pct": 40, "temperature_c": 54, "power_w": 312.0, "power_limit_w": 400.0,
           "fan_pct": None, "sm_clock_mhz": 1410, "sm_clock_max_mhz": 1410, "mem_clock_mhz": 1593,
           "compute_capability": "8.0", "bf16": True, "mig": False,
           "processes": [{"pid": 4242, "memory_mib": 40000, "user": "alice", "command": "python -m engine.training.worker"},
                         {"pid": 777, "memory_mib": None, "user": None, "command": None,
                          "hidden": "pid not visible here (another container or user)"}]}
    return {"time": 0, "gpus": [gpu], "host": dict(HOST), "driver_version": "550.54", "cuda_version": "12.4"}


# ---- the app under Pilot --------------------------------------------------------

SIZE = (80, 24)


def make_app(tmp_path, sampler=no_gpu_snapshot, **kwargs) -> TunedeckApp:
    # A 10 s refresh keeps the timer out of the way: each test takes its samples on purpose.
    return TunedeckApp(tmp_path, gpu_sampler=sampler, gpu_interval=10.0, **kwargs)


async def wait_for(pilot, predicate, timeout: float = 5.0) -> None:
    """Let workers and timers run until `predicate()` holds; fail with the screen if it never does."""
    for _ in range(int(timeout / 0.02)):
        if predicate():
            await pilot.pause()  # let the refresh that follows the change reach the screen
            return
        await pilot.pause(0.02)
    raise AssertionError(f"timed out; screen was:\n{screen_text(pilot.app)}")


# ---- run directories ----------------------------------------------------------

def make_run(workspace: Path, *, name: str = "demo", run_id: str | None = None, steps: int = 40, max_steps: int = 100,
             state: str = "running", pid: int | None = None, heartbeat: float | None = None,
             created_ago: float = 7200.0, log_lines: tuple[str, ...] = ("loading model", "training"),
             warnings: bool = True, evals: bool = True, decay: float = 30.0, ranks: list[dict] | None = None) -> Run:
    """A run directory as the engine writes it, with `steps` log events (loss falling over `decay` steps)
    and a matching status; `ranks`: the status's per-rank entries (rank_entries)."""
    config = {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "method": "lora", "data": "train.jsonl"}
    run = create_run(workspace, config, name=name)
    if run_id is not None:  # a fixed id keeps snapshots stable
        run.path.rename(run.path.with_name(run_id))
        run = Run(run.path.with_name(run_id))
    info = run.info()
    info["run_id"] = run.id
    info["created"] = time.time() - created_ago
    write_atomic(run.run_json_path, json.dumps(info))
    writer = EventWriter(run.events_path)
    writer.write("state", 0, state="running")
    for step in range(1, steps + 1):
        writer.write("log", step, loss=2.5 * math.exp(-step / decay) + 0.3, learning_rate=2e-4 * (1 - step / max_steps),
                     grad_norm=1.0 + (step % 7) / 10, epoch=step / 50, tokens_per_second=850.0,
                     tokens_seen=step * 512)
        if evals and step % 10 == 0:
            writer.write("eval", step, eval_loss=2.4 * math.exp(-step / (decay + 5)) + 0.4)
        if warnings and step == 25:
            writer.write("warning", step, code="grad_spike", message="grad norm 9.1 is 8x its running median")
    writer.close()
    write_status(run, state=state, step=steps, max_steps=max_steps, pid=pid, heartbeat=heartbeat,
                 **({"ranks": ranks, "ranks_step": steps} if ranks is not None else {}))
    run.log_path.write_text("\n".join(log_lines) + "\n", encoding="utf-8")
    return run


def write_status(run: Run, *, state: str, step: int, max_steps: int, pid: int | None = None,
                 heartbeat: float | None = None, **extra) -> None:
    status = {"state": state, "pid": os.getpid() if pid is None else pid, "host": socket.gethostname(),
              "heartbeat": time.time() if heartbeat is None else heartbeat, "step": step,
              "max_steps": max_steps, "epoch": step / 50, "tokens_seen": step * 512,
              "tokens_per_second": 850.0, "eta_seconds": (max_steps - step) * 0.5,
              "loss": 2.5 * math.exp(-step / 30) + 0.3, "eval_loss": None, "learning_rate": 1e-4,
              "grad_norm": 1.2, "warnings": [], "error": None, "method": "lora",
              "model": "HuggingFaceTB/SmolLM2-135M-Instruct", **extra}
    write_atomic(run.status_path, json.dumps(status))


def rank_entries(count: int, nodes: int = 1, pids: list[int] | None = None, host: str | None = None) -> list[dict]:
    """status.json's `ranks` of a GPU run: `count` ranks over `nodes` machines, memory rising with the rank.
    `host`: the first machine's name (default node-a; socket.gethostname() for pids of this machine)."""
    per_node = count // nodes
    hosts = [host or "node-a", *(f"node-{chr(ord('a') + n)}" for n in range(1, nodes))]
    return [{"rank": r, "local_rank": r % per_node, "host": hosts[r // per_node], "pid": (pids or [])[r] if pids
             else 5000 + r, "device": f"cuda:{r % per_node}", "memory_used": (30 + r) * 2**30,
             "memory_reserved": (34 + r) * 2**30, "memory_peak": (36 + r) * 2**30 + 2**29, "utilization": 90 - r}
            for r in range(count)]


def dead_pid() -> int:
    """A pid that no process has: spawn one and let it exit."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
