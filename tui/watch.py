"""The app's watch over every run while it is open, and which endings the user has seen.

`RunWatch.poll()` reads each run's status.json (judged: a dead engine reads crashed) and, for the runs
still going, the new bytes of events.jsonl; it returns what changed since the last poll as notices:
a run that reached a final state (completed, stopped, failed, crashed) and a warning code a run's engine
raised for the first time. What had ended before the app opened is not announced: the Runs list marks it
until it is seen. Nothing here touches Textual, so it is tested on its own.

An ending is seen once the monitor has shown the run in that state; `<run>/seen.json` records which
ending (its state and the pid of the engine that ended it, so a resumed run's next ending is new),
so the mark survives a restart of the app.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from engine.core.files import read_json, write_atomic
from engine.runs.events import EventReader
from engine.runs.protocol import FINAL_STATES, Run
from engine.runs.workspace import list_runs

SEEN_FILE = "seen.json"


def ending_key(status: dict) -> str | None:
    """Which ending a status shows (each engine ends once), or None while the run has not ended."""
    state = status.get("state")
    return f"{state}:{status.get('pid')}" if state in FINAL_STATES else None


def is_unseen(run: Run, status: dict) -> bool:
    key = ending_key(status)
    return key is not None and key != (read_json(run.path / SEEN_FILE) or {}).get("ending")


def mark_seen(run: Run, status: dict) -> None:
    """Remember that the user has seen this ending; a run directory we may not write keeps its mark."""
    key = ending_key(status)
    if key is None or not is_unseen(run, status):
        return
    try:
        write_atomic(run.path / SEEN_FILE, json.dumps({"ending": key, "seen": time.time()}))
    except OSError:
        pass


@dataclass(frozen=True)
class RunNotice:
    run_id: str
    text: str
    severity: str  # Textual's notify severities: information, warning, error


def ending_notice(run_id: str, status: dict) -> RunNotice:
    state, step = status["state"], status.get("step")
    at = f" at step {step}" if step is not None else ""
    if state == "completed":
        return RunNotice(run_id, f"Run {run_id} completed{at}.", "information")
    if state == "stopped":
        return RunNotice(run_id, f"Run {run_id} stopped{at}; r on Runs resumes it.", "warning")
    return RunNotice(run_id, f"Run {run_id} {state}{at}: {status.get('error') or 'see engine.log'}", "error")


class RunWatch:
    """Every run of the workspace, and any other run directory `include`d (one attached by path)."""

    def __init__(self, workspace: Path):
        self.workspace = workspace
        self.included: dict[Path, Run] = {}
        self.endings: dict[Path, str | None] | None = None  # None until the first poll
        self.readers: dict[Path, EventReader] = {}  # the runs still going
        self.warned: dict[Path, set[str]] = {}
        self._lock = threading.Lock()  # one poll at a time: the app's timer may fire during a slow one

    def include(self, run: Run) -> None:
        self.included[run.path] = run

    def poll(self) -> list[RunNotice]:
        """What changed since the last poll; nothing while another poll is still reading (a slow disk)."""
        if not self._lock.acquire(blocking=False):
            return []
        try:
            return self._poll()
        finally:
            self._lock.release()

    def _poll(self) -> list[RunNotice]:
        runs = {run.path: run for run in list_runs(self.workspace)} | self.included
        opened = self.endings is None
        before = self.endings or {}
        notices, endings = [], {}
        for path, run in runs.items():
            status = run.status()
            key = endings[path] = ending_key(status)
            reader = self.readers.get(path)
            if reader is None and key is None:
                # A run going when the app opened is followed from here; one started since, from its start.
                start = _size(run.events_path) if opened or path in before else 0
                reader = self.readers[path] = EventReader(run.events_path, offset=start)
            if reader is not None:
                notices += self._warnings(run, reader)
            if key is not None:  # ended: a resumed engine's warnings are new again, as for notify_command
                self.readers.pop(path, None)
                self.warned.pop(path, None)
                if not opened and key != before.get(path):
                    notices.append(ending_notice(run.id, status))
        self.endings = endings
        self.readers = {path: reader for path, reader in self.readers.items() if path in runs}  # deleted runs
        return notices

    def _warnings(self, run: Run, reader: EventReader) -> list[RunNotice]:
        warned = self.warned.setdefault(run.path, set())
        notices = []
        for event in reader.read_new():
            code = event.get("code")
            if event.get("type") == "warning" and isinstance(code, str) and code not in warned:
                warned.add(code)
                step = event.get("step")
                at = f" step {step}" if step is not None else ""
                notices.append(RunNotice(run.id, f"Run {run.id}{at}: {code}: {event.get('message', '')}", "warning"))
        return notices


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
