"""The real tunedeck app in a pseudo-terminal: keys in, the terminal's bytes out.

A reader thread drains the terminal (the app blocks on a full buffer otherwise) and
keeps everything drawn, so a test can wait for text to appear on screen.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class PtyApp:
    def __init__(self, *args: str, columns: int = 100, lines: int = 30):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(columns), LINES=str(lines))
        self.proc = subprocess.Popen([sys.executable, "-m", "tui.cli", *args], stdin=slave, stdout=slave,
                                     stderr=slave, env=env, cwd=ROOT, start_new_session=True)
        os.close(slave)
        self.master, self.screen = master, bytearray()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.master], [], [], 0.5)
                if ready:
                    chunk = os.read(self.master, 65536)
                    if not chunk:
                        return
                    self.screen.extend(chunk)
                elif self.proc.poll() is not None:
                    return
            except OSError:
                return

    def press(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait_for(self, text: bytes, timeout: float = 60, since: int = 0) -> int:
        """Wait until `text` is drawn after byte `since`; where it was drawn."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            at = self.screen.find(text, since)
            if at >= 0:
                return at
            if self.proc.poll() is not None:
                raise AssertionError(f"the app exited {self.proc.returncode}: {bytes(self.screen[-500:])!r}")
            time.sleep(0.05)
        raise AssertionError(f"the app did not draw {text!r} in {timeout:.0f}s: {bytes(self.screen[-500:])!r}")

    def close(self) -> None:
        """Quit with ctrl+q; kill it if it does not go."""
        try:
            if self.proc.poll() is None:
                self.press(b"\x11")
                self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            self._reader.join(timeout=5)
            os.close(self.master)
