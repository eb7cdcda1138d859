"""events.jsonl: the engine appends whole lines; readers follow by byte offset (DESIGN section 2)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator


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
