"""A run on several machines: the other nodes join node 0's launch, or Slurm starts them all. Light: no torch.

Node 0 (`tunedeck train`, engine.runs.launch) writes the launch token `.ddp/launch.json` into the run
directory and starts torchrun; each other node runs `tunedeck join RUN --node-rank N`, which reads that
token (so it sees the same storage), checks that node 0 waits for it and that no other process joined
as node N, then starts the same torchrun line (engine.runs.launch.worker_command) with its own rank.
Its output goes to `engine-nodeN.log`; global rank 0 alone writes the run's files.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from engine.core.files import ensure_private_dir, lock_exclusive, name_holder, read_json, write_atomic
from engine.runs.launch import (DDP_DIR, JOIN_TIMEOUT_SECONDS, LAUNCH_TOKEN, ddp_env, engine_env, interface_address,
                                node_log, prepare_launch, worker_command)
from engine.runs.protocol import ACTIVE_STATES, Run, RunError, pid_alive

SHARED_STORAGE = "the run directory must be on storage all nodes see, at a path each node can name"


def launch_token(run: Run) -> dict:
    """The token node 0 wrote at its latest launch, or the one clear error of a follower that cannot see it."""
    token = read_json(run.path / DDP_DIR / LAUNCH_TOKEN)
    if not token or token.get("run_id") != run.id or not token.get("launch_id"):
        raise RunError(f"run {run.id} has no launch token ({DDP_DIR}/{LAUNCH_TOKEN}) at {run.path}: either node 0 "
                       f"has not started it yet (`tunedeck train CONFIG` or `tunedeck resume {run.id}` there), or "
                       f"this is not on storage all nodes see; {SHARED_STORAGE}")
    return token


def stop_waiting(run: Run, timeout: float = 30.0) -> bool:
    """Stop a run on several machines whose node 0 still waits, on this machine, for the others to join: no engine
    runs yet to read a stop command, so node 0's torchrun is sent SIGTERM (it leaves the rendezvous) and the run is
    recorded as stopped. False, and nothing done, when the run is not waiting here."""
    status = run.status()
    pid = status.get("pid")
    if (status.get("state") != "starting" or int(run.config().get("nnodes") or 1) == 1
            or status.get("host") != socket.gethostname() or run.engine_running() or not pid_alive(pid)):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while pid_alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    written = read_json(run.status_path) or {}
    if written.get("state") == "starting" and not run.engine_running():  # no worker started meanwhile
        write_atomic(run.status_path, json.dumps({**status, "state": "stopped", "pid": None, "heartbeat": time.time(),
                                                  "error": None, "reason": "stopped while waiting for the other nodes"}))
    return True


def check_join(run: Run, node_rank: int) -> tuple[dict, dict]:
    """(config, launch token) when this machine may join the run as `node_rank`, else one clear error."""
    if not run.path.is_dir():
        raise RunError(f"no run directory {run.path}: {SHARED_STORAGE}")
    cfg = run.config()
    nnodes = int(cfg.get("nnodes") or 1)
    if nnodes == 1:
        raise RunError(f"run {run.id} is for one machine (nnodes: 1): there is nothing to join")
    if not 1 <= node_rank < nnodes:
        raise RunError(f"--node-rank {node_rank} is out of range for run {run.id}: it has {nnodes} nodes, "
                       f"so join as 1 to {nnodes - 1} (node 0 is the one that started it)")
    token = launch_token(run)
    status = run.status()
    state = status.get("state")
    if state not in ACTIVE_STATES:
        raise RunError(f"run {run.id} is {state}, so node 0 waits for no one: start it again on node 0 with "
                       f"`tunedeck resume {run.id}`, then join")
    if state != "starting":
        raise RunError(f"run {run.id} is already {state} on all its {nnodes} nodes")
    waited = time.time() - float(token.get("created") or 0)
    if waited > JOIN_TIMEOUT_SECONDS:
        raise RunError(f"node 0 of run {run.id} started {waited:.0f} s ago and waits {JOIN_TIMEOUT_SECONDS} s for "
                       f"the other nodes: start it again on node 0 with `tunedeck resume {run.id}`, then join")
    interface_address(cfg.get("network_interface") or "")  # this node has the interface, or one clear error
    return cfg, token


def hold_node(run: Run, node_rank: int):
    """The lock of node `node_rank` in this launch (.ddp/nodes/node-N.lock), held by its torchrun agent for
    its life: a second join for the same node refuses while the first one runs."""
    f, holder = lock_exclusive(ensure_private_dir(run.path / DDP_DIR / "nodes") / f"node-{node_rank}.lock")
    if f is None:
        raise RunError(f"node rank {node_rank} of run {run.id} has joined already ({holder}); "
                       f"each node joins once, with its own --node-rank")
    return f


def join(run: Run, node_rank: int, detach: bool = True) -> subprocess.Popen:
    """Start this machine's torchrun for node `node_rank` of the run that node 0 launched."""
    cfg, token = check_join(run, node_rank)
    interface = cfg["network_interface"]
    command = worker_command(run, bool(token.get("resume")), int(cfg.get("nproc_per_node") or 1),
                             int(cfg["nnodes"]), node_rank, interface_address(interface), token["launch_id"],
                             cfg.get("rdzv_endpoint"))
    lock = hold_node(run, node_rank)
    try:
        with open(node_log(run, node_rank), "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} node {node_rank} joins "
                      f"{token['launch_id']} ===\n".encode())
            log.flush()
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=detach, env=engine_env(ddp_env(run, interface)),
                                    cwd=run.path, pass_fds=(lock.fileno(),))  # the agent holds the lock now
        name_holder(lock, f"pid {proc.pid} on {socket.gethostname()}")
    finally:
        lock.close()
    return proc


