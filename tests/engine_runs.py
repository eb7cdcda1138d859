"""Helpers that drive the real engine subprocess and read what it wrote: start a run as `tunedeck train
--detach` does, wait for it, kill it, and say what it did when an assertion fails."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from engine.runs.events import EventReader
from engine.runs.protocol import FINAL_STATES, Run


def events(run: Run) -> list[dict]:
    return EventReader(run.events_path).read_new()


def wait_for(predicate, timeout: float = 120, interval: float = 0.1, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_final(run: Run, proc=None, timeout: float = 180) -> dict:
    if proc is not None:
        proc.wait(timeout=timeout)
    wait_for(lambda: run.status().get("state") in FINAL_STATES, timeout, what=f"{run.id} to finish")
    return run.status()


def log_steps(run: Run) -> list[int]:
    return [e["step"] for e in events(run) if e["type"] == "log"]


def start(config_path: Path, workspace: Path, resume_run: Run | None = None):
    """Create and spawn a run the way `tunedeck train --detach` does; returns (run, process)."""
    from engine.runs.launch import create_from_config, spawn
    from engine.training.config import load_config

    run = resume_run or create_from_config(load_config(config_path), workspace)
    return run, spawn(run, resume=resume_run is not None)


def kill(proc, sig=signal.SIGKILL) -> None:
    os.kill(proc.pid, sig)


def dump(run: Run) -> str:
    """Context for a failing assertion."""
    return json.dumps(run.status(), indent=1, default=str) + "\n" + "\n".join(run.log_tail(30))


def kill_after_first_checkpoint(run: Run, proc, timeout: float = 120):
    """SIGKILL the engine once a checkpoint is complete; returns (that checkpoint, its step, skipped ones)."""
    wait_for(lambda: any(ok for _, _, ok in run.checkpoints()) or run.status().get("state") == "failed",
             timeout=timeout, what="a complete checkpoint")
    assert run.status()["state"] != "failed", dump(run)
    kill(proc)
    proc.wait(timeout=10)
    assert wait_for(lambda: run.status()["state"] == "crashed" or None, timeout=20, what="crashed state")
    checkpoint, skipped = run.resume_checkpoint()
    return checkpoint, int(checkpoint.name.split("-")[1]), skipped
