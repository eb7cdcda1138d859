"""Files that stay private and whole: owner-only directories, atomic replacement, tolerant JSON reads."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from pathlib import Path

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


def append_json_line(path: Path, record: dict) -> None:
    """One JSON object as a line at the end of a JSON-lines file, flushed to disk: a crash loses no line
    written before it, and tears at most the one being written."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_json(path: Path) -> dict | None:
    """A JSON object from a file, or None when it is missing, empty or damaged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def lock_exclusive(path: Path):
    """(the open file holding an exclusive lock on `path`, None), the lock lasting while the file (or a child it
    was passed to) keeps it open; or (None, what its holder wrote in it) when another process holds it."""
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        return None, holder
    return f, None


def name_holder(lock, holder: str) -> None:
    """Write who holds a lock into its file, for the message of the next one refused."""
    lock.seek(0)
    lock.truncate()
    lock.write(holder)
    lock.flush()
