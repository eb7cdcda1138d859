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
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from engine.brief import brief

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


def default_workspace() -> Path:
    return Path(os.environ.get("TUNEDECK_WORKSPACE", Path.home() / "tunedeck")).expanduser()


# The engine and the eval/export processes run under this umask: what they write is owner-only.
PRIVATE_UMASK = 0o077


def ensure_private_dir(path: Path, tighten: bool = True) -> Path:
    """A directory readable by its owner only: datasets and adapters are often private.

    It and every missing parent are created 0700 (mkdir's mode covers only the last component of
    `parents=True` and is masked by the umask; an explicit chmod makes it exactly 0700). An
    existing directory is tightened to its owner when `tighten` (tunedeck's own directories: runs/,
    a run's subdirectories, caches) and left as it is otherwise (a directory the user made or named,
    such as a workspace that already exists or the folder of an output path)."""
    path = Path(path)
    missing, parent = [], path
    while not parent.exists() and parent.parent != parent:
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:  # made by another process meanwhile: treat it as existing
            if not directory.is_dir():
                raise
            continue
        os.chmod(directory, 0o700)
    if tighten and not missing:
        mode = path.stat().st_mode & 0o7777
        if mode & 0o077:
            try:
                os.chmod(path, mode & ~0o077)
            except PermissionError:
                pass  # someone else's directory: nothing we may change
    return path


def write_atomic(path: Path, text: str) -> None:
    """Write temp, fsync, rename: a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    """A JSON object from a file, or None when it is missing, empty or damaged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def new_run_id(name: str = "run") -> str:
    slug = re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-")[:40] or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}-{uuid.uuid4().hex[:4]}"


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


def _sane(status: dict) -> dict:
    """A status object readers can trust the types of: an unknown state reads `unknown`."""
    status = {k: v for k, v in status.items() if k not in NUMERIC_STATUS_FIELDS
              or isinstance(v, (int, float)) and not isinstance(v, bool)}
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
        """True while an engine holds this run's lock (engine.worker takes it for its whole life)."""
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


def resolve_run(ref: str | Path, workspace: Path | None = None) -> Run:
    """A run from its id (inside the workspace) or its directory.

    A path to a run directory (one holding run.json) is taken as given, wherever it is: the person
    named it. An id is only ever a directory directly inside WS/runs: a name that is not an id
    (`..`, `a/b`, shell metacharacters) is refused, and so is an entry of WS/runs that is a
    symbolic link to somewhere outside it, by its id or by its path, so that nothing reached
    through WS/runs is written outside it.
    """
    ref = str(ref)
    try:
        ref_path = Path(ref).expanduser()
    except RuntimeError:  # ~user of a user that does not exist
        ref_path = Path(ref)
    ws = workspace or default_workspace()
    runs_dir = ws / "runs"
    try:
        is_dir, is_run = ref_path.is_dir(), (ref_path / "run.json").is_file()
    except OSError:  # a name too long to be a path: then it is no path
        is_dir = is_run = False
    if is_dir and is_run:
        lexical = Path(os.path.abspath(ref_path))
        if lexical.parent.resolve() == runs_dir.resolve():  # WS/runs/ENTRY by its path: the id rule holds
            return Run(_inside_runs(lexical, runs_dir, ref))
        return Run(ref_path.resolve())
    if not RUN_ID_RE.match(ref):
        if is_dir:
            raise RunError(f"{brief(ref, 400)} is a directory but not a run directory (no run.json)")
        raise RunError(f"no run {brief(ref, 400)} in {runs_dir}; a run is an id from `tunedeck runs` or a run directory")
    candidate = runs_dir / ref
    if candidate.is_dir():
        return Run(_inside_runs(candidate, runs_dir, ref))
    matches = [r for r in list_runs(ws) if r.id.startswith(ref) or r.id.endswith(ref)]
    if len(matches) == 1:
        return Run(_inside_runs(matches[0].path, runs_dir, ref))
    if len(matches) > 1:
        raise RunError(f"run {ref!r} is ambiguous: {', '.join(r.id for r in matches[:5])}")
    raise RunError(f"no run {ref!r} in {runs_dir}; list them with `tunedeck runs`")


