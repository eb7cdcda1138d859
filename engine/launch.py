"""Start the engine as a detached process: new session, stdin from /dev/null, stdout and
stderr to the run's engine.log. Never a pipe back to the caller: an undrained pipe
stalls training and a closed terminal must not kill it. Light: no torch here."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from engine.config import RunConfig, load_config
from engine.data import fingerprint
from engine.runs import ACTIVE_STATES, Run, RunError, create_run, pid_alive, write_atomic
from engine.stopping import STOP_SIGNALS


def worker_command(run: Run, resume: bool, nproc_per_node: int) -> list[str]:
    worker = ["-m", "engine.worker", "--run-dir", str(run.path)] + (["--resume"] if resume else [])
    if nproc_per_node > 1:
        # One process per GPU under DDP; rank 0 alone writes the run directory.
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={nproc_per_node}", *worker]
    return [sys.executable, *worker]


def spawn(run: Run, resume: bool = False, detach: bool = True) -> subprocess.Popen:
    # Held from the check to the status write, so two `resume`s at once cannot both start an engine.
    with open(run.path / "spawn.lock", "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        status = run.status()
        if resume and status.get("state") == "completed":
            raise RunError(f"run {run.id} completed; start a new run to train further")
        starting = status.get("state") in ACTIVE_STATES and pid_alive(status.get("pid"))
        if run.engine_running() or starting:
            raise RunError(f"run {run.id} already has an engine running; "
                           f"stop it first with `tunedeck stop {run.id}`")
        return _start_engine(run, resume, detach, status)


def _start_engine(run: Run, resume: bool, detach: bool, status: dict) -> subprocess.Popen:
    cfg = run.config()
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    nproc = int(cfg.get("nproc_per_node") or 1)
    # A single engine starts with stop signals blocked (the mask survives exec) and unblocks them once
    # its handler is armed, so a SIGTERM during interpreter start-up stops the run instead of killing it.
    # torchrun is left as it is: it forwards signals to its workers itself.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS) if nproc == 1 else None
    try:
        with open(run.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {'resume' if resume else 'start'} ===\n".encode())
            log.flush()
            proc = subprocess.Popen(
                worker_command(run, resume, nproc),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=detach, env=env, cwd=run.path)
    finally:
        if blocked is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    # The engine takes seconds to import torch; until its first heartbeat this pid stands for it,
    # so the run is not judged crashed while it starts.
    write_atomic(run.status_path, json.dumps({
        **(status if resume else {}), "state": "starting", "run_id": run.id, "pid": proc.pid,
        "host": socket.gethostname(), "heartbeat": time.time(), "error": None}))
    return proc


def create_from_config(cfg: RunConfig, workspace: Path, argv: list[str] | None = None) -> Run:
    return create_run(workspace, cfg.to_dict(), name=cfg.name or Path(cfg.data).stem, argv=argv,
                      extra_info={"dataset_fingerprint": fingerprint(cfg.data), "split_seed": cfg.seed})


def start_detached(config_path: Path, workspace: Path) -> Run:
    """Create a run from a config file and start its engine in the background."""
    run = create_from_config(load_config(config_path), workspace, argv=["train", str(config_path)])
    spawn(run)
    return run


def resume_detached(run: Run) -> Run:
    spawn(run, resume=True)
    return run
