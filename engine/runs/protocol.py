"""The run-directory protocol (DESIGN section 2).

A run is a directory that the engine writes and anyone may read: the app, the
command line, a script. Nothing here imports torch, so readers stay light.

    config.yaml   the validated configuration, written once
    run.json      identity: schema, id, created, argv, config hash, model, data fingerprint
    status.json   the latest state, replaced atomically by the engine's heartbeat
    events.jsonl  append-only history, one JSON object per line
    control/      commands for the engine: cmd-<id>.json, moved to control/done/ once applied
    checkpoints/  checkpoint-<step>/ with a COMPLETE marker written last
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine.core.files import ensure_private_dir, read_json

SCHEMA_VERSION = 1
HEARTBEAT_SECONDS = 1.0
# A heartbeat older than this, with no pid alive, means the engine died (a recorded pid that is
# gone while engine.lock is free means it at once).
STALE_AFTER_SECONDS = 10.0

ACTIVE_STATES = {"starting", "running", "paused", "evaluating", "checkpointing", "stopping"}
FINAL_STATES = {"completed", "stopped", "failed", "crashed"}
# What `resume` may pick up: also `unknown` (status.json damaged), since spawn refuses a live engine.
RESUMABLE_STATES = {"stopped", "crashed", "failed", "unknown"}
COMMANDS = {"stop", "stop_now", "pause", "resume", "checkpoint", "eval"}
COMPLETE_MARKER = "COMPLETE"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RunError(Exception):
    """A run cannot be found or used; the message says what to do."""


def pid_alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    # A zombie has exited but is not reaped yet: it is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# Status fields that readers do arithmetic with; a damaged file's wrong types are dropped.
NUMERIC_STATUS_FIELDS = ("step", "max_steps", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm",
                         "tokens_seen", "tokens_per_second", "eta_seconds", "heartbeat", "pid",
                         "best_metric", "best_step", "cuda_memory_gb")


def is_number(value) -> bool:
    """A number as JSON gives it (NaN and Inf included), not a bool: what readers of status and events
    may do arithmetic with."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# status.json's `ranks`: one entry per rank of the run, written by rank 0 at each training log
# (engine.training.ranks). Memory in bytes; utilization in percent, None where NVML cannot say.
RANK_NUMBERS = ("local_rank", "pid", "memory_used", "memory_reserved", "memory_peak", "utilization")


def status_ranks(status: dict) -> list[dict]:
    """The ranks a status records, in rank order, with the types readers rely on (a damaged entry is left out,
    a damaged number reads None)."""
    entries = status.get("ranks")
    if not isinstance(entries, list):
        return []
    sane = []
    for entry in entries:
        if not isinstance(entry, dict) or not is_number(entry.get("rank")):
            continue
        sane.append({**entry, "rank": int(entry["rank"]),
                     **{k: entry.get(k) if is_number(entry.get(k)) else None for k in RANK_NUMBERS},
                     **{k: str(entry[k]) for k in ("host", "device", "error") if entry.get(k) is not None}})
    return sorted(sane, key=lambda entry: entry["rank"])


def _sane(status: dict) -> dict:
    """A status object readers can trust the types of: an unknown state reads `unknown`."""
    status = {k: v for k, v in status.items() if k not in NUMERIC_STATUS_FIELDS or is_number(v)}
    if not isinstance(status.get("warnings", []), list):
        del status["warnings"]
    for key in ("error", "model", "method", "host", "run_id"):
        if key in status and status[key] is not None and not isinstance(status[key], str):
            status[key] = str(status[key])
    state = status.get("state")
    if not isinstance(state, str) or state not in ACTIVE_STATES | FINAL_STATES:
        status["error"] = status.get("error") or f"status.json has no known state ({str(state)[:40]})"
        status["state"] = "unknown"
    return status


