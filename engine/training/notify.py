"""The user's `notify_command`, run by the engine when the run ends or raises a warning.

Once per ending of this engine (completed, stopped, failed) and once per warning code it raises; a
resumed run is a new engine, so it notifies its own ending and never the one before. The command is
split with shlex and run without a shell: the run's values reach it only through the environment

    TUNEDECK_RUN_ID  TUNEDECK_RUN_DIR  TUNEDECK_STATE (completed | stopped | failed | warning)
    TUNEDECK_REASON (one line: the error, why it stopped, the warning's message)
    TUNEDECK_WARNING (the warning's code; empty for an ending)  TUNEDECK_STEP

so nothing a run writes (an exception text, a file name in the data) can become part of a command
line. Each runs in its own thread and process group, stdin from /dev/null, its output into engine.log,
killed after NOTIFY_TIMEOUT_SECONDS; training never waits for it, the engine's exit waits for all of
them. A failure is reported back (to become a `notify_failed` warning event), never raised. Light: no
torch here.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from engine.training.signals import StopNow

NOTIFY_TIMEOUT_SECONDS = 30.0
NOTIFY_FAILED = "notify_failed"  # the warning code of a command that failed; never notified itself
ENDINGS = ("completed", "stopped", "failed")


class Notifier:
    """`failed(message)` is called, from the command's thread, when a command fails or times out."""

    def __init__(self, command: str | None, run_id: str, run_dir: Path, failed: Callable[[str], None],
                 timeout: float = NOTIFY_TIMEOUT_SECONDS):
        self.argv = shlex.split(command) if command else []
        self.run_id, self.run_dir, self.failed, self.timeout = run_id, run_dir, failed, timeout
        self._sent: set[str] = set()  # "ending", "warning:<code>"
        self._threads: list[threading.Thread] = []

    def ending(self, state: str, reason: str, step: int | None) -> None:
        """The engine's one ending; a second final state in the same life (a failure while leaving) is not
        notified again."""
        if state in ENDINGS:
            self._send("ending", state, reason, step)

    def warning(self, code: str, message: str, step: int | None) -> None:
        if code != NOTIFY_FAILED:
            self._send(f"warning:{code}", "warning", message, step, code)

    def _send(self, key: str, state: str, reason: str, step: int | None, code: str = "") -> None:
        if not self.argv or key in self._sent:
            return
        self._sent.add(key)
        env = dict(os.environ, TUNEDECK_RUN_ID=self.run_id, TUNEDECK_RUN_DIR=str(self.run_dir),
                   TUNEDECK_STATE=state, TUNEDECK_REASON=" ".join(str(reason).split()),
                   TUNEDECK_WARNING=code, TUNEDECK_STEP="" if step is None else str(step))
        thread = threading.Thread(target=self._run, args=(env, f"{state}{f' {code}' if code else ''}"),
                                  daemon=True, name=f"notify {key}")
        self._threads.append(thread)
        thread.start()

    def _run(self, env: dict[str, str], what: str) -> None:
        command = shlex.join(self.argv)
        try:
            proc = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL, cwd=self.run_dir,
                                    start_new_session=True)  # its own group: a timeout kills its children too
        except (OSError, ValueError) as exc:  # not found, not executable; a NUL in a value
            why = getattr(exc, "strerror", None) or exc
            self.failed(f"notify_command {command} could not start for {what}: {why}")
            return
        try:
            code = proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
            self.failed(f"notify_command {command} took over {self.timeout:g}s for {what} and was killed")
            return
        if code != 0:
            self.failed(f"notify_command {command} exited with code {code} for {what}")

    def wait(self) -> None:
        """Until every command has finished or been killed (each at most the timeout)."""
        deadline = time.monotonic() + self.timeout + 5
        try:
            for thread in self._threads:
                thread.join(max(0.0, deadline - time.monotonic()))
        except StopNow:
            pass  # a second stop signal: leave now; the commands run on in their own sessions
