"""Start the engine as a detached process: new session, stdin from /dev/null, stdout and
stderr to the run's engine.log. Never a pipe back to the caller: an undrained pipe
stalls training and a closed terminal must not kill it. Light: no torch here."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from engine.core.files import ensure_private_dir, write_atomic
from engine.data.load import fingerprint
from engine.runs.protocol import ACTIVE_STATES, Run, RunError, pid_alive
from engine.runs.workspace import create_run
from engine.training.config import ConfigError, RunConfig, load_config
from engine.training.signals import STOP_SIGNALS

DDP_DIR = ".ddp"  # in the run directory: the rendezvous and process-group files of a torchrun launch


def worker_command(run: Run, resume: bool, nproc_per_node: int) -> list[str]:
    worker = ["-m", "engine.training.worker", "--run-dir", str(run.path)] + (["--resume"] if resume else [])
    if nproc_per_node > 1:
        # One process per GPU under DDP; rank 0 alone writes the run directory. Not --standalone: its
        # rendezvous is a TCP store that listens on every interface (:: even for a 127.0.0.1 endpoint);
        # a file store in the run directory needs no port at all (see ddp_env).
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
                f"--nproc_per_node={nproc_per_node}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={run.path / DDP_DIR / 'rendezvous'}", "--rdzv-conf=store_type=file",
                f"--rdzv-id={run.id}", "--local-addr=127.0.0.1", *worker]
    return [sys.executable, *worker]


def loopback_interface() -> str:
    """The name of the interface that carries 127.0.0.1 (`lo` on Linux)."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addresses):
            return name
    return "lo"


def ddp_env(run: Run) -> dict[str, str]:
    """What a torchrun launch needs so that nothing listens beyond loopback: the agent opens no TCP
    store for its workers, the ranks join through a file store (engine.training.distributed.init_distributed), and
    gloo's and NCCL's own sockets are bound to the loopback interface (one node: nothing else is needed)."""
    loopback = loopback_interface()
    return {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
            "TUNEDECK_DDP_STORE": str(run.path / DDP_DIR / "process-group"),
            "GLOO_SOCKET_IFNAME": loopback, "NCCL_SOCKET_IFNAME": loopback}


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
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    nproc = int(cfg.get("nproc_per_node") or 1)
    if nproc > 1:
        shutil.rmtree(run.path / DDP_DIR, ignore_errors=True)  # a store left by an earlier launch would mislead
        ensure_private_dir(run.path / DDP_DIR)
        env.update(ddp_env(run))
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
    info = {"dataset_fingerprint": fingerprint(cfg.data), "split_seed": cfg.seed}
    if cfg.general_data:
        info["general_data"] = general_data_info(cfg)
    return create_run(workspace, cfg.to_dict(), name=cfg.name or Path(cfg.data).stem, argv=argv, extra_info=info)


def general_data_info(cfg: RunConfig) -> dict:
    """What run.json records of the mix: the file, its hash, the ratio and its usable examples (the engine's
    data_ready event says how many were sampled). A file with none fails here, before an engine starts."""
    from engine.data.load import load_examples

    usable = len(load_examples(cfg.general_data).examples)
    if not usable:
        raise ConfigError(f"config key 'general_data': no usable examples in {cfg.general_data}; "
                          f"check it with `tunedeck data lint {cfg.general_data}`")
    return {"path": cfg.general_data, "fingerprint": fingerprint(cfg.general_data), "ratio": cfg.general_ratio,
            "examples": usable}


def start_detached(config_path: Path, workspace: Path) -> Run:
    """Create a run from a config file and start its engine in the background."""
    run = create_from_config(load_config(config_path), workspace, argv=["train", str(config_path)])
    spawn(run)
    return run


def resume_detached(run: Run) -> Run:
    spawn(run, resume=True)
    return run
