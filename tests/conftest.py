"""Shared fixtures: a tiny real model and helpers that drive the real engine subprocess."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from engine.runs.events import EventReader
from engine.runs.protocol import FINAL_STATES, Run
from engine.testing import build_tiny_model, learnable_rows, write_jsonl

CONTRACT_CONFIG = {
    "model": "./tiny-model", "data": "./train.jsonl", "method": "lora", "max_steps": 40,
    "save_steps": 10, "eval_steps": 10, "learning_rate": 1.0e-3,
    "per_device_train_batch_size": 4, "max_seq_length": 128,
}


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """A directory with tiny-model/ and train.jsonl, as a user would have them."""
    root = tmp_path_factory.mktemp("project")
    build_tiny_model(root / "tiny-model")
    write_jsonl(root / "train.jsonl", learnable_rows(200))
    return root


@pytest.fixture
def workspace(tmp_path) -> Path:
    return tmp_path / "ws"


@pytest.fixture
def write_config(tiny_project, tmp_path):
    def write(**overrides) -> Path:
        cfg = {**CONTRACT_CONFIG, **overrides}
        cfg = {k: v for k, v in cfg.items() if v is not None}
        for key in ("model", "data"):
            if str(cfg[key]).startswith("./"):
                cfg[key] = str(tiny_project / cfg[key][2:])
        path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path
    return write


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
