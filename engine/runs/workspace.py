"""The runs of a workspace: make a new run directory, list them, find one by id or path."""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from pathlib import Path

import yaml

from engine.core.files import ensure_private_dir, write_atomic
from engine.core.paths import default_workspace
from engine.core.quoting import brief
from engine.runs.protocol import RUN_ID_RE, SCHEMA_VERSION, Run, RunError


def new_run_id(name: str = "run") -> str:
    slug = re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-")[:40] or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}-{uuid.uuid4().hex[:4]}"


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