def _inside_runs(path: Path, runs_dir: Path, ref: str) -> Path:
    """The real directory of an entry of WS/runs, refused when a link takes it outside WS/runs."""
    real = path.resolve()
    if real.parent != runs_dir.resolve():
        raise RunError(f"run {ref!r}: {path} links to {real}, outside {runs_dir}; refusing to use it through "
                       f"the workspace (give {real} itself to use it anyway)")
    return real


def list_runs(workspace: Path | None = None) -> list[Run]:
    """The runs of the workspace; an entry that links outside WS/runs is not one of them."""
    runs_dir = (workspace or default_workspace()) / "runs"
    if not runs_dir.is_dir():
        return []
    real_runs_dir = runs_dir.resolve()
    return sorted(
        (Run(p) for p in runs_dir.iterdir()
         if p.is_dir() and not p.name.startswith(".") and (not p.is_symlink() or p.resolve().parent == real_runs_dir)),
        key=lambda r: r.id,
    )


def create_run(workspace: Path, config: dict, *, name: str = "run", argv: list[str] | None = None,
               extra_info: dict | None = None) -> Run:
    """Make a run directory with config.yaml, run.json and a `starting` status."""
    import hashlib

    runs_dir = ensure_private_dir(ensure_private_dir(workspace, tighten=False) / "runs")
    run = Run(runs_dir / new_run_id(name))
    ensure_private_dir(run.path)
    ensure_private_dir(run.control_dir)
    config_text = yaml.safe_dump(config, sort_keys=False)
    write_atomic(run.config_path, config_text)
    info = {
        "schema": SCHEMA_VERSION,
        "run_id": run.id,
        "created": time.time(),
        "argv": argv or [],
        "config_hash": hashlib.sha256(config_text.encode()).hexdigest()[:16],
        "base_model": config.get("model"),
        "method": config.get("method"),
        **(extra_info or {}),
    }
    write_atomic(run.run_json_path, json.dumps(info, indent=2))
    write_atomic(run.status_path, json.dumps({"state": "starting", "run_id": run.id,
                                              "heartbeat": time.time(), "host": socket.gethostname()}))
    return run


# ---- events ----------------------------------------------------------------

class EventWriter:
    """Appends events, each one whole line, flushed; `seq` continues across resumes."""

    def __init__(self, path: Path):
        self.path = path
        self.seq, torn = _last_seq(path)
        self._file = open(path, "a", encoding="utf-8")
        if torn:
            # A killed engine left half a line: end it so the next event starts on its own line.
            self._file.write("\n")

    def write(self, type: str, step: int | None = None, **fields: Any) -> dict:
        self.seq += 1
        event = {"seq": self.seq, "ts": round(time.time(), 3), "type": type, "step": step, **fields}
        self._file.write(json.dumps(event, default=_json_default, allow_nan=True) + "\n")
        self._file.flush()
        return event

    def close(self) -> None:
        self._file.close()


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def _last_seq(path: Path) -> tuple[int, bool]:
    """The seq of the last whole event, read from the file's tail, and whether the tail is torn."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            tail = f.read()
    except OSError:
        return 0, False
    torn = bool(tail) and not tail.endswith(b"\n")
    for line in reversed(tail.splitlines()):
        try:
            return int(json.loads(line)["seq"]), torn
        except (ValueError, KeyError, TypeError):
            continue
    return 0, torn


@dataclass
class EventReader:
    """Follows events.jsonl by byte offset; a last line without its newline waits for the next read."""

    path: Path
    offset: int = 0
    skipped: int = field(default=0)

    def read_new(self, max_bytes: int | None = None) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read() if max_bytes is None else f.read(max_bytes)
        except OSError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        events = []
        for line in chunk[: end + 1].splitlines():
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                self.skipped += 1  # a torn line left by a killed engine
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def __iter__(self) -> Iterator[dict]:
        return iter(self.read_new())
