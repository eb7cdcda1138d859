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
import uuid
from pathlib import Path

from engine.core.files import ensure_private_dir, write_atomic
from engine.data.load import fingerprint
from engine.runs.protocol import ACTIVE_STATES, Run, RunError, pid_alive
from engine.runs.workspace import create_run
from engine.training.config import ConfigError, RunConfig, load_config
from engine.training.signals import STOP_SIGNALS

DDP_DIR = ".ddp"  # in the run directory: the rendezvous and process-group files of a torchrun launch
LAUNCH_TOKEN = "launch.json"  # in DDP_DIR: written by node 0 at each launch; followers must read the same one
JOIN_TIMEOUT_SECONDS = 600  # torchrun's c10d default, named: how long node 0 waits for the other nodes


def worker_command(run: Run, resume: bool, nproc_per_node: int, nnodes: int = 1, node_rank: int | str = 0,
                   local_addr: str = "127.0.0.1", rdzv_id: str | None = None,
                   rdzv_endpoint: str | None = None) -> list[str]:
    """The engine's command on one node: a plain process, or torchrun for several GPUs or machines. The one
    builder of the torchrun line: `tunedeck train` (node 0), `tunedeck join` and the Slurm script use it."""
    worker = ["-m", "engine.training.worker", "--run-dir", str(run.path)] + (["--resume"] if resume else [])
    if nproc_per_node == 1 and nnodes == 1:
        return [sys.executable, *worker]
    # One process per GPU; global rank 0 alone writes the run directory. Not --standalone: its rendezvous is a
    # TCP store that listens on every interface (:: even for a 127.0.0.1 endpoint); a file store in the run
    # directory needs no port at all (see ddp_env).
    # With rdzv_endpoint the node whose address it names hosts torchrun's c10d TCP store (torch tells by the address).
    rendezvous = ([f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-conf=join_timeout={JOIN_TIMEOUT_SECONDS}"]
                  if rdzv_endpoint else
                  [f"--rdzv-endpoint={rendezvous_dir(run.path) / 'store'}",
                   f"--rdzv-conf=store_type=file,join_timeout={JOIN_TIMEOUT_SECONDS}"])
    # c10d numbers the nodes by address and ignores torchrun's --node-rank (it says so): the worker gets the node
    # rank instead and numbers the ranks by it, so that node 0 holds rank 0 (engine.training.worker).
    node = ["--node-rank", str(node_rank)] if nnodes > 1 else []
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}",
            f"--nproc-per-node={nproc_per_node}", "--rdzv-backend=c10d", *rendezvous,
            f"--rdzv-id={rdzv_id or run.id}", f"--local-addr={local_addr}", *worker, *node]


def rendezvous_dir(run_dir: Path) -> Path:
    """The torchrun agents' file store lives alone in here, so that replacing the directory ends their use of it
    (engine.training.worker.release_agents)."""
    return run_dir / DDP_DIR / "rendezvous"


def loopback_interface() -> str:
    """The name of the interface that carries 127.0.0.1 (`lo` on Linux)."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addresses):
            return name
    return "lo"


def interface_address(name: str) -> str:
    """The address of this machine's interface `name` (IPv4 first), for torchrun's --local-addr; a name
    this machine lacks is one clear error."""
    import psutil

    interfaces = psutil.net_if_addrs()
    for family in (socket.AF_INET, socket.AF_INET6):
        for a in interfaces.get(name, []):
            if a.family == family:
                return a.address.split("%")[0]
    raise RunError(f"network_interface {name!r} is not an interface of {socket.gethostname()} (it has "
                   f"{', '.join(sorted(interfaces)) or 'none'}): name the one the nodes reach each other on")


def ddp_env(run: Run, network_interface: str | None = None) -> dict[str, str]:
    """What a torchrun launch needs so that nothing listens beyond the named interface: the agent opens no TCP
    store for its workers, the ranks join through a file store (engine.training.distributed.init_distributed)
    and check the launch token there, and gloo's and NCCL's own sockets are bound to loopback on one machine
    and to the config's network_interface across several."""
    interface = network_interface or loopback_interface()
    return {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
            "TUNEDECK_DDP_STORE": str(run.path / DDP_DIR / "process-group"),
            "TUNEDECK_LAUNCH_TOKEN": str(run.path / DDP_DIR / LAUNCH_TOKEN),
            "GLOO_SOCKET_IFNAME": interface, "NCCL_SOCKET_IFNAME": interface}


def engine_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of an engine process: offline, unbuffered, this checkout first on the path."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", **extra)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    return env


def node_log(run: Run, node_rank: int) -> Path:
    """Node 0's torchrun output goes to engine.log, node N's to engine-nodeN.log."""
    return run.log_path if node_rank == 0 else run.path / f"engine-node{node_rank}.log"


def prepare_launch(run: Run, cfg: dict, resume: bool) -> dict:
    """A fresh .ddp/ (a store left by an earlier launch would mislead) and the launch token in it: the followers'
    proof that they see node 0's storage, and what they join (launch id, resume or not)."""
    shutil.rmtree(run.path / DDP_DIR, ignore_errors=True)
    ensure_private_dir(rendezvous_dir(run.path))
    token = {"launch_id": f"{run.id}-{uuid.uuid4().hex[:8]}", "run_id": run.id, "resume": resume,
             "nnodes": int(cfg.get("nnodes") or 1), "host": socket.gethostname(), "created": time.time()}
    write_atomic(run.path / DDP_DIR / LAUNCH_TOKEN, json.dumps(token))
    return token


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
    nproc, nnodes = int(cfg.get("nproc_per_node") or 1), int(cfg.get("nnodes") or 1)
    interface = cfg.get("network_interface") if nnodes > 1 else None
    local_addr = interface_address(interface) if interface else "127.0.0.1"  # before anything starts
    torchrun = nproc > 1 or nnodes > 1
    extra, command = {}, worker_command(run, resume, 1)
    if torchrun:
        token = prepare_launch(run, cfg, resume)
        extra = ddp_env(run, interface)
        command = worker_command(run, resume, nproc, nnodes, 0, local_addr, token["launch_id"],
                                 cfg.get("rdzv_endpoint"))
    # A single engine starts with stop signals blocked (the mask survives exec) and unblocks them once
    # its handler is armed, so a SIGTERM during interpreter start-up stops the run instead of killing it.
    # torchrun is left as it is: it forwards signals to its workers itself.
    blocked = None if torchrun else signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        with open(run.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {'resume' if resume else 'start'} ===\n".encode())
            log.flush()
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=detach, env=engine_env(extra), cwd=run.path)
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
    info = {"dataset_fingerprint": fingerprint(cfg.data), "split_seed": cfg.seed,
            "world_size": cfg.nnodes * cfg.nproc_per_node, "nnodes": cfg.nnodes}
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
