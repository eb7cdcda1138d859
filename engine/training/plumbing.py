"""The run plumbing every recipe shares: events, the status heartbeat, the state, control commands and
stop signals, agreed across ranks.

A recipe, the Trainer callback (engine.training.callback) and the checkpoint bookkeeping
(engine.training.checkpoints) reach the run directory only through RunPlumbing:

    plumbing.event(type, step=..., **fields)     one line in events.jsonl
    plumbing.update(**fields)                    status.json fields, written by the next heartbeat
    plumbing.set_state(state, step=..., **f)     the state: a status update, a state event, written now
    plumbing.stop_requested                      a graceful stop was asked for (command or signal)

An ending state and each new warning code also run the config's notify_command (engine.training.notify).

It knows nothing of recipes. Under torchrun every rank has one; only rank 0's writes anything.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

from engine.core.files import write_atomic
from engine.runs.events import EventWriter
from engine.runs.protocol import COMMANDS, HEARTBEAT_SECONDS, Run
from engine.training.distributed import agree, local_device, rank
from engine.training.notify import NOTIFY_FAILED, Notifier
from engine.training.signals import SIGNALS


class StatusBoard:
    """status.json kept fresh by a heartbeat thread, so it stays current while a step,
    an evaluation, a checkpoint or a pause takes long. Only rank 0 writes."""

    def __init__(self, run: Run, writes: bool, **initial):
        self.run, self.writes = run, writes
        self.fields = {"run_id": run.id, "pid": os.getpid(), "host": socket.gethostname(), **initial}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="heartbeat")

    def start(self) -> None:
        self.flush()
        if self.writes:
            self._thread.start()

    def update(self, **fields) -> None:
        with self._lock:
            self.fields.update(fields)

    def flush(self) -> None:
        if not self.writes:
            return
        # One writer at a time, snapshot and write together: the heartbeat thread and the training
        # thread both flush, and an older snapshot must not replace a newer state (the fault suite
        # caught the two renaming one temp file at once).
        with self._write_lock:
            with self._lock:
                self.fields["heartbeat"] = time.time()
                text = json.dumps(self.fields, default=str, allow_nan=True)
            write_atomic(self.run.status_path, text)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.flush()
            except OSError:
                pass  # a full disk must not kill training; the next beat tries again

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.flush()


class RunPlumbing:
    """One engine's side of the run directory. `resume`: this engine continues the run, so the status the
    previous engine left is read (before the heartbeat replaces it) for the best evaluation it recorded.
    `notify_command`: the config's, run by rank 0 alone."""

    def __init__(self, run: Run, resume: bool = False, notify_command: str | None = None, **status):
        self.run, self.resume = run, resume
        self.writes = rank() == 0
        self.events = EventWriter(run.events_path) if self.writes else None
        self._event_lock = threading.Lock()  # the notify threads report failures as events too
        self.notifier = Notifier(notify_command if self.writes else None, run.id, run.path,
                                 lambda message: self.event("warning", code=NOTIFY_FAILED, message=message))
        self.previous_status = run.status() if resume else {}
        self.board = StatusBoard(run, self.writes, state="starting", **status)
        self._stop_requested = False

    # ---- the interface ------------------------------------------------------
    def event(self, type: str, step: int | None = None, **fields) -> None:
        with self._event_lock:
            if self.events is None:
                return
            self.events.write(type, step=step, **fields)
        if type == "warning":
            self.notifier.warning(str(fields.get("code")), str(fields.get("message", "")), step)

    def update(self, **fields) -> None:
        self.board.update(**fields)

    def set_state(self, state: str, step: int | None = None, **fields) -> None:
        self.board.update(state=state, **fields)
        self.event("state", step=step, state=state, **{k: v for k, v in fields.items() if k != "warnings"})
        self.board.flush()
        self.notifier.ending(state, fields.get("error") or fields.get("reason") or f"{state} at step {step}", step)

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    def request_stop(self) -> None:
        """Stop gracefully: the caller saves a checkpoint at the step boundary, then training ends."""
        self._stop_requested = True
        self.board.update(state="stopping")

    # ---- control ---------------------------------------------------------------
    def requested(self) -> dict[str, bool]:
        """What has been asked for since the last call, by command files (acknowledged and retired by
        rank 0) or stop signals (one: stop, two: stop_now), agreed across ranks so all act alike."""
        wants = dict.fromkeys(sorted(COMMANDS), False)
        wants["stop"] = SIGNALS.count >= 1
        wants["stop_now"] = SIGNALS.count >= 2
        if self.writes:
            for command in self.run.pending_commands():
                wants[command["command"]] = True
                self.event("command_ack", command=command["command"], id=command["id"])
                self.run.retire_command(command)
        return dict(zip(wants, agree(list(wants.values()), local_device())))

    # ---- lifetime ------------------------------------------------------------------
    def start(self) -> None:
        self.board.start()

    def close(self) -> None:
        self.notifier.wait()  # their failures are events: before the event file closes
        self.board.close()
        with self._event_lock:  # a command still running after a second stop signal writes nothing now
            events, self.events = self.events, None
        if events is not None:
            events.close()