@dataclass
class Run:
    """One run directory, with helpers to read and write its files."""

    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    config_path = property(lambda self: self.path / "config.yaml")
    run_json_path = property(lambda self: self.path / "run.json")
    status_path = property(lambda self: self.path / "status.json")
    events_path = property(lambda self: self.path / "events.jsonl")
    log_path = property(lambda self: self.path / "engine.log")
    control_dir = property(lambda self: self.path / "control")
    checkpoints_dir = property(lambda self: self.path / "checkpoints")
    lock_path = property(lambda self: self.path / "engine.lock")

    # ---- reading -------------------------------------------------------
    def config(self) -> dict:
        try:
            data = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return {}
        return data if isinstance(data, dict) else {}

    def info(self) -> dict:
        return read_json(self.run_json_path) or {}

    def status(self) -> dict:
        """The status object, with `state` judged: a dead engine shows as crashed."""
        status = read_json(self.status_path)
        if status is None:
            reason = "status.json is missing" if not self.status_path.exists() else "status.json is damaged"
            status = {"state": "unknown", "error": reason}
        status = _sane(status)
        status.setdefault("run_id", self.id)
        if status.get("state") in ACTIVE_STATES and self.engine_dead(status):
            status["state"] = "crashed"
            status["error"] = status.get("error") or (
                f"engine (pid {status.get('pid')}) is gone, last heartbeat "
                f"{time.time() - float(status.get('heartbeat', 0)):.0f}s ago; "
                f"see {self.log_path} and run `tunedeck resume {self.id}`"
            )
        return status

    def engine_dead(self, status: dict) -> bool:
        if status.get("host") not in (None, socket.gethostname()):
            return False  # another machine's pid cannot be checked from here
        if pid_alive(status.get("pid")):
            return False
        if status.get("pid") and not self.engine_running():
            return True  # its pid is gone and nobody holds the lock: no need to wait for staleness
        heartbeat = float(status.get("heartbeat") or 0)
        return time.time() - heartbeat >= STALE_AFTER_SECONDS

    def engine_running(self) -> bool:
        """True while an engine holds this run's lock (engine.training.worker takes it for its whole life)."""
        import fcntl

        if not self.lock_path.exists():
            return False
        try:
            with open(self.lock_path, "r") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False

    def log_tail(self, lines: int = 20) -> list[str]:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return ["(engine.log is missing)"]
        return text.splitlines()[-lines:]

    def checkpoints(self) -> list[tuple[int, Path, bool]]:
        """(step, path, complete) for every checkpoint directory, oldest first."""
        found = []
        if self.checkpoints_dir.is_dir():
            for p in self.checkpoints_dir.iterdir():
                m = CHECKPOINT_RE.match(p.name)
                if m and p.is_dir():
                    found.append((int(m.group(1)), p, (p / COMPLETE_MARKER).is_file()))
        return sorted(found)

    def resume_checkpoint(self) -> tuple[Path | None, list[str]]:
        """The newest complete checkpoint, and why each newer one was skipped."""
        skipped = []
        for step, path, complete in reversed(self.checkpoints()):
            if complete:
                return path, skipped
            skipped.append(f"{path.name}: no {COMPLETE_MARKER} marker (interrupted while saving)")
        return None, skipped

    # ---- control -------------------------------------------------------
    def send_command(self, command: str, **args: Any) -> str:
        if command not in COMMANDS:
            raise RunError(f"unknown command {command!r}; use one of {', '.join(sorted(COMMANDS))}")
        ensure_private_dir(self.control_dir)
        cmd_id = f"{time.time_ns()}-{uuid.uuid4().hex[:6]}"
        final = self.control_dir / f"cmd-{cmd_id}.json"
        tmp = final.with_name(final.name + ".tmp")
        tmp.write_text(json.dumps({"id": cmd_id, "command": command, "sent": time.time(), **args}))
        os.replace(tmp, final)
        return cmd_id

    def pending_commands(self) -> list[dict]:
        """Commands not yet applied, oldest first; damaged files and repeats are moved aside."""
        if not self.control_dir.is_dir():
            return []
        commands = []
        done = self.control_dir / "done"
        for p in sorted(self.control_dir.glob("cmd-*.json")):
            data = read_json(p)
            command = data.get("command") if data else None
            if not isinstance(command, str) or command not in COMMANDS or (done / p.name).exists():
                self._retire_command(p)  # damaged, or delivered again after it was applied: once is enough
                continue
            data["_path"] = str(p)
            commands.append(data)
        return commands

    def retire_command(self, command: dict) -> None:
        self._retire_command(Path(command["_path"]))

    def _retire_command(self, path: Path) -> None:
        done = ensure_private_dir(self.control_dir / "done")
        try:
            os.replace(path, done / path.name)
        except FileNotFoundError:
            pass  # another reader retired it already


# ---- events ----------------------------------------------------------------
