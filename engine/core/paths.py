"""Where tunedeck keeps things: the workspace (runs, configs, reports) and the cache (converted models)."""

from __future__ import annotations

import os
from pathlib import Path


def default_workspace() -> Path:
    return Path(os.environ.get("TUNEDECK_WORKSPACE", Path.home() / "tunedeck")).expanduser()


def cache_dir() -> Path:
    return Path(os.environ.get("TUNEDECK_CACHE", Path.home() / ".cache" / "tunedeck")).expanduser()