# ---- Slurm ------------------------------------------------------------------------------

# What the script's shell fills in on each node; shell-safe words, so shlex leaves them unquoted.
SLURM_VARIABLES = {"__NODE_RANK__": "${SLURM_NODEID}", "__LOCAL_ADDR__": "${LOCAL_ADDR}",
                   "__LAUNCH_ID__": "${LAUNCH_ID}"}


def shell_line(argv: list[str]) -> str:
    """argv quoted for bash, with the per-node placeholders as bash variables."""
    line = shlex.join(argv)
    for word, variable in SLURM_VARIABLES.items():
        line = line.replace(word, f'"{variable}"')
    return line


def slurm_script(run: Run) -> str:
    """An sbatch script that runs `run` on nnodes allocated nodes: once, on the first one, the launch token and a
    fresh .ddp/ (python -m engine.runs.nodes prepare); then on every node, through srun, torchrun with that
    node's --node-rank=$SLURM_NODEID: the line `tunedeck train` and `tunedeck join` start."""
    cfg = run.config()
    nnodes, nproc = int(cfg.get("nnodes") or 1), int(cfg.get("nproc_per_node") or 1)
    interface = cfg.get("network_interface")
    python = shlex.quote(sys.executable)
    torchrun = worker_command(run, False, nproc, nnodes, "__NODE_RANK__", "__LOCAL_ADDR__", "__LAUNCH_ID__",
                              cfg.get("rdzv_endpoint"))
    env = engine_env(ddp_env(run, interface))
    exports = "\n".join(f"export {key}={shlex.quote(env[key])}" for key in
                        ("PYTHONPATH", "PYTHONUNBUFFERED", "HF_HUB_OFFLINE", *ddp_env(run, interface)))
    logs = shlex.quote(str(run.path))
    return f"""#!/bin/bash
# tunedeck run {run.id} on {nnodes} nodes x {nproc} processes: submit with `sbatch THIS_FILE`.
# {SHARED_STORAGE}: {run.path}
#SBATCH --job-name={shlex.quote(('tunedeck-' + run.id)[:64])}
#SBATCH --nodes={nnodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={nproc}
#SBATCH --output={logs}/slurm-%j.log
set -euo pipefail
{exports}

# Once, on the first node: a fresh .ddp/ with the launch token, and the run's starting status.
LAUNCH_ID=$({python} -m engine.runs.nodes prepare {shlex.quote(str(run.path))})
export LAUNCH_ID

node_step() {{
    # Each node: its address on {interface} (one clear error if it lacks it), then torchrun, output to the
    # run's engine.log on node 0 and engine-nodeN.log on node N.
    LOCAL_ADDR=$({python} -m engine.runs.nodes address {shlex.quote(str(interface))})
    log={logs}/engine.log
    if [ "$SLURM_NODEID" != 0 ]; then log={logs}/engine-node$SLURM_NODEID.log; fi
    exec {shell_line(torchrun)} >>"$log" 2>&1
}}
export -f node_step
srun --nodes={nnodes} --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c node_step
"""


def prepare_for_slurm(run: Run) -> str:
    """The sbatch script's first step: a fresh launch whose stand-in pid is the batch shell (it lives as long as
    the job), so the run is not judged crashed while the nodes meet. Prints the launch id."""
    status = run.status()
    if status.get("step") or run.checkpoints():
        raise RunError(f"run {run.id} has trained already: make a new script with `tunedeck slurm CONFIG`")
    token = prepare_launch(run, run.config(), resume=False)
    write_atomic(run.status_path, json.dumps({"state": "starting", "run_id": run.id, "pid": os.getppid(),
                                              "host": socket.gethostname(), "heartbeat": time.time()}))
    return token["launch_id"]


def main(argv: list[str]) -> int:
    """`python -m engine.runs.nodes prepare RUN_DIR | address INTERFACE`: the steps of the Slurm script."""
    try:
        if len(argv) == 2 and argv[0] == "prepare":
            print(prepare_for_slurm(Run(Path(argv[1]).resolve())))
        elif len(argv) == 2 and argv[0] == "address":
            print(interface_address(argv[1]))
        else:
            print("usage: python -m engine.runs.nodes prepare RUN_DIR | address INTERFACE", file=sys.stderr)
            return 2
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
