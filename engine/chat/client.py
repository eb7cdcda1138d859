"""The chat's model process, owned by the app or the command line through a pipe (DESIGN section 2: a chat
belongs to the UI that opened it, unlike a training run). Light: it starts `engine.chat.server` and speaks
its JSON lines; the process's stderr goes to `<run>/chat/engine.log`, never to an undrained pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from engine.chat.session import FINAL, ChatWeights
from engine.core.files import ensure_private_dir
from engine.runs.protocol import Run


class ChatEngineError(RuntimeError):
    """The chat's model process failed to load or died; the message says how, in one line."""


class ChatEngine:
    def __init__(self, run: Run, weights: ChatWeights = FINAL):
        self.run, self.weights = run, weights
        self.log_path = run.path / "chat" / "engine.log"
        self.proc: subprocess.Popen | None = None
        self.next_id = 0

    def start(self) -> None:
        ensure_private_dir(self.log_path.parent)
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        argv = [sys.executable, "-m", "engine.chat.server", "--run-dir", str(self.run.path), *self.weights.argv()]
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} chat ===\n".encode())
            log.flush()
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                         text=True, encoding="utf-8", bufsize=1, env=env, cwd=self.run.path)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def send(self, request: dict) -> bool:
        """Write one request; False when the process is gone (its exit is read from `read`)."""
        try:
            self.proc.stdin.write(json.dumps(request, ensure_ascii=False) + "\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, ValueError, OSError):  # ValueError: stdin already closed
            return False

    def generate(self, messages: list[dict], side: str, temperature: float = 0.0, top_p: float = 1.0,
                 max_new_tokens: int = 256) -> int | None:
        """Ask for an answer; its id (the id of its token and done messages), or None when the process is gone."""
        self.next_id += 1
        request = {"type": "generate", "id": self.next_id, "side": side, "messages": messages,
                   "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens}
        return self.next_id if self.send(request) else None

    def stop(self) -> None:
        self.send({"type": "stop"})

    def read(self) -> dict | None:
        """The next message (blocks); None once the process has closed its stdout (exited or killed)."""
        while True:
            try:
                line = self.proc.stdout.readline()
            except (ValueError, OSError):  # closed by `close` meanwhile
                return None
            if not line:
                return None
            try:
                return json.loads(line)
            except ValueError:  # a library that printed to stdout: not ours, skip it
                continue

    def wait_ready(self) -> dict:
        """Read up to the `ready` message and return it; ChatEngineError if loading failed."""
        while (message := self.read()) is not None:
            if message["type"] == "ready":
                return message
            if message["type"] == "error":
                self.close()
                raise ChatEngineError(message["message"])
        raise ChatEngineError(self.exit_report())

    def answer(self, messages: list[dict], side: str, on_token=None, **settings) -> dict:
        """Ask and read up to the answer's `done` message (each token's text to `on_token`) and return it."""
        request_id = self.generate(messages, side, **settings)
        while request_id is not None and (message := self.read()) is not None:
            if message.get("id") != request_id:
                continue
            if message["type"] == "token" and on_token:
                on_token(message["text"])
            elif message["type"] == "done":
                return message
            elif message["type"] == "error":
                raise ChatEngineError(message["message"])
        raise ChatEngineError(self.exit_report())

    def exit_code(self, timeout: float = 10.0) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 8) -> list[str]:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.strip()][-lines:]

    def exit_report(self) -> str:
        """Why the process is gone, in one line: its exit code or signal and the last line of its log."""
        code = self.exit_code(timeout=5)
        how = ("is still running but stopped answering" if code is None else
               f"was killed by signal {-code}" if code < 0 else f"exited with code {code}")
        tail = [line for line in self.log_tail() if not line.startswith("=== ")]
        return f"the chat engine (pid {self.pid}) {how}" + (f"; its log ends: {tail[-1].strip()}" if tail else "")

    def close(self) -> None:
        """Close stdin (the process ends by itself), then make sure it has."""
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
